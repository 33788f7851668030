"""int8: 8-bit codes, per tensor, per row or per group.

Symmetric (zero point 0):
    codes   int8  (rows, k)        q = rint(w / s) in [-127, 127]   (-128 is accepted from imports)
    scales  (rows|1, groups)       s = absmax / 127               w ~= s * q
Asymmetric (TFLite convention, the range is widened to contain 0 so that 0 is exact):
    codes   uint8 (rows, k)        q = clip(rint(w / s) + z, 0, 255)
    zeros   uint8 (rows|1, groups) z = clip(rint(-lo / s), 0, 255)
    scales  (rows|1, groups)       s = (hi - lo) / 255,  lo = min(w, 0), hi = max(w, 0)
                                   w ~= s * (q - z)
Scales are float32 per tensor or row and float16 per group (GGUF Q8_0 is per group 32
with float16 scales: 8.5 bits per weight, and imports into this layout exactly).

Bound: |w - dequantize| <= s/2 symmetric; <= s asymmetric (the zero point is rounded).
"""

import numpy as np

from edgeq.qtypes.base import Layout, QuantSpec, QTensor
from edgeq.qtypes.scales import divide_or_zero, grouped, storable_scale, symmetric_scale


class Int8(Layout):
    name = "int8"
    granularities = ("tensor", "row", "group")
    default_granularity = "row"
    default_group_size = 32
    supports_asymmetric = True

    def components(self, spec: QuantSpec, shape):
        comps = {"codes": (np.dtype(np.int8 if spec.symmetric else np.uint8), tuple(shape)),
                 "scales": (spec.scale_dtype(), spec.scale_shape(shape))}
        if not spec.symmetric:
            comps["zeros"] = (np.dtype(np.uint8), spec.scale_shape(shape))
        return comps

    def quantize(self, w, spec: QuantSpec, **options):
        g = grouped(w, spec)
        if spec.symmetric:
            scales = symmetric_scale(g, 127, spec.scale_dtype())
            q = np.clip(np.rint(divide_or_zero(g, scales)), -127, 127)
            return {"codes": q.astype(np.int8).reshape(w.shape), "scales": scales}
        lo = np.minimum(g.min(axis=2), 0)
        hi = np.maximum(g.max(axis=2), 0)
        span = hi.astype(np.float64) - lo  # float32 would overflow for weights near its maximum
        scales = storable_scale(span / 255, spec.scale_dtype())
        zeros = np.clip(np.rint(divide_or_zero(-lo[:, :, None], scales)[:, :, 0]), 0, 255)
        q = np.clip(np.rint(divide_or_zero(g, scales)) + zeros[:, :, None], 0, 255)
        return {"codes": q.astype(np.uint8).reshape(w.shape), "scales": scales,
                "zeros": zeros.astype(np.uint8)}

    def int_codes(self, qt: QTensor):
        codes = qt.data["codes"].astype(np.int16)
        if qt.spec.symmetric:
            return codes
        rows, k = qt.shape
        zeros = np.broadcast_to(qt.data["zeros"], (rows, k // qt.scale_block)).astype(np.int16)
        return codes - np.repeat(zeros, qt.scale_block, axis=1)

    def max_abs_code(self, spec):
        return 128 if spec.symmetric else 255
