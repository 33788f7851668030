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


_ROUNDER = np.float32(1.5 * 2**23)  # adding it leaves no fraction bits for |v| < 2**22


@njit(cache=True, error_model="numpy")
def quantize_rows_checked(x, block, q, scales):
    """The same rule on one thread, for callers inside other kernels: x float32 (m, k)
    C-contiguous -> q, scales as quantize_rows; returns False when x holds a NaN or inf.

    One flat loop over the blocks (nested row / block loops ran several times slower), and
    rint as (v + 1.5 * 2**23) - 1.5 * 2**23, exact for |v| <= 127 in round-half-even mode."""
    m, k = x.shape
    n = m * (k // block)
    xb, qb, sb = x.reshape(n, block), q.reshape(n, block), scales.reshape(n)
    bits = x.view(np.uint32).reshape(n, block)
    worst = np.uint32(0)
    for b in range(n):
        top = np.uint32(0)
        for j in range(block):
            top = max(top, bits[b, j] & np.uint32(0x7FFFFFFF))
        worst = max(worst, top)
        scale = float32_from_bits(np.int32(top)) / np.float32(ACT_QMAX)
        sb[b] = scale
        div = scale if scale > np.float32(0) else np.float32(1)  # scale 0: the block is all zeros
        for j in range(block):
            c = (xb[b, j] / div + _ROUNDER) - _ROUNDER
            qb[b, j] = np.int8(min(max(c, np.float32(-ACT_QMAX)), np.float32(ACT_QMAX)))
    return worst < np.uint32(0x7F800000)  # the bits of inf; NaNs are above
