"""binary: codes in {-1, +1} with one scale per row (XNOR-Net, Rastegari et al. 2016).

    a = mean(|w|) over the row,   b = +1 if w >= 0 else -1,   w ~= a * b
Bound: |w - dequantize| = | |w| - a |.

    codes   uint8   (rows, ceil(k/8))  bit i of byte j is code 8j + i, least significant
                                       bit first; 1 means +1, 0 means -1; padding bits are 0
    scales  float32 (rows, 1)          a                               1 + 32/k bits per weight

With binarized activations the dot product of two sign vectors of length k is
k - 2 * popcount(w_bits XOR x_bits) (padding bits are 0 on both sides, so they cancel).
"""

import numpy as np

from edgeq.qtypes.base import Layout, QuantSpec, QTensor, ceil_div
from edgeq.qtypes.packing import pack_bits, unpack_bits
from edgeq.qtypes.scales import storable_scale


class Binary(Layout):
    name = "binary"
    granularities = ("row",)

    def components(self, spec: QuantSpec, shape):
        rows, k = shape
        return {"codes": (np.dtype(np.uint8), (rows, ceil_div(k, 8))),
                "scales": (np.dtype(np.float32), (rows, 1))}

    def quantize(self, w, spec: QuantSpec, **options):
        # float64: a float32 sum overflows for rows of weights near the float32 maximum
        scales = storable_scale(np.abs(w).mean(axis=1, keepdims=True, dtype=np.float64), np.float32)
        return {"codes": pack_bits(w >= 0), "scales": scales}

    def int_codes(self, qt: QTensor):
        bits = unpack_bits(qt.data["codes"], qt.shape[1]).astype(np.int16)
        return 2 * bits - 1

    def max_abs_code(self, spec):
        return 1
