"""pow2: each weight is 0 or +-2**-e times a per-row or per-group scale, e in 0..6.

In integers: w ~= s * c with c in {0, +-1, +-2, +-4, ..., +-64} and s = absmax / 64, so a
weight times an int8 activation is a left shift of the activation by log2|c|.

Code (4 bits, packed like int4: per group of G, byte j holds code j in bits 0-3 and code
j + G/2 in bits 4-7): bit 3 is the sign, bits 0-2 an index i; i = 0 is zero, otherwise
|c| = 2**(i-1).

Quantization picks the nearest level in value (a = |w|/s is compared with the midpoints
0.5, 1.5, 3, 6, 12, 24, 48; a tie goes to the larger magnitude).
Bound: |w - dequantize| <= max(s/2, |w|/3).

    codes   uint8 (rows, k/2)
    scales  float32 (rows, 1) per row, float16 (rows, k/G) per group   4 + 16/G bits per weight
"""

import numpy as np

from edgeq.qtypes.base import Layout, QuantSpec, QTensor
from edgeq.qtypes.packing import pack_planes, unpack_planes
from edgeq.qtypes.scales import divide_or_zero, grouped, symmetric_scale

MAX_SHIFT = 6
_MIDPOINTS = np.array([0.5, 1.5, 3, 6, 12, 24, 48], dtype=np.float32)
#: code nibble -> integer weight value
CODE_VALUES = np.array([0, 1, 2, 4, 8, 16, 32, 64, 0, -1, -2, -4, -8, -16, -32, -64], dtype=np.int16)


class Pow2(Layout):
    name = "pow2"
    granularities = ("row", "group")
    default_granularity = "row"
    default_group_size = 32
    group_multiple = 2

    def components(self, spec: QuantSpec, shape):
        rows, k = shape
        return {"codes": (np.dtype(np.uint8), (rows, k // 2)),
                "scales": (spec.scale_dtype(), spec.scale_shape(shape))}

    def quantize(self, w, spec: QuantSpec, **options):
        g = grouped(w, spec)
        scales = symmetric_scale(g, 1 << MAX_SHIFT, spec.scale_dtype())
        ratio = divide_or_zero(g, scales)
        index = np.searchsorted(_MIDPOINTS, np.abs(ratio), side="right").astype(np.uint8)
        nibbles = np.where((ratio < 0) & (index > 0), index | 8, index).reshape(w.shape)
        codes = pack_planes(nibbles, spec.scale_block(w.shape[1]), 4)
        return {"codes": codes, "scales": scales}

    def int_codes(self, qt: QTensor):
        nibbles = unpack_planes(qt.data["codes"], qt.scale_block, 4)
        return CODE_VALUES[nibbles]

    def max_abs_code(self, spec):
        return 1 << MAX_SHIFT
