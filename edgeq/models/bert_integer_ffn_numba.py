"""The integer FFN's requantization in Numba: exact accumulators of ffn_up -> int16 codes ->
activation table -> int8 codes of ffn_down's input, in one pass (the accumulators come from the
kernel table's int8 GEMM, see edgeq.models.bert_integer_ffn).

The rules are edgeq.models.bert_integer_ffn's (its codes_reference is the specification; this
kernel equals it bit for bit, tested), with fixedpoint's multiply_by_quantized_multiplier
written out on int64 scalars. Single-threaded, like
bert_numba_steps (the native GEMM's threads would fight a second pool). Importing this module
raises ImportError where Numba is missing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
_Y_QMAX = 32767
_TABLE_OFFSET = 32768


@njit(cache=True, error_model="numpy", boundscheck=False)
def requantize_codes(acc, bias_q, multiplier, shift, table, out):
    """out[i, c] = table[y + 32768], y = clip(MBQM(sat32(acc[i, c] + bias_q[c]), multiplier[c],
    shift[c]), -32767, 32767), for integer-valued accumulators acc (m, n) (int32, or float32
    holding exact integers), per-channel int32 bias_q, multiplier, shift (n,), int8 table
    (65536,); out int8 (m, n), returned.

    MBQM as fixedpoint's scalar rules, written without branches so that the row loop
    vectorizes (measured 8 ns per value with branches): saturating left shift; SQRDMULH as
    (a*b + nudge) / 2**31 truncated toward zero, the truncation an arithmetic shift of
    a*b + nudge plus 2**31 - 1 when negative; rounding divide by 2**right with ties away
    from zero (remainder > threshold). multiplier <= INT32_MAX, so SQRDMULH's
    INT32_MIN * INT32_MIN case cannot occur."""
    m, n = acc.shape
    bias = bias_q.astype(np.int64)
    mult = multiplier.astype(np.int64)
    left = np.maximum(shift, 0).astype(np.int64)
    right = np.maximum(-shift, 0).astype(np.int64)
    mask = (np.int64(1) << right) - 1
    half = mask >> 1
    y = np.empty(n, np.int64)
    for i in range(m):
        # hot loop: the fixed-point requantization of one row, vectorized
        for c in range(n):
            v = min(max(np.int64(acc[i, c]) + bias[c], _INT32_MIN), _INT32_MAX)
            v = min(max(v << left[c], _INT32_MIN), _INT32_MAX)
            ab = v * mult[c]
            numerator = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
            high = (numerator + ((numerator >> 63) & _INT32_MAX)) >> 31
            threshold = half[c] - (high >> 63)  # + 1 for negative high
            rounded = (high >> right[c]) + ((high & mask[c]) > threshold)
            y[c] = min(max(rounded, -_Y_QMAX), _Y_QMAX) + _TABLE_OFFSET
        for c in range(n):
            out[i, c] = table[y[c]]
    return out
