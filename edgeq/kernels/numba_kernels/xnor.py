"""Binary x binary GEMM by XNOR-popcount: dot(w, x) = k - 2 * popcount(w XOR x).

Bits are compared 64 at a time (unaligned 8-byte loads of the packed rows, simd.popcount_xor64),
the last kb % 8 bytes one at a time. Like reference.xnor_dot this counts every stored bit,
padding included (the binary layout keeps padding bits 0 on both sides, so they cancel).
"""

import numpy as np
from numba import njit, prange

from edgeq.kernels.numba_kernels.simd import popcount_xor64


@njit(cache=True, fastmath=False)
def popcount8(v):
    v = v - ((v >> 1) & 0x55)
    v = (v & 0x33) + ((v >> 2) & 0x33)
    return (v + (v >> 4)) & 0x0F


@njit(cache=True, parallel=True, fastmath=False)
def xnor_gemm(w, x, n, m, kb, k, out):
    """w uint8 flat (n * kb), x uint8 flat (m * kb) -> out int32 (m, n)."""
    words = kb // 8
    for i in prange(n):
        for r in range(m):
            count = 0
            for t in range(words):
                count += popcount_xor64(w, i * kb + 8 * t, x, r * kb + 8 * t)
            for t in range(8 * words, kb):
                count += popcount8(np.int64(w[i * kb + t] ^ x[r * kb + t]))
            out[r, i] = k - 2 * count
