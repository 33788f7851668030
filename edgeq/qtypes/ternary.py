"""ternary: codes in {-1, 0, +1} with a per-row or per-group scale (BitNet b1.58).

Quantization (Ma et al. 2024, "The Era of 1-bit LLMs", absmean rule):
    s = mean(|w|) over the row or group,   q = clip(rint(w / s), -1, 1),   w ~= s * q
Bound: |w - dequantize| <= max(s/2, |w| - s): codes saturate for |w| > 1.5 s.

Two packings of the same codes, stored as t = q + 1 in {0, 1, 2}:
  "2bit"   4 codes per byte; per group of G (a multiple of 4), byte j holds codes
           j + l*G/4 in bits 2l..2l+1 (l = 0..3).                   2 + 16/G bits per weight
  "base3"  5 codes per byte; per group, S = ceil(G/5) bytes, byte j holds codes j + l*S,
           l = 0..4, as ceil(v * 256 / 243) with v = sum t_l 3**(4-l) (ggml's TQ1_0 trick:
           trit l = ((byte * 3**l) mod 256) * 3 >> 8, no division).  ~1.6 + 16/G bits per weight
Without groups (granularity "row") the group above is the whole row.

    codes   uint8   (rows, k/4) or (rows, k/G * ceil(G/5))
    scales  float32 (rows, 1) per row, float16 (rows, k/G) per group
"""

import numpy as np

from edgeq.qtypes.base import Layout, QuantSpec, QTensor
from edgeq.qtypes.packing import (base3_bytes_per_group, pack_base3, pack_planes, unpack_base3,
                                  unpack_planes)
from edgeq.qtypes.scales import divide_or_zero, grouped, storable_scale


class Ternary(Layout):
    name = "ternary"
    granularities = ("row", "group")
    default_granularity = "row"
    default_group_size = 64
    packings = ("2bit", "base3")

    def packing_multiple(self, packing):
        return 4 if packing == "2bit" else 1

    def make_spec(self, k, group_size, symmetric, granularity, packing):
        return super().make_spec(k, group_size, symmetric, granularity, packing or "2bit")

    def components(self, spec: QuantSpec, shape):
        rows, k = shape
        group = spec.scale_block(k)
        if spec.packing == "2bit":
            nbytes = k // 4
        else:
            nbytes = (k // group) * base3_bytes_per_group(group)
        return {"codes": (np.dtype(np.uint8), (rows, nbytes)),
                "scales": (spec.scale_dtype(), spec.scale_shape(shape))}

    def quantize(self, w, spec: QuantSpec, **options):
        g = grouped(w, spec)
        # float64: a float32 sum overflows for rows of weights near the float32 maximum
        scales = storable_scale(np.abs(g).mean(axis=2, dtype=np.float64), spec.scale_dtype())
        trits = (np.clip(np.rint(divide_or_zero(g, scales)), -1, 1) + 1).astype(np.uint8)
        trits = trits.reshape(w.shape)
        group = spec.scale_block(w.shape[1])
        if spec.packing == "2bit":
            codes = pack_planes(trits, group, 2)
        else:
            codes = pack_base3(trits, group)
        return {"codes": codes, "scales": scales}

    def int_codes(self, qt: QTensor):
        group = qt.scale_block
        if qt.spec.packing == "2bit":
            trits = unpack_planes(qt.data["codes"], group, 2)
        else:
            trits = unpack_base3(qt.data["codes"], group)
        return trits.astype(np.int16) - 1

    def max_abs_code(self, spec):
        return 1  # a stored 3 in a 2-bit field would read as 2; int_codes never exceeds |2|
