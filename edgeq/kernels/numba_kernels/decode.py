"""How each weight layout becomes unsigned codes u for the kernels: value = u - offset.

Every kind is read as uint8 codes u with an integer offset, so all kernels share one
u8 x s8 block dot and one correction: sum((u - o) * x) = sum(u * x) - o * sum(x).

    kind           u                                   offset o
    int8           code ^ 0x80  (= code + 128)         128
    int8_asym      code                                zero point z of the scale group
    int4, int3, int2    stored field u (lowbit.py)     2**(bits-1)
    int4/3/2_asym  stored field                        0   (the min term uses sum(x) too)
    ternary_2bit   2-bit field                         1
    ternary_base3  trit (base-3 digit)                 1
    binary         2 * bit                             1
    pow2           CODE_VALUES[nibble] + 64            64

Two ways to get u (see gemm.py):
  in place   int8, int4, int2 and ternary_2bit store codes in bit planes (qtypes/packing.py),
             so 16 consecutive codes are one shift and mask of 16 consecutive bytes whenever
             a plane run holds a multiple of 16 codes. A chunk table gives, for each 32 codes
             of a row, the byte offsets and shifts of its two 16-code runs.
  unpacked   base-3, bits, int3's two parts, pow2's value mapping and plane runs of fewer
             than 16 codes: the row is first unpacked into a uint8 scratch row in natural
             order (unpack_row), which the kernels then read as plain bytes.
Kinds this module cannot read raise UnsupportedError (the backend then uses numpy).
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit

from edgeq.errors import UnsupportedError
from edgeq.kernels.numba_kernels.simd import CHUNK
from edgeq.qtypes import QTensor

#: how a row is unpacked (unpack_row): bit planes, base-3 digits, single bits, int3's crumbs + bits
PLANES, BASE3, BITS, CRUMBS_AND_BITS = 0, 1, 2, 3
#: how the block dot reads a chunk (simd.py): int4 groups of 32, plain bytes, shifted 32-byte
#: runs, two shifted 16-byte runs (any plane layout)
NIBBLES, BYTES, RUNS, TABLE = 0, 1, 2, 3
RUN = 16  # codes per shifted byte run in a chunk
#: with this many activation rows or more, rows are unpacked once into scratch, not decoded per dot
UNPACK_FOR_ROWS = 4

#: qtypes decode() reads (weight kinds are these, with "_asym" or a packing appended)
QTYPES = ("int8", "int4", "int3", "int2", "pow2", "ternary", "binary")
_NO_ZEROS = np.zeros((1, 1), dtype=np.uint8)


@dataclass(frozen=True)
class Decode:
    """Everything a kernel needs to turn one packed row into codes u (value = u - offset)."""

    codes: np.ndarray      # uint8, flat (rows * row_bytes,), C-contiguous
    row_bytes: int
    unpack: int            # PLANES, BASE3, BITS or CRUMBS_AND_BITS
    bits: int              # bits per code (8, 4, 3, 2, 1); 0 for BASE3
    group: int             # packing group along k (codes sharing one plane structure)
    flip: int              # XOR applied to each byte before shifting (int8: 0x80)
    pow2: bool             # nibbles are pow2 codes: u = CODE_VALUES[nibble] + 64
    offset: int            # constant offset o (unused when zeros is given)
    zeros: np.ndarray      # uint8 (rows|1, groups) zero points (int8_asym), else (1, 1) and unused
    has_zeros: bool

    @property
    def in_place(self) -> bool:
        """True when 16-code runs are byte runs of the packed row (no unpack needed)."""
        if self.unpack != PLANES or self.pow2:
            return False
        run_bytes = self.group * self.bits // 8
        return run_bytes % RUN == 0

    def reads_in_place(self, fast: bool, m: int) -> bool:
        """Dot the packed bytes directly (GEMV), or unpack each row once and reuse it (GEMM)."""
        return fast and self.in_place and (m < UNPACK_FOR_ROWS or self.bits == 8)

    def table(self, k: int, in_place: bool, fast: bool) -> np.ndarray:
        """The chunk table (empty when sub-blocks are not whole chunks)."""
        if not fast:
            return np.zeros((0, 4), dtype=np.int32)
        if in_place:
            return plane_chunk_table(k, self.group, self.bits)
        return plane_chunk_table(k, k, 8)

    def params(self, in_place: bool, table: np.ndarray) -> np.ndarray:
        """int64 [unpack, bits, group, flip, in_place, pow2, chunk mode] for the kernels."""
        return np.array([self.unpack, self.bits, self.group, self.flip, int(in_place), int(self.pow2),
                         chunk_mode(table, self.bits, self.group, in_place)], dtype=np.int64)


def chunk_mode(table: np.ndarray, bits: int, group: int, in_place: bool) -> int:
    """The cheapest chunk reader that fits the table (simd.py)."""
    if in_place and bits == 4 and group == CHUNK:
        return NIBBLES
    if not in_place or bits == 8:
        return BYTES
    if len(table) and (table[:, 2] == table[:, 0] + RUN).all() and (table[:, 3] == table[:, 1]).all():
        return RUNS
    return TABLE


def decode(qt: QTensor) -> Decode:
    """The Decode of a QTensor (components already validated by the caller)."""
    spec = qt.spec
    rows, k = qt.shape
    codes = np.ascontiguousarray(qt.data["codes"]).view(np.uint8)
    row_bytes = codes.shape[1]
    flat = codes.reshape(-1)
    group = qt.scale_block
    pow2, zeros, has_zeros, flip = False, _NO_ZEROS, False, 0
    if spec.qtype == "int8":
        unpack, bits, group = PLANES, 8, k
        if spec.symmetric:
            flip, offset = 0x80, 128
        else:
            offset, has_zeros = 0, True
            zeros = np.ascontiguousarray(qt.data["zeros"])
    elif spec.qtype in ("int4", "int3", "int2"):
        bits = int(spec.qtype[3])
        unpack = CRUMBS_AND_BITS if bits == 3 else PLANES
        offset = 1 << (bits - 1) if spec.symmetric else 0
    elif spec.qtype == "pow2":
        unpack, bits, offset, pow2 = PLANES, 4, 64, True
    elif spec.qtype == "ternary":
        unpack, bits, offset = (PLANES, 2, 1) if spec.packing == "2bit" else (BASE3, 0, 1)
    elif spec.qtype == "binary":
        unpack, bits, offset = BITS, 1, 1
    else:
        raise UnsupportedError(f"the numba backend cannot read qtype {spec.qtype!r}")
    return Decode(flat, row_bytes, unpack, bits, group, flip, pow2, offset, zeros, has_zeros)


@lru_cache(maxsize=256)
def _plane_chunk_table(k: int, group: int, bits: int) -> np.ndarray:
    per_byte = 8 // bits
    run = group // per_byte                       # bytes per packing group = codes per plane run
    first = np.arange(0, k, RUN)                  # first code of every 16-code run
    g, pos = np.divmod(first, group)
    plane, j = np.divmod(pos, run)
    offsets = (g * run + j).reshape(-1, 2)
    shifts = (plane * bits).reshape(-1, 2)
    table = np.stack([offsets[:, 0], shifts[:, 0], offsets[:, 1], shifts[:, 1]], axis=1)
    return table.astype(np.int32)


def plane_chunk_table(k: int, group: int, bits: int) -> np.ndarray:
    """int32 (k/32, 4): per 32-code chunk, (byte offset, shift) of its two 16-code runs.

    Byte offsets are relative to the row start. Needs k % 32 == 0 and plane runs of a
    multiple of 16 codes (bits 8 with group k is the identity layout of a scratch row).
    """
    return _plane_chunk_table(int(k), int(group), int(bits))


# --- row unpackers (natural code order, u as in the table above) -----------------------------
# Indices are cast to uint64 (they are never negative): for a signed index Numba emits a
# negative-index fix-up that keeps LLVM from vectorizing the loop (measured 10x slower) and
# triples the compile time of the slice-based alternative.

@njit(cache=True, fastmath=False)
def _unpack_planes(codes, base, k, bits, group, flip, out, out_base):
    per_byte = 8 // bits
    run = group // per_byte
    mask = (1 << bits) - 1
    for g in range(k // group):
        src = base + g * run
        for plane in range(per_byte):
            dst = out_base + g * group + plane * run
            shift = plane * bits
            for j in range(run):
                out[np.uint64(dst + j)] = ((codes[np.uint64(src + j)] ^ flip) >> shift) & mask


@njit(cache=True, fastmath=False)
def _pow2_values(k, out):
    """nibble s|i -> 64 + (-1)**s * (2**i >> 1), i.e. pow2.CODE_VALUES + 64 (the tests check it)."""
    for j in range(k):
        v = np.int32(out[j])
        sign = v >> 3
        out[j] = 64 + ((((np.int32(1) << (v & 7)) >> 1) ^ -sign) + sign)


@njit(cache=True, fastmath=False)
def _unpack_base3(codes, base, k, group, out):
    stride = (group + 4) // 5  # packing.base3_bytes_per_group
    for g in range(k // group):
        src = base + g * stride
        power = 1
        for digit in range(5):
            first = g * group + digit * stride
            for j in range(min(stride, group - digit * stride)):
                # trit = ((byte * 3**digit) mod 256) * 3 >> 8  (packing.pack_base3)
                out[np.uint64(first + j)] = (((codes[np.uint64(src + j)] * power) & 0xFF) * 3) >> 8
            power *= 3


@njit(cache=True, fastmath=False)
def _unpack_bits(codes, base, k, out):
    for j in range(k):
        out[j] = ((codes[np.uint64(base + (j >> 3))] >> (j & 7)) & 1) << 1


@njit(cache=True, fastmath=False)
def _unpack_crumbs_and_bits(codes, base, k, group, out):
    """int3: per group, G/4 bytes of 2-bit planes (u & 3), then G/8 bytes of 1-bit planes (u >> 2)."""
    low_bytes, high_bytes = group // 4, group // 8
    for g in range(k // group):
        start = base + g * (low_bytes + high_bytes)
        _unpack_planes(codes, start, group, 2, group, 0, out, g * group)
        for plane in range(8):
            dst = g * group + plane * high_bytes
            for j in range(high_bytes):
                out[np.uint64(dst + j)] |= ((codes[np.uint64(start + low_bytes + j)] >> plane) & 1) << 2


@njit(cache=True, fastmath=False)
def unpack_row(codes, base, k, params, out):
    """Codes u of the row starting at byte `base` of the flat codes into out[:k] (uint8)."""
    unpack, bits, group, flip, pow2 = params[0], params[1], params[2], params[3], params[5]
    if unpack == PLANES:
        _unpack_planes(codes, base, k, bits, group, flip, out, 0)
        if pow2:
            _pow2_values(k, out)
    elif unpack == BASE3:
        _unpack_base3(codes, base, k, group, out)
    elif unpack == BITS:
        _unpack_bits(codes, base, k, out)
    else:
        _unpack_crumbs_and_bits(codes, base, k, group, out)
