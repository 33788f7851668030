/* The llama decoder's fused steps (declared and specified in steps.h).
 *
 * Bit-exactness with the Numba steps (edgeq/models/llama_steps.py) rests on:
 * - the same operations in the same order: every sum runs in index order, each output
 *   element has its own accumulator (loops over independent elements may be vectorized, a
 *   reduction never is: no -ffast-math), no fused multiply-add (-ffp-contract=off, set for
 *   every file by build_native.py; Numba does not contract either without fastmath);
 * - float32 arithmetic evaluated in float32 (FLT_EVAL_METHOD 0: SSE2, NEON);
 * - exp from the C library's expf, the function Numba's np.exp on float32 also calls.
 * The sum of squares of RMSNorm and the softmax denominator are float64, as there.
 */
#include <math.h>
#include <string.h>

#include "edgeq_native.h"
#include "lanes.h"
#include "steps.h"

/* Hot elementwise loops are compiled twice on x86-64 Linux with GCC, for AVX2 and for the
 * baseline, and the loader picks one (ifunc): the same C, so the same float operations,
 * eight lanes at a time instead of four. Elsewhere this is plain C. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EQ_STEP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EQ_STEP_CLONES
#endif

/* ---- float32 -> binary16 (widening: the SIMD table's exact halves_to_float) -------------- */

static inline uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)                    /* NaN: quiet, top payload bits kept */
        return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x1ffu);
    if (ax >= 0x477ff000u)                   /* >= 65520 (or inf): rounds to inf */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) {                 /* >= 2^-14: normal half */
        uint32_t r = ax - (112u << 23);
        r += 0xfffu + ((r >> 13) & 1u);      /* round to nearest even on the 13 dropped bits */
        return sign | (uint16_t)(r >> 13);
    }
    int e = (int)(ax >> 23);                 /* subnormal half: value / 2^-24, rounded */
    if (e < 102)                             /* below 2^-25: rounds to zero */
        return sign;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    int shift = 126 - e;                     /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    q += rem > half || (rem == half && (q & 1u));
    return sign | (uint16_t)q;
}

void eq_floats_to_halves(const float *x, int64_t n, uint16_t *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = float_to_half(x[i]);
}

/* ---- activation quantization ------------------------------------------------------------- */

/* The engine's quantizer (the SIMD variant's block rule, the same bits everywhere): 1 if every
 * value was finite, 0 if not (the codes are then left unwritten), EQ_STEP_EARGS on bad sizes. */
int eq_step_quantize_row(const float *h, int64_t k, int64_t block, int8_t *q, float *scales)
{
    if (k < 0 || block <= 0 || k % block)
        return EQ_STEP_EARGS;
    if (k == 0)
        return 1;
    return eq_quantize_q8(h, 1, k, block, q, scales) == EQ_OK;
}

/* x[i] += d[i] */
EQ_STEP_CLONES static void add_to(float *restrict x, const float *restrict d, int64_t n)
{
    EQ_LANES(i, n, x[i] += d[i]);
}

/* out[i] = (x[i] * inv) * w[i] */
EQ_STEP_CLONES static void scale_by(const float *restrict x, float inv, const float *restrict w,
                                    float *restrict out, int64_t n)
{
    EQ_LANES(i, n, out[i] = (x[i] * inv) * w[i]);
}

/* ---- residual + RMSNorm ------------------------------------------------------------------ */

int eq_step_norm_quantize(float *x, const float *delta, int64_t rows, int64_t d,
                          const float *weight, double eps, int64_t block, int8_t *xq, float *xs,
                          float *work)
{
    if (rows < 0 || d <= 0 || block <= 0 || d % block)
        return EQ_STEP_EARGS;
    int finite = 1;
    for (int64_t t = 0; t < rows; t++) {
        float *xr = x + t * d;
        if (delta)
            add_to(xr, delta + t * d, d);
        double ss = 0.0;
        for (int64_t j = 0; j < d; j++) {
            double v = xr[j];
            ss += v * v;
        }
        float inv = (float)(1.0 / sqrt(ss / (double)d + eps));
        scale_by(xr, inv, weight, work, d);
        finite &= eq_step_quantize_row(work, d, block, xq + t * d, xs + t * (d / block));
    }
    return finite;
}

/* acc[i] += a * row[i] */
EQ_STEP_CLONES static void add_scaled(float *restrict acc, float a, const float *restrict row,
                                      int64_t n)
{
    EQ_LANES(i, n, acc[i] += a * row[i]);
}

/* ---- undoing the residual rotation ------------------------------------------------------- */
int eq_step_unrotate(float *x, const float *delta, int64_t rows, int64_t d,
                     const float *unrotation, float *work)
{
    if (rows < 0 || d <= 0)
        return EQ_STEP_EARGS;
    for (int64_t t = 0; t < rows; t++) {
        float *xr = x + t * d;
        if (delta)
            add_to(xr, delta + t * d, d);
        memset(work, 0, (size_t)d * sizeof(float));
        for (int64_t k = 0; k < d; k++)
            add_scaled(work, xr[k], unrotation + k * d, d);
        memcpy(xr, work, (size_t)d * sizeof(float));
    }
    return 1;
}

/* ---- RoPE + KV cache + attention --------------------------------------------------------- */

/* dst = src (hd,) with its leading rope_dim dimensions turned: pair (a, b) by the angle whose
 * cos, sin are given; "neox" pairs (i, i + rope_dim/2), else (2i, 2i + 1). */
static void rope_row(const float *src, float *dst, const float *cos, const float *sin,
                     int64_t rope_dim, int neox, int64_t hd)
{
    int64_t half = rope_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        int64_t ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float a = src[ia], b = src[ib];
        dst[ia] = a * cos[i] - b * sin[i];
        dst[ib] = a * sin[i] + b * cos[i];
    }
    for (int64_t j = rope_dim; j < hd; j++)
        dst[j] = src[j];
}

/* y[i] += x[i] * w */
EQ_STEP_CLONES static void axpy(float *restrict y, const float *restrict x, float w, int64_t n)
{
    EQ_LANES(i, n, y[i] += x[i] * w);
}

/* scores[:n] -> softmax in place: the max subtracted, float32 exp, float64 sum. */
static void softmax(float *scores, int64_t n)
{
    float top = scores[0];
    for (int64_t p = 1; p < n; p++)
        top = scores[p] > top ? scores[p] : top;
    double total = 0.0;
    for (int64_t p = 0; p < n; p++) {
        float e = expf(scores[p] - top);
        scores[p] = e;
        total += e;
    }
    float total32 = (float)total;
    for (int64_t p = 0; p < n; p++)
        scores[p] /= total32;
}

typedef struct {
    const float *q, *cos, *sin;
    int64_t q_stride, rows, n_heads, group, hd, start, end, rope_dim, n_blocks, key_block,
        capacity, per_head;
    int neox;
    float scale;
    const uint16_t *keys, *values;
    float *work, *out;
} attend_task;

/* Key/value heads [g0, g1): each widens its keys (hd, end) and values (end, hd) to float32
 * in its own part of the work area, then serves every query head of its group. */
static void attend_heads(void *ctx, int64_t g0, int64_t g1)
{
    const attend_task *a = ctx;
    int64_t hd = a->hd, end = a->end, kb = a->key_block;
    eq_halves_fn widen = eq_simd()->halves_to_float;   /* exact in every SIMD variant */
    for (int64_t g = g0; g < g1; g++) {
        float *kt = a->work + g * a->per_head, *vf = kt + hd * end, *scores = vf + end * hd,
              *qr = scores + end;
        const uint16_t *blocks = a->keys + g * a->n_blocks * hd * kb;
        for (int64_t b = 0; b * kb < end; b++) {
            int64_t base = b * kb, count = end - base < kb ? end - base : kb;
            for (int64_t j = 0; j < hd; j++) {
                widen(blocks + (b * hd + j) * kb, count, kt + j * end + base);
            }
        }
        widen(a->values + g * a->capacity * hd, end * hd, vf);
        for (int64_t t = 0; t < a->rows; t++) {
            int64_t seen = a->start + t + 1, half = a->rope_dim / 2;
            for (int64_t r = 0; r < a->group; r++) {
                int64_t h = g * a->group + r;
                rope_row(a->q + t * a->q_stride + h * hd, qr, a->cos + t * half,
                         a->sin + t * half, a->rope_dim, a->neox, hd);
                for (int64_t j = 0; j < hd; j++)
                    qr[j] *= a->scale;
                /* hot loop: scores[p] = sum_j kt[j, p] q[j], j in order, across p */
                for (int64_t p = 0; p < seen; p++)
                    scores[p] = 0.0f;
                for (int64_t j = 0; j < hd; j++)
                    axpy(scores, kt + j * end, qr[j], seen);
                softmax(scores, seen);
                /* hot loop: out = sum_p scores[p] v_p, p in order */
                float *o = a->out + (t * a->n_heads + h) * hd;
                for (int64_t p = 0; p < seen; p++)
                    axpy(o, vf + p * hd, scores[p], hd);
            }
        }
    }
}

static int64_t attend_per_head(int64_t hd, int64_t end)
{
    return 2 * hd * end + end + hd;   /* kt, vf, scores, qr */
}

/* ---- decoding (one row): the cache widened piece by piece --------------------------------
 * With one query row, widening a key/value head whole (above) writes and rereads more than
 * the attention itself computes. Here each key/value head widens at most PIECE keys of one
 * dimension, or VALUE_ROWS value rows, at a time into a buffer that stays in L1, and every
 * query head of its group runs the same axpys over them. Every score and output element
 * still takes its terms in the same order from the same float32 values, so the bits are
 * those of attend_heads. */
#define PIECE 256
#define VALUE_ROWS 32

static int64_t piece_per_head(int64_t group, int64_t hd, int64_t end)
{
    int64_t piece = PIECE > VALUE_ROWS * hd ? PIECE : VALUE_ROWS * hd;
    return group * (end + hd) + piece;   /* scores and qr of each query head, the piece */
}

static void attend_heads_by_piece(void *ctx, int64_t g0, int64_t g1)
{
    const attend_task *a = ctx;
    int64_t hd = a->hd, seen = a->end, kb = a->key_block, group = a->group;
    eq_halves_fn widen = eq_simd()->halves_to_float;
    for (int64_t g = g0; g < g1; g++) {
        float *scores = a->work + g * a->per_head, *qr = scores + group * seen,
              *piece = qr + group * hd;
        for (int64_t r = 0; r < group; r++) {
            float *q = qr + r * hd;
            rope_row(a->q + (g * group + r) * hd, q, a->cos, a->sin, a->rope_dim, a->neox, hd);
            for (int64_t j = 0; j < hd; j++)
                q[j] *= a->scale;
        }
        for (int64_t p = 0; p < group * seen; p++)
            scores[p] = 0.0f;
        const uint16_t *blocks = a->keys + g * a->n_blocks * hd * kb;
        for (int64_t base = 0; base < seen;) {
            /* a piece: at most PIECE positions, all in one key block */
            int64_t b = base / kb, at = base % kb, count = seen - base;
            count = count < PIECE ? count : PIECE;
            count = count < kb - at ? count : kb - at;
            for (int64_t j = 0; j < hd; j++) {
                widen(blocks + (b * hd + j) * kb + at, count, piece);
                for (int64_t r = 0; r < group; r++)
                    axpy(scores + r * seen + base, piece, qr[r * hd + j], count);
            }
            base += count;
        }
        for (int64_t r = 0; r < group; r++)
            softmax(scores + r * seen, seen);
        const uint16_t *values = a->values + g * a->capacity * hd;
        for (int64_t p0 = 0; p0 < seen; p0 += VALUE_ROWS) {
            int64_t count = seen - p0 < VALUE_ROWS ? seen - p0 : VALUE_ROWS;
            widen(values + p0 * hd, count * hd, piece);
            for (int64_t r = 0; r < group; r++) {
                float *o = a->out + (g * group + r) * hd;
                for (int64_t p = 0; p < count; p++)
                    axpy(o, piece + p * hd, scores[r * seen + p0 + p], hd);
            }
        }
    }
}

int64_t eq_step_attend_work(int64_t rows, int64_t n_heads, int64_t n_kv, int64_t head_dim,
                            int64_t end)
{
    if (n_kv <= 0 || n_heads <= 0 || n_heads % n_kv || head_dim <= 0)
        return EQ_STEP_EARGS;
    int64_t heads = rows == 1 ? piece_per_head(n_heads / n_kv, head_dim, end)
                              : attend_per_head(head_dim, end);
    return n_kv * heads + head_dim + rows * n_heads * head_dim;
}

int eq_step_attend_quantize(const float *q, int64_t q_stride, const float *k, int64_t k_stride,
                            const float *v, int64_t v_stride, int64_t rows, int64_t n_heads,
                            int64_t n_kv, int64_t head_dim, int64_t start, const float *cos,
                            const float *sin, int64_t rope_dim, int32_t neox, float scale,
                            uint16_t *keys, int64_t n_blocks, int64_t key_block, uint16_t *values,
                            int64_t capacity, int64_t block, int8_t *xq, float *xs, float *work,
                            int64_t work_len, int32_t threads)
{
    int64_t hd = head_dim, end = start + rows, width = n_heads * hd;
    if (rows < 0 || n_kv <= 0 || hd <= 0 || n_heads % n_kv || start < 0 || rope_dim < 0 ||
        rope_dim % 2 || rope_dim > hd || key_block <= 0 || end > capacity ||
        end > n_blocks * key_block || block <= 0 || width % block || q_stride < width ||
        k_stride < n_kv * hd || v_stride < n_kv * hd ||
        work_len < eq_step_attend_work(rows, n_heads, n_kv, hd, end))
        return EQ_STEP_EARGS;
    if (rows == 0)
        return 1;
    float *kr = work, *out = kr + hd, *heads = out + rows * width;
    int64_t half = rope_dim / 2;
    /* every row's key and value first: row t then sees the rows before it */
    for (int64_t t = 0; t < rows; t++) {
        int64_t pos = start + t, b = pos / key_block, i = pos % key_block;
        for (int64_t g = 0; g < n_kv; g++) {
            rope_row(k + t * k_stride + g * hd, kr, cos + t * half, sin + t * half, rope_dim,
                     neox, hd);
            uint16_t *kcol = keys + ((g * n_blocks + b) * hd) * key_block + i;
            uint16_t *vrow = values + (g * capacity + pos) * hd;
            const float *vsrc = v + t * v_stride + g * hd;
            for (int64_t j = 0; j < hd; j++) {
                kcol[j * key_block] = float_to_half(kr[j]);
                vrow[j] = float_to_half(vsrc[j]);
            }
        }
    }
    memset(out, 0, (size_t)(rows * width) * sizeof(float));
    attend_task task = {q, cos, sin, q_stride, rows, n_heads, n_heads / n_kv, hd, start, end,
                        rope_dim, n_blocks, key_block, capacity,
                        rows == 1 ? piece_per_head(n_heads / n_kv, hd, end)
                                  : attend_per_head(hd, end),
                        neox != 0, scale, keys, values, heads, out};
    eq_parallel_for(rows == 1 ? attend_heads_by_piece : attend_heads, &task, n_kv, 1, threads);
    int finite = 1;
    for (int64_t t = 0; t < rows; t++)
        finite &= eq_step_quantize_row(out + t * width, width, block, xq + t * width,
                                       xs + t * (width / block));
    return finite;
}

/* out[i] = g[i] / (1 + out[i]) * u[i], where out holds exp(-g) */
EQ_STEP_CLONES static void silu_times(const float *restrict g, const float *restrict u,
                                      float *restrict out, int64_t n)
{
    EQ_LANES(i, n, out[i] = g[i] / (1.0f + out[i]) * u[i]);
}

/* ---- the rotation of ffn_down's input (a Walsh-Hadamard transform per chunk, then a mix) -- */

/* (lo[i], hi[i]) = (lo[i] + hi[i], lo[i] - hi[i]) */
EQ_STEP_CLONES static void butterflies(float *restrict lo, float *restrict hi, int64_t n)
{
    EQ_LANES(i, n, { float a = lo[i]; float b = hi[i]; lo[i] = a + b; hi[i] = a - b; });
}

/* x[i] *= s[i] */
EQ_STEP_CLONES static void times(float *restrict x, const float *restrict s, int64_t n)
{
    EQ_LANES(i, n, x[i] *= s[i]);
}

/* x[i] *= c */
EQ_STEP_CLONES static void scale(float *restrict x, float c, int64_t n)
{
    EQ_LANES(i, n, x[i] *= c);
}

int64_t eq_step_swiglu_work(int64_t f, const float *signs, const float *mix, int64_t mix_n)
{
    if (f <= 0)
        return EQ_STEP_EARGS;
    if (!signs && !mix && mix_n == 0)
        return f;
    if (!signs || !mix || mix_n <= 0 || f % mix_n || (f / mix_n) & (f / mix_n - 1))
        return EQ_STEP_EARGS;
    return 2 * f;
}

/* The spans 1, 2 and 4 of the transform on each group of 8 values of x (n,), n a multiple
 * of 8. Every output is the same sums of the same values as span by span (a butterfly needs
 * only its pair, so the order among pairs changes no bits); one group at a time here, where
 * a call per pair of a small span would cost more than its two operations. */
static void spans_1_2_4(float *x, int64_t n)
{
    for (int64_t g = 0; g < n; g += 8) {
        float *v = x + g;
        float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
        float a4 = v[4] + v[5], a5 = v[4] - v[5], a6 = v[6] + v[7], a7 = v[6] - v[7];
        float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
        float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
        v[0] = b0 + b4; v[1] = b1 + b5; v[2] = b2 + b6; v[3] = b3 + b7;
        v[4] = b0 - b4; v[5] = b1 - b5; v[6] = b2 - b6; v[7] = b3 - b7;
    }
}

/* out (f,) = y H_f (steps.h), y (f,) overwritten. */
static void rotate_row(float *y, const float *signs, const float *mix, int64_t m, int64_t f,
                       float *out)
{
    int64_t p = f / m, first = 1;
    times(y, signs, f);
    if (p >= 8) {
        spans_1_2_4(y, f);
        first = 8;
    }
    for (int64_t a = 0; a < m; a++) {
        float *chunk = y + a * p;
        /* hot loop: the butterflies, span by span */
        for (int64_t span = first; span < p; span *= 2)
            for (int64_t i = 0; i < p; i += 2 * span)
                butterflies(chunk + i, chunk + i + span, span);
    }
    scale(y, (float)(1.0 / sqrt((double)p)), f);
    memset(out, 0, (size_t)f * sizeof(float));
    for (int64_t to = 0; to < m; to++)
        for (int64_t a = 0; a < m; a++)
            add_scaled(out + to * p, mix[a * m + to], y + a * p, p);
}

/* ---- SwiGLU ------------------------------------------------------------------------------ */

int eq_step_swiglu_quantize(const float *gate, int64_t gate_stride, const float *up,
                            int64_t up_stride, int64_t rows, int64_t f, int64_t block,
                            const float *signs, const float *mix, int64_t mix_n, int8_t *xq,
                            float *xs, float *work)
{
    if (rows < 0 || block <= 0 || eq_step_swiglu_work(f, signs, mix, mix_n) < 0 ||
        f % block || gate_stride < f || up_stride < f)
        return EQ_STEP_EARGS;
    int finite = 1;
    for (int64_t t = 0; t < rows; t++) {
        const float *g = gate + t * gate_stride, *u = up + t * up_stride;
        float *h = work;
        for (int64_t j = 0; j < f; j++)   /* the C library's expf, one value at a time */
            work[j] = expf(-g[j]);
        silu_times(g, u, work, f);
        if (signs) {
            rotate_row(work, signs, mix, mix_n, f, work + f);
            h = work + f;
        }
        finite &= eq_step_quantize_row(h, f, block, xq + t * f, xs + t * (f / block));
    }
    return finite;
}
