"""int4: 4-bit codes per group, two codes per byte.

Packing (per group of G codes, G a multiple of 8 dividing k): byte j of the group holds code j
in bits 0-3 and code j + G/2 in bits 4-7 (ggml's Q4_0/Q4_1 nibble order, so GGUF imports
copy bytes unchanged and a kernel unpacks 16 codes with one mask and one shift).

    codes   uint8   (rows, k/2)        nibbles
    scales  float16 (rows, k/G)        d
    mins    float16 (rows, k/G)        m   (asymmetric only)

Symmetric:   nibble n = q + 8, q = rint(w / d) in [-7, 7] (imports may hold -8), d = absmax/7;
             w ~= d * (n - 8)                                        4 + 16/G bits per weight
Asymmetric:  nibble n = q = rint((w - m) / d) in [0, 15], m = min(w) rounded down to float16,
             d = (max(w) - m) / 15 rounded up;  w ~= d * n + m       4 + 32/G bits per weight

Bound: |w - dequantize| <= d/2 (plus float32 rounding of the product).
"""

import numpy as np

from edgeq.qtypes.base import Layout, QuantSpec, QTensor
from edgeq.qtypes.packing import pack_planes, unpack_planes
from edgeq.qtypes.scales import divide_or_zero, grouped, storable_scale, symmetric_scale


def round_down_f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # -inf mins make the scale inf, which storable_scale reports
        stored = x.astype(np.float16)
    high = stored.astype(np.float32) > x
    stored[high] = np.nextafter(stored[high], np.float16(-np.inf))
    return stored


class Int4(Layout):
    name = "int4"
    granularities = ("group",)
    default_granularity = "group"
    default_group_size = 32
    group_multiple = 8
    supports_asymmetric = True

    def components(self, spec: QuantSpec, shape):
        rows, k = shape
        comps = {"codes": (np.dtype(np.uint8), (rows, k // 2)),
                 "scales": (np.dtype(np.float16), spec.scale_shape(shape))}
        if not spec.symmetric:
            comps["mins"] = (np.dtype(np.float16), spec.scale_shape(shape))
        return comps

    def quantize(self, w, spec: QuantSpec, **options):
        g = grouped(w, spec)
        if spec.symmetric:
            scales = symmetric_scale(g, 7, np.float16)
            nibbles = np.clip(np.rint(divide_or_zero(g, scales)), -7, 7) + 8
            extra = {}
        else:
            mins = round_down_f16(g.min(axis=2))
            shifted = g - mins.astype(np.float32)[:, :, None]
            scales = storable_scale(shifted.max(axis=2) / np.float32(15), np.float16)
            nibbles = np.clip(np.rint(divide_or_zero(shifted, scales)), 0, 15)
            extra = {"mins": mins}
        codes = pack_planes(nibbles.astype(np.uint8).reshape(w.shape), spec.group_size, 4)
        return {"codes": codes, "scales": scales, **extra}

    def int_codes(self, qt: QTensor):
        nibbles = unpack_planes(qt.data["codes"], qt.spec.group_size, 4).astype(np.int16)
        return nibbles - 8 if qt.spec.symmetric else nibbles

    def max_abs_code(self, spec):
        return 8 if spec.symmetric else 15
