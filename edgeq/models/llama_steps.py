"""Numba steps of the llama decoder's fast path: the work between two matrix products.

A decoder block needs four matrix products (q|k|v, o, gate|up, down); everything between
them is one call here, so a decoded token costs four Python-level calls per block instead
of dozens of small numpy operations:

    norm_quantize    x += delta; h = rmsnorm(x) * weight; h -> int8 activations
    unrotate         x += delta; x = x R^T (a rotated residual stream, before output_norm)
    attend_quantize  RoPE on q and k; k, v into the float16 KV cache; causal softmax
                     attention of q over the cache; the result -> int8 activations
    swiglu_quantize  silu(gate) * up (turned by ffn_down's input rotation, if any) -> int8
                     activations

Rules (the numpy path of edgeq.models.llama computes the same formulas; results agree to
float rounding, not bit for bit):
- Every row (position) is computed on its own, in a fixed order written in the source
  (fastmath off, no threads), so a position gives the same bits whether it is decoded
  alone or inside a prompt of any length.
- RMSNorm: sum of squares in float64, in index order; inv = float32(1 / sqrt(mean + eps));
  h = (x * inv) * weight in float32.
- Activation quantization is edgeq.kernels.reference.quantize_activations: per block of B
  values, s = absmax / float32(127), q = rint(x / s) half to even, clipped to [-127, 127];
  an all-zero block has s = 0, q = 0. (Tests check it against the reference bit for bit.)
- RoPE: pair (a, b) turns by angle pos * inv_freq[i] (cos, sin given per row as float32):
  a' = a cos - b sin, b' = a sin + b cos; "norm" pairs (x[2i], x[2i+1]), "neox" pairs
  (x[i], x[i + rope_dim/2]).
- KV cache entries are IEEE binary16 (stored as uint16 bits), rounded to nearest even like
  numpy's astype(float16).
- Attention of query head h (key/value head h // group) at position p over positions
  0..p: q' = rope(q) * scale; score_i = sum_d k_i[d] q'[d] in d order (vectorized across
  positions i); softmax with the max subtracted, exp in float32, the sum in float64;
  out = sum_i (e_i / sum) v_i in i order.
- ffn_down's input rotation (rotate_row): h * signs (exact), a Walsh-Hadamard transform of
  each chunk of p values span by span, * float32(1 / sqrt(p)), then the chunks mixed, each
  output summing over chunks in order in float32.

The steps return False when a value to be quantized is not finite (the caller raises).

native/steps.c (edgeq.models.llama_native_steps) computes the same bits in C, and the model
prefers it: it needs no JIT and no Numba import. A change to a formula here must be made
there too; tests/test_llama.py compares the two bit for bit.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from edgeq.kernels.numba_kernels.activations import quantize_rows_checked


@intrinsic
def half_to_float(typingctx, bits):
    """uint16 IEEE binary16 bits -> float32 (exact)."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def float_to_half(typingctx, value):
    """float32 -> uint16 IEEE binary16 bits, rounded to nearest even (LLVM fptrunc)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(value), codegen


@njit(cache=True)
def quantize_row(h, block, q, scales):
    """h float32 (k,) -> q int8 (k,), scales float32 (k/block,) by the shared int8 activation
    rule; False if h is not finite."""
    return quantize_rows_checked(h.reshape(1, h.size), block, q.reshape(1, q.size),
                                 scales.reshape(1, scales.size))


@njit(cache=True)
def norm_quantize(x, delta, weight, eps, block, xq, xs):
    """x (T, d) float32; delta (T, d) is added to x in place first (pass a (0, d) array for
    none); rmsnorm(x) * weight of each row quantized into xq int8 (T, d), xs (T, d/block)."""
    t_rows, d = x.shape
    h = np.empty(d, dtype=np.float32)
    finite = True
    for t in range(t_rows):
        if delta.shape[0]:
            for j in range(d):
                x[t, j] += delta[t, j]
        ss = 0.0
        for j in range(d):
            v = np.float64(x[t, j])
            ss += v * v
        inv = np.float32(1.0 / np.sqrt(ss / d + eps))
        for j in range(d):
            h[j] = (x[t, j] * inv) * weight[j]
        finite &= quantize_row(h, block, xq[t], xs[t])
    return finite


@njit(cache=True)
def unrotate(x, delta, unrotation):
    """x (T, d) float32; delta (T, d) is added to x in place first (a (0, d) array for none);
    then x = x @ unrotation (d, d), each element summed over k in order in float32."""
    t_rows, d = x.shape
    acc = np.empty(d, dtype=np.float32)
    for t in range(t_rows):
        if delta.shape[0]:
            for j in range(d):
                x[t, j] += delta[t, j]
        acc[:] = 0
        for k in range(d):
            a = x[t, k]
            for j in range(d):
                acc[j] += a * unrotation[k, j]
        x[t, :] = acc


@njit(cache=True)
def _rope_row(src, dst, cos, sin, rope_dim, neox):
    """dst = src (head_dim,) with its leading rope_dim dimensions rotated."""
    half = rope_dim // 2
    for i in range(half):
        if neox:
            ia, ib = i, i + half
        else:
            ia, ib = 2 * i, 2 * i + 1
        a, b = src[ia], src[ib]
        dst[ia] = a * cos[i] - b * sin[i]
        dst[ib] = a * sin[i] + b * cos[i]
    for j in range(rope_dim, src.shape[0]):
        dst[j] = src[j]


@njit(cache=True)
def attend_quantize(q, k, v, start, cos, sin, rope_dim, neox, scale, keys, values, block, xq, xs):
    """Rows t of q (T, n_heads*hd), k and v (T, n_kv*hd) float32 at positions start + t.

    keys: one layer of the cache, uint16 (n_kv, n_blocks, hd, key_block) (positions
    transposed within blocks, see kv_cache); values uint16 (n_kv, capacity, hd). Every row's
    k and v are written first; row t then attends to positions <= start + t. cos, sin
    float32 (T, rope_dim/2). The attention output (n_heads*hd) of each row is quantized into
    xq (T, n_heads*hd), xs."""
    t_rows = q.shape[0]
    n_kv, _, hd, key_block = keys.shape
    n_heads = q.shape[1] // hd
    group = n_heads // n_kv
    end = start + t_rows
    kr = np.empty(hd, dtype=np.float32)
    for t in range(t_rows):
        pos = start + t
        b, i = pos // key_block, pos % key_block
        for g in range(n_kv):
            _rope_row(k[t, g * hd:(g + 1) * hd], kr, cos[t], sin[t], rope_dim, neox)
            for j in range(hd):
                keys[g, b, j, i] = float_to_half(kr[j])
                values[g, pos, j] = float_to_half(v[t, g * hd + j])
    qr = np.empty(hd, dtype=np.float32)
    kt = np.empty((hd, end), dtype=np.float32)   # one head's keys, float32, position last
    vf = np.empty((end, hd), dtype=np.float32)   # one head's values, float32
    scores = np.empty(end, dtype=np.float32)
    out = np.zeros((t_rows, n_heads * hd), dtype=np.float32)
    for g in range(n_kv):
        _widen_keys(keys[g], end, kt)
        _widen(values[g], end, vf)
        for t in range(t_rows):
            seen = start + t + 1
            for r in range(group):
                h = g * group + r
                _rope_row(q[t, h * hd:(h + 1) * hd], qr, cos[t], sin[t], rope_dim, neox)
                for j in range(hd):
                    qr[j] *= scale
                _scores(kt, seen, qr, scores)
                _softmax(scores, seen)
                o = out[t, h * hd:(h + 1) * hd]
                for p in range(seen):
                    w = scores[p]
                    for j in range(hd):
                        o[j] += w * vf[p, j]
    finite = True
    for t in range(t_rows):
        finite &= quantize_row(out[t], block, xq[t], xs[t])
    return finite


@njit(cache=True)
def _widen(half_rows, n, out):
    """out[:n] = the first n rows of half_rows (uint16 binary16 bits) as float32."""
    src = half_rows[:n].ravel()
    dst = out[:n].ravel()
    for i in range(src.shape[0]):
        dst[i] = half_to_float(src[i])


@njit(cache=True)
def _widen_keys(blocks, n, kt):
    """kt[:, :n] = positions 0..n-1 of one head's key blocks (n_blocks, hd, key_block) as
    float32, position last."""
    _, hd, key_block = blocks.shape
    for b in range((n + key_block - 1) // key_block):
        base = b * key_block
        count = min(key_block, n - base)
        for j in range(hd):
            src = blocks[b, j]
            dst = kt[j]
            for i in range(count):
                dst[base + i] = half_to_float(src[i])


@njit(cache=True)
def _scores(kt, n, qh, scores):
    """scores[p] = sum_j kt[j, p] * qh[j] for p < n, j in order (vectorized across p)."""
    for p in range(n):
        scores[p] = 0
    for j in range(qh.shape[0]):
        w = qh[j]
        row = kt[j]
        for p in range(n):
            scores[p] += row[p] * w


@njit(cache=True)
def _softmax(scores, n):
    """scores[:n] -> softmax in place: max subtracted, float32 exp, float64 sum."""
    top = scores[0]
    for p in range(1, n):
        top = max(top, scores[p])
    total = 0.0
    for p in range(n):
        e = np.exp(scores[p] - top)
        scores[p] = e
        total += e
    total32 = np.float32(total)
    for p in range(n):
        scores[p] /= total32


_NO_SIGNS, _NO_MIX = np.empty(0, np.float32), np.empty((0, 0), np.float32)   # no rotation


def swiglu_quantize(gate, up, block, xq, xs, signs=None, mix=None):
    """silu(gate) * up of each row (T, ffn) float32, turned by ffn_down's input rotation H_f
    when signs (ffn,) and mix (m, m) are given (rotate_row), quantized into xq (T, ffn), xs."""
    if signs is None:
        signs, mix = _NO_SIGNS, _NO_MIX
    return _swiglu_quantize(gate, up, block, xq, xs, signs, mix)


@njit(cache=True)
def _swiglu_quantize(gate, up, block, xq, xs, signs, mix):
    t_rows, f = gate.shape
    a = np.empty(f, dtype=np.float32)
    out = np.empty(f, dtype=np.float32)
    finite = True
    for t in range(t_rows):
        for j in range(f):
            g = gate[t, j]
            a[j] = g / (np.float32(1) + np.exp(-g)) * up[t, j]
        if signs.shape[0]:
            rotate_row(a, signs, mix, out)
            finite &= quantize_row(out, block, xq[t], xs[t])
        else:
            finite &= quantize_row(a, block, xq[t], xs[t])
    return finite


@njit(cache=True)
def rotate_row(y, signs, mix, out):
    """out (f,) = y H_f, H_f = diag(signs) (mix (x) H_p / sqrt(p)), p = f / m a power of two;
    y (f,) is overwritten. float32, in this order: y *= signs; per chunk of p, the fast
    Walsh-Hadamard transform, spans 1, 2, .., p/2, pair (i, i + span) -> (sum, difference);
    y *= float32(1 / sqrt(p)); out[a' p + b] = sum over a in order of y[a p + b] mix[a, a']."""
    f, m = y.shape[0], mix.shape[0]
    p = f // m
    for j in range(f):
        y[j] *= signs[j]
    for c in range(0, f, p):
        span = 1
        while span < p:
            for i in range(c, c + p, 2 * span):
                for j in range(i, i + span):
                    lo, hi = y[j], y[j + span]
                    y[j] = lo + hi
                    y[j + span] = lo - hi
            span *= 2
    inv = np.float32(1.0 / np.sqrt(np.float64(p)))
    for j in range(f):
        y[j] *= inv
    out[:] = 0
    for to in range(m):
        for a in range(m):
            w = mix[a, to]
            for b in range(p):
                out[to * p + b] += w * y[a * p + b]
