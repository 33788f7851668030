"""BERT's fused steps in Numba (edgeq.models.bert): the work between two matrix products.

One compiled pass each instead of 10-25 NumPy passes and calls: at batch 1 the per-call cost
is what counts, at batch 32 the passes over memory. Single-threaded on purpose: the native
GEMM's worker threads spin between calls and would fight a second thread pool. The NumPy
functions of edgeq.models.bert stay the reference (and the path where Numba is missing, or
backend="numpy"). Every kernel works per token (or per sequence for attention) in a fixed
order, so a text gets bit-identical results alone and in any batch.

    gelu_fast(h), bias_gelu_fast(h, bias)                      exact-erf GELU in place
    layer_norm_fast(x, residual, weight, bias, eps, x_bias=None)
    attention_fast(qkv, starts, lengths, heads, out, bias=None)
    layer_norm_q8 / gelu_q8 / attention_q8                     the same, then int8-quantized

The int8 forward's three steps also exist in C (native/bert_steps.c, through
edgeq.models.bert_native_steps), which the native backend uses so that Numba (65-125 MiB)
is never imported; see there for how their bits compare. Importing this module raises
ImportError where Numba is missing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from edgeq.kernels.numba_kernels.activations import quantize_rows_checked as quantize_rows
from edgeq.kernels.numba_kernels.simd import float32_from_bits

#: erf(t) = t P(t^2) / Q(t^2) on |t| <= 4, clamped beyond (erfc(4) = 1.5e-8). Fitted for this
#: module (iteratively reweighted linearized least squares on [0, 4] against math.erf): the
#: error is below 1.6e-9 in float64 and below 4e-7 evaluated in float32. No exp, no branch:
#: the loop vectorizes.
ERF_RATIONAL_P = (1.1283791820936728, 0.18471136665082194, 0.05433264732494848,
                  0.0038395611588057468, 0.00038268945090492675, 4.780433385615413e-06,
                  -1.3666279866201322e-08)
ERF_RATIONAL_Q = (1.0, 0.49702973185979293, 0.11382665483240482, 0.01545356833281603,
                  0.0013095820837956118, 6.400830050036298e-05)

_P = tuple(np.float32(c) for c in ERF_RATIONAL_P)
_Q = tuple(np.float32(c) for c in ERF_RATIONAL_Q)
_F = np.float32


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _gelu_scalar(v):
    """Exact-erf GELU of one float32 (rational erf, see above)."""
    t = min(max(v * _F(0.7071067811865476), _F(-4.0)), _F(4.0))
    z = t * t
    p = ((((((_P[6] * z + _P[5]) * z + _P[4]) * z + _P[3]) * z + _P[2]) * z + _P[1]) * z + _P[0])
    q = (((((_Q[5] * z + _Q[4]) * z + _Q[3]) * z + _Q[2]) * z + _Q[1]) * z + _Q[0])
    return _F(0.5) * v * (_F(1.0) + t * p / q)


@njit(cache=True, fastmath=True, error_model="numpy")
def gelu_fast(h):
    """Exact-erf GELU in place on a C-contiguous float32 array."""
    flat = h.reshape(-1)
    for i in range(flat.size):
        flat[i] = _gelu_scalar(flat[i])
    return h


@njit(cache=True, fastmath=True, error_model="numpy")
def bias_gelu_fast(h, bias):
    """h = GELU(h + bias) in place, h (m, n) float32, bias (n,)."""
    m, n = h.shape
    for r in range(m):
        row = h[r]
        for j in range(n):
            row[j] = _gelu_scalar(row[j] + bias[j])
    return h


@njit(cache=True, fastmath=True, error_model="numpy")
def layer_norm_fast(x, residual, weight, bias, eps, x_bias=None):
    """x = LayerNorm(x + x_bias + residual) per row, in place (x_bias and residual may
    be None); float32."""
    m, n = x.shape
    inv_n = _F(1.0) / _F(n)
    for r in range(m):
        row = x[r]
        s = _F(0.0)
        if x_bias is not None:
            for j in range(n):
                row[j] += x_bias[j]
        if residual is not None:
            res = residual[r]
            for j in range(n):
                row[j] += res[j]
        for j in range(n):
            s += row[j]
        mean = s * inv_n
        ss = _F(0.0)
        for j in range(n):
            v = row[j] - mean
            row[j] = v
            ss += v * v
        inv = _F(1.0) / np.sqrt(ss * inv_n + _F(eps))
        for j in range(n):
            row[j] = row[j] * inv * weight[j] + bias[j]
    return x


@njit(cache=True, fastmath=True, error_model="numpy", inline="always")
def _exp_nonpositive(y):
    """exp(y) for float32 y <= 0: y = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor
    polynomial of degree 7 (truncation 6e-9 relative), 2^n from the exponent bits.
    Below -87 (where exp underflows float32's normal range) the result stays ~1e-38."""
    y = max(y, _F(-87.0))
    n = np.rint(y * _F(1.4426950408889634))
    r = (y - n * _F(0.693359375)) + n * _F(2.12194440e-4)  # ln 2 in two parts (hi exact)
    p = _F(1.0 / 5040)
    p = p * r + _F(1.0 / 720)
    p = p * r + _F(1.0 / 120)
    p = p * r + _F(1.0 / 24)
    p = p * r + _F(1.0 / 6)
    p = p * r + _F(0.5)
    p = p * r + _F(1.0)
    p = p * r + _F(1.0)
    return p * float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(cache=True, fastmath=True, error_model="numpy")
def attention_fast(qkv, starts, lengths, heads, out, bias=None):
    """Packed qkv (total, 3*dim) (plus bias (3*dim,) if given) -> packed context out
    (total, dim), float32.

    Each sequence attends over its own tokens only: no padding, no mask, and the sums run
    in the same order whatever the batch. Its q (pre-scaled by 1/sqrt(d)), k and v are
    first copied per head into contiguous (tokens, d) blocks, so that every inner loop is
    a contiguous run of d values (measured 3x faster than indexing qkv in place; a
    transposed k, scores accumulated over d, measured 1.6x slower at 14 tokens)."""
    dim = out.shape[1]
    d = dim // heads
    scale = _F(1.0) / np.sqrt(_F(d))
    width = 1
    for s in range(lengths.size):
        width = max(width, lengths[s])
    q_all = np.empty((heads, width, d), dtype=np.float32)
    k_all = np.empty((heads, width, d), dtype=np.float32)
    v_all = np.empty((heads, width, d), dtype=np.float32)
    p = np.empty(width, dtype=np.float32)
    acc = np.empty(d, dtype=np.float32)
    for s in range(starts.size):
        s0, n = starts[s], lengths[s]
        for j in range(n):
            row = qkv[s0 + j]
            for h in range(heads):  # loops, not slice arithmetic: no temporary arrays
                qj, kj, vj = q_all[h, j], k_all[h, j], v_all[h, j]
                for c in range(d):
                    i = h * d + c
                    if bias is None:
                        qj[c] = row[i] * scale
                        kj[c] = row[dim + i]
                        vj[c] = row[2 * dim + i]
                    else:
                        qj[c] = (row[i] + bias[i]) * scale
                        kj[c] = row[dim + i] + bias[dim + i]
                        vj[c] = row[2 * dim + i] + bias[2 * dim + i]
        for h in range(heads):
            qh, kh, vh = q_all[h], k_all[h], v_all[h]
            for i in range(n):
                q = qh[i]
                top = _F(-3e38)
                for j in range(n):
                    k = kh[j]
                    dot = _F(0.0)
                    for c in range(d):
                        dot += q[c] * k[c]
                    p[j] = dot
                    top = max(top, dot)
                total = _F(0.0)
                for j in range(n):
                    e = _exp_nonpositive(p[j] - top)
                    p[j] = e
                    total += e
                inv = _F(1.0) / total
                acc[:] = _F(0.0)
                for j in range(n):
                    w = p[j] * inv
                    v = vh[j]
                    for c in range(d):
                        acc[c] += w * v[c]
                out[s0 + i, h * d:(h + 1) * d] = acc
    return out


# The int8 path's kernels: each ends by quantizing its output for the next linear layer
# (one Numba call instead of a float pass, a bias add and a quantize call). They return
# False when a value to quantize was NaN or inf.
@njit(cache=True, error_model="numpy")
def layer_norm_q8(x, x_bias, residual, weight, bias, eps, block, q, s):
    """x = LayerNorm(x + x_bias + residual) in place, then quantized into q, s (skipped
    when block is 0)."""
    layer_norm_fast(x, residual, weight, bias, eps, x_bias)
    return quantize_rows(x, block, q, s) if block > 0 else True


@njit(cache=True, error_model="numpy")
def gelu_q8(h, bias, block, q, s):
    """h = GELU(h + bias) in place, then quantized into q, s."""
    bias_gelu_fast(h, bias)
    return quantize_rows(h, block, q, s)


@njit(cache=True, error_model="numpy")
def attention_q8(qkv, bias, starts, lengths, heads, ctx, block, q, s):
    """Context of qkv + bias into ctx (see attention_fast), then quantized into q, s."""
    attention_fast(qkv, starts, lengths, heads, ctx, bias)
    return quantize_rows(ctx, block, q, s)
