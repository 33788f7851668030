"""Symmetric int8 activation quantization, bit-identical to reference.quantize_activations.

Per block of B values of a row: s = absmax / float32(127) in float32, q = rint(x / s) (half to
even) in float32, clipped to [-127, 127]; an all-zero block has s = 0 and q = 0. fastmath stays
off: a reciprocal multiply instead of the division would change the rounding.

The absmax is taken on the bit patterns: for non-negative IEEE floats the order of the
float32 bits as int32 is the order of the values, so clearing the sign bit and taking an
integer maximum gives the same number as max(|x|) and, unlike a float max, vectorizes
without fastmath. (A NaN, having the largest bits, wins as it does in numpy's max.)
"""

import numpy as np
from numba import njit, prange

from edgeq.kernels.numba_kernels.simd import float32_from_bits

ACT_QMAX = 127


@njit(cache=True, parallel=True, fastmath=False)
def quantize_rows(x, block, q, scales):
    """x float32 (m, k) C-contiguous -> q int8 (m, k), scales float32 (m, k/block)."""
    m, k = x.shape
    bits = x.view(np.int32)
    for r in prange(m):
        for b in range(k // block):
            # unsigned indices: no negative-index fix-up, so LLVM vectorizes the loops
            start = np.uint64(b * block)
            top = np.int32(0)
            for j in range(block):
                top = max(top, bits[r, start + np.uint64(j)] & np.int32(0x7FFFFFFF))
            s = float32_from_bits(top) / np.float32(ACT_QMAX)
            scales[r, b] = s
            if s > 0:
                for j in range(block):
                    v = np.rint(x[r, start + np.uint64(j)] / s)
                    q[r, start + np.uint64(j)] = np.int8(min(max(v, np.float32(-ACT_QMAX)), np.float32(ACT_QMAX)))
            else:
                for j in range(block):
                    q[r, start + np.uint64(j)] = 0
