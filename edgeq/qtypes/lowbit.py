"""int3 and int2: 3- and 2-bit codes per group, with a float16 scale (and min) per group.

Both follow int4's rule with b bits (int4.py; round half to even on w / d with d as stored):

Symmetric:   u = q + 2**(b-1), q = rint(w / d) in [-Q, Q], Q = 2**(b-1) - 1, d = absmax / Q
             rounded up to float16; w ~= d * (u - 2**(b-1))      (imports may hold u = 0)
             int3: Q = 3, 7 levels;  int2: Q = 1, 3 levels {-d, 0, d} (ternary values with an
             absmax scale; int2 asymmetric uses all four codes).
Asymmetric:  u = n = rint((w - m) / d) in [0, 2**b - 1], m = min(w) rounded down to float16,
             d = (max(w) - m) / (2**b - 1) rounded up;  w ~= d * n + m

    codes   uint8   (rows, k*b/8)     packed u, below
    scales  float16 (rows, k/G)       d
    mins    float16 (rows, k/G)       m   (asymmetric only)

Bits per weight: b + 16/G symmetric, b + 32/G asymmetric (int3 G=32: 3.5 / 4.0; int2 G=32:
2.5 / 3.0; G=128: 3.125 / 3.25 and 2.125 / 2.25).
Bound: |w - dequantize| <= d/2 (plus float32 rounding of the product).

Packing, per group of G codes (packing.py planes: a run of consecutive codes is one shift and
one mask of consecutive bytes):

int2 (G a multiple of 4): the ternary "2bit" crumb layout, G/4 bytes: byte j holds u of codes
     j + l*G/4 in bits 2l..2l+1 (l = 0..3).
int3 (G a multiple of 8): 3G/8 bytes, the low two bits then the high bit (ggml Q3_K's
     qs + hmask idea, 3 bits per weight exactly):
       bytes 0 .. G/4-1       u & 3 in the int2 crumb layout above
       bytes G/4 .. 3G/8-1    u >> 2 as bit planes: bit l of byte G/4 + j holds code j + l*G/8
                              (l = 0..7)
     so u = crumb | (bit << 2), each a shift and a mask of a contiguous byte run.
"""

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from edgeq.qtypes.base import Layout, QuantSpec, QTensor
from edgeq.qtypes.int4 import round_down_f16
from edgeq.qtypes.packing import pack_planes, unpack_planes
from edgeq.qtypes.scales import storable_scale


def code_limits(bits: int, symmetric: bool) -> tuple[int, int]:
    """Range of the quantizer's integer codes: [-Q, Q] symmetric, [0, 2**bits - 1] asymmetric."""
    if symmetric:
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1


def fit_scales(lo: np.ndarray, hi: np.ndarray, bits: int,
               symmetric: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """float16 scales (and mins) of the grid covering [lo, hi] per group (float32 arrays).

    Symmetric: d = max(|lo|, |hi|) / Q rounded up. Asymmetric: m = lo rounded down,
    d = (hi - m) / (2**bits - 1) rounded up, so the grid always covers the range.
    """
    lo = np.asarray(lo, dtype=np.float32)
    hi = np.asarray(hi, dtype=np.float32)
    qmin, qmax = code_limits(bits, symmetric)
    if symmetric:
        return storable_scale(np.maximum(np.abs(lo), np.abs(hi)) / np.float32(qmax), np.float16), None
    mins = round_down_f16(lo)
    return storable_scale((hi - mins.astype(np.float32)) / np.float32(qmax), np.float16), mins


def nearest_codes(w: np.ndarray, scales: np.ndarray, mins: np.ndarray | None, bits: int,
                  symmetric: bool) -> np.ndarray:
    """Codes q (int16, signed for symmetric) of the grid point nearest to each weight.

    w (..., G) float32; scales, mins (...) float16. rint((w - m) / d), half to even, clipped
    to code_limits; a zero scale gives code 0.
    """
    qmin, qmax = code_limits(bits, symmetric)
    d = scales.astype(np.float32)[..., None]
    shifted = w if mins is None else w - mins.astype(np.float32)[..., None]
    safe = np.where(d > 0, d, np.float32(1))
    q = np.where(d > 0, np.rint(shifted / safe), np.float32(0))
    return np.clip(q, qmin, qmax).astype(np.int16)


class _LowBit:
    """int3 / int2: the shared rule, mixed into each Layout (a Layout subclass would register
    itself); subclasses define `bits` and the packing."""

    bits: ClassVar[int]
    granularities = ("group",)
    default_granularity = "group"
    default_group_size = 32
    supports_asymmetric = True

    def components(self, spec: QuantSpec, shape):
        rows, k = shape
        comps = {"codes": (np.dtype(np.uint8), (rows, k * self.bits // 8)),
                 "scales": (np.dtype(np.float16), spec.scale_shape(shape))}
        if not spec.symmetric:
            comps["mins"] = (np.dtype(np.float16), spec.scale_shape(shape))
        return comps

    def quantize(self, w, spec: QuantSpec, **options):
        rows, k = w.shape
        g = w.reshape(rows, k // spec.group_size, spec.group_size)
        scales, mins = fit_scales(g.min(axis=2), g.max(axis=2), self.bits, spec.symmetric)
        q = nearest_codes(g, scales, mins, self.bits, spec.symmetric)
        return self.from_codes(spec, q.reshape(rows, k), scales, mins)

    def from_codes(self, spec: QuantSpec, q: np.ndarray, scales: np.ndarray,
                   mins: np.ndarray | None) -> dict[str, np.ndarray]:
        """Components from integer codes q (rows, k) as int_codes returns them."""
        offset = 1 << (self.bits - 1) if spec.symmetric else 0
        comps = {"codes": self.pack(np.asarray(q + offset, dtype=np.uint8), spec.group_size),
                 "scales": np.asarray(scales, dtype=np.float16)}
        if not spec.symmetric:
            comps["mins"] = np.asarray(mins, dtype=np.float16)
        return comps

    def int_codes(self, qt: QTensor):
        u = self.unpack(qt.data["codes"], qt.spec.group_size).astype(np.int16)
        return u - (1 << (self.bits - 1)) if qt.spec.symmetric else u

    def max_abs_code(self, spec):
        return 1 << (self.bits - 1) if spec.symmetric else (1 << self.bits) - 1

    @abstractmethod
    def pack(self, u: np.ndarray, group: int) -> np.ndarray:
        """Stored bytes of unsigned codes u (rows, k), groups of `group` codes."""

    @abstractmethod
    def unpack(self, codes: np.ndarray, group: int) -> np.ndarray:
        """Inverse of pack: unsigned codes (rows, k)."""


class Int2(_LowBit, Layout):
    name = "int2"
    bits = 2
    group_multiple = 4

    def pack(self, u, group):
        return pack_planes(u, group, 2)

    def unpack(self, codes, group):
        return unpack_planes(codes, group, 2)


class Int3(_LowBit, Layout):
    name = "int3"
    bits = 3
    group_multiple = 8

    def pack(self, u, group):
        rows, k = u.shape
        low = pack_planes(u & 3, group, 2).reshape(rows, k // group, group // 4)
        high = pack_planes(u >> 2, group, 1).reshape(rows, k // group, group // 8)
        return np.concatenate([low, high], axis=2).reshape(rows, 3 * k // 8)

    def unpack(self, codes, group):
        rows, nbytes = codes.shape
        k = nbytes * 8 // 3
        g = codes.reshape(rows, k // group, 3 * group // 8)
        low = unpack_planes(np.ascontiguousarray(g[:, :, :group // 4]).reshape(rows, k // 4), group, 2)
        high = unpack_planes(np.ascontiguousarray(g[:, :, group // 4:]).reshape(rows, k // 8), group, 1)
        return low | (high << 2)
