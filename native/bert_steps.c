/* BERT's fused steps (declared and specified in bert_steps.h).
 *
 * The formulas, constants and loop orders are those written in the Numba steps
 * (edgeq/models/bert_numba_steps.py): sums run in index order in float32, GELU's erf is the
 * same rational function, softmax's exp the same polynomial with 2^n from the exponent bits.
 * The bits still differ from Numba's in the last place now and then: the Numba steps are
 * compiled with fastmath, so LLVM reorders their sums into vector lanes and fuses multiply-
 * adds where the CPU has FMA, in an order that depends on the CPU. Here nothing is reordered
 * or fused (-ffp-contract=off, no -ffast-math), so the results are the same on every CPU, and
 * since every sum runs per token (attention: per sequence) they do not depend on the batch.
 */
#include <math.h>
#include <string.h>

#include "bert_steps.h"
#include "edgeq_native.h"
#include "lanes.h"

#define F(c) ((float)(c))   /* a constant as the Numba steps have it: float64 rounded once */

/* GCC on x86-64 Linux compiles the elementwise loops for AVX2 and the baseline, picked at load
 * (ifunc): the same float operations per element, eight lanes at a time. no-trapping-math
 * lets it turn the comparisons of a clamp into selects (else it keeps branches and does not
 * vectorize); it changes no result, only the promise about floating-point exception traps. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EQ_BERT_CLONES __attribute__((target_clones("avx2", "default"), optimize("no-trapping-math")))
#elif defined(__GNUC__) && !defined(__clang__)
#define EQ_BERT_CLONES __attribute__((optimize("no-trapping-math")))
#else
#define EQ_BERT_CLONES
#endif

/* q, s of rows x (rows, n) by the engine's activation quantizer: 1 finite, 0 not. */
static int quantize(const float *x, int64_t rows, int64_t n, int64_t block, int8_t *q, float *s)
{
    return rows == 0 || eq_quantize_q8(x, rows, n, block, q, s) == EQ_OK;
}

/* ---- LayerNorm ----------------------------------------------------------------------------- */

EQ_BERT_CLONES static void add_to(float *restrict x, const float *restrict d, int64_t n)
{
    EQ_LANES(i, n, x[i] += d[i]);
}

/* Sums in SUM_LANES partial sums (element j into lane j % SUM_LANES), then the lanes in order:
 * a fixed order, the same on every CPU, that vectorizes (one running sum is a chain of n
 * dependent adds). Numba's fastmath sums also run in lanes, but in an order of LLVM's choosing. */
#define SUM_LANES 16

static float add_lanes(const float *lanes)
{
    float total = 0.0f;
    for (int i = 0; i < SUM_LANES; i++)
        total += lanes[i];
    return total;
}

EQ_BERT_CLONES static float lane_sum(const float *restrict x, int64_t n)
{
    float lanes[SUM_LANES] = {0};
    int64_t j = 0;
    for (; j + SUM_LANES <= n; j += SUM_LANES)
        for (int i = 0; i < SUM_LANES; i++)
            lanes[i] += x[j + i];
    for (int i = 0; j + i < n; i++)
        lanes[i] += x[j + i];
    return add_lanes(lanes);
}

/* x[j] -= mean; the sum of the x[j]^2 (in lanes, as lane_sum) */
EQ_BERT_CLONES static float center_square_sum(float *restrict x, float mean, int64_t n)
{
    float lanes[SUM_LANES] = {0};
    int64_t j = 0;
    for (; j + SUM_LANES <= n; j += SUM_LANES)
        for (int i = 0; i < SUM_LANES; i++) {
            float v = x[j + i] - mean;
            x[j + i] = v;
            lanes[i] += v * v;
        }
    for (int i = 0; j + i < n; i++) {
        float v = x[j + i] - mean;
        x[j + i] = v;
        lanes[i] += v * v;
    }
    return add_lanes(lanes);
}

EQ_BERT_CLONES static void scale_shift(float *restrict x, float inv, const float *restrict w,
                                       const float *restrict b, int64_t n)
{
    EQ_LANES(i, n, x[i] = x[i] * inv * w[i] + b[i]);
}

int eq_bert_layer_norm_q8(float *x, const float *x_bias, const float *residual, int64_t rows,
                          int64_t n, const float *weight, const float *bias, float eps,
                          int64_t block, int8_t *q, float *s)
{
    if (rows < 0 || n <= 0 || block < 0 || (block && n % block))
        return EQ_BERT_EARGS;
    float inv_n = 1.0f / (float)n;
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * n;
        if (x_bias)
            add_to(row, x_bias, n);
        if (residual)
            add_to(row, residual + r * n, n);
        float mean = lane_sum(row, n) * inv_n;
        float ss = center_square_sum(row, mean, n);
        scale_shift(row, 1.0f / sqrtf(ss * inv_n + eps), weight, bias, n);
    }
    return block ? quantize(x, rows, n, block, q, s) : 1;
}

/* ---- GELU ------------------------------------------------------------------------------------
 * erf(t) = t P(t^2) / Q(t^2) on |t| <= 4, clamped beyond: the coefficients of
 * ERF_RATIONAL_P / ERF_RATIONAL_Q, each rounded from its float64 value to float32. */
EQ_BERT_CLONES static void bias_gelu(float *restrict h, const float *restrict bias, int64_t n)
{
    EQ_LANES(i, n, {
        float v = h[i] + bias[i];
        float t = v * F(0.7071067811865476);
        t = t > F(-4.0) ? t : F(-4.0);
        t = t < F(4.0) ? t : F(4.0);
        float z = t * t;
        float p = ((((((F(-1.3666279866201322e-08) * z + F(4.780433385615413e-06)) * z
                       + F(0.00038268945090492675)) * z + F(0.0038395611588057468)) * z
                     + F(0.05433264732494848)) * z + F(0.18471136665082194)) * z
                   + F(1.1283791820936728));
        float qd = (((((F(6.400830050036298e-05) * z + F(0.0013095820837956118)) * z
                       + F(0.01545356833281603)) * z + F(0.11382665483240482)) * z
                     + F(0.49702973185979293)) * z + F(1.0));
        h[i] = F(0.5) * v * (F(1.0) + t * p / qd);
    });
}

int eq_bert_gelu_q8(float *h, const float *bias, int64_t rows, int64_t n, int64_t block,
                    int8_t *q, float *s)
{
    if (rows < 0 || n <= 0 || block <= 0 || n % block)
        return EQ_BERT_EARGS;
    for (int64_t r = 0; r < rows; r++)
        bias_gelu(h + r * n, bias, n);
    return quantize(h, rows, n, block, q, s);
}

/* ---- attention ------------------------------------------------------------------------------ */

/* exp(y) for y <= 0: y = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor polynomial of degree 7,
 * 2^n from the exponent bits; below -87 the result stays about 1e-38. */
static inline __attribute__((always_inline)) float exp_nonpositive(float y)
{
    y = y > F(-87.0) ? y : F(-87.0);
    float n = rintf(y * F(1.4426950408889634));
    float r = (y - n * F(0.693359375)) + n * F(2.12194440e-4);   /* ln 2 in two parts */
    float p = F(1.0 / 5040);
    p = p * r + F(1.0 / 720);
    p = p * r + F(1.0 / 120);
    p = p * r + F(1.0 / 24);
    p = p * r + F(1.0 / 6);
    p = p * r + F(0.5);
    p = p * r + F(1.0);
    p = p * r + F(1.0);
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

/* y[i] += x[i] * w (inlined into attend_heads, and so compiled for its AVX2 clone too: the
 * vectors are short, a call would cost more) */
static inline __attribute__((always_inline)) void axpy(float *restrict y, const float *restrict x, float w, int64_t n)
{
    EQ_LANES(i, n, y[i] += x[i] * w);
}

/* One sequence of n tokens, its heads laid out in work: q (heads, width, d) pre-scaled, k
 * transposed (heads, d, width), v (heads, width, d) -> ctx rows (n, dim), row stride dim. */
EQ_BERT_CLONES static void attend_heads(const float *qh, const float *kt, const float *vh,
                                        int64_t n, int64_t width, int64_t heads, int64_t d,
                                        float *restrict p, float *restrict acc, float *ctx)
{
    int64_t dim = heads * d;
    for (int64_t h = 0; h < heads; h++) {
        const float *kth = kt + h * d * width, *vhh = vh + h * width * d;
        for (int64_t i = 0; i < n; i++) {
            const float *qi = qh + (h * width + i) * d;
            /* p[j] = sum_c q[c] k_j[c], c in order, across j */
            memset(p, 0, (size_t)n * sizeof *p);
            for (int64_t c = 0; c < d; c++)
                axpy(p, kth + c * width, qi[c], n);
            float top = F(-3e38);
            for (int64_t j = 0; j < n; j++)
                top = p[j] > top ? p[j] : top;
            /* the exponentials apart from their (ordered) sum, so that they vectorize */
            for (int64_t j = 0; j < n; j++)
                p[j] = exp_nonpositive(p[j] - top);
            float sum = 0.0f;
            for (int64_t j = 0; j < n; j++)
                sum += p[j];
            float inv = 1.0f / sum;
            memset(acc, 0, (size_t)d * sizeof *acc);
            for (int64_t j = 0; j < n; j++)   /* acc = sum_j (p[j] / sum) v_j, j in order */
                axpy(acc, vhh + j * d, p[j] * inv, d);
            memcpy(ctx + i * dim + h * d, acc, (size_t)d * sizeof *acc);
        }
    }
}

int64_t eq_bert_attention_work(int64_t width, int64_t heads, int64_t dim)
{
    if (width < 0 || heads <= 0 || dim <= 0 || dim % heads)
        return EQ_BERT_EARGS;
    return 3 * width * dim + width + dim / heads;   /* q, k^T, v of every head; scores; acc */
}

int eq_bert_attention_q8(const float *qkv, const float *bias, const int64_t *starts,
                         const int64_t *lengths, int64_t batch, int64_t total, int64_t heads,
                         int64_t dim, float *ctx, int64_t block, int8_t *q, float *s,
                         float *work, int64_t work_len)
{
    if (batch < 0 || total < 0 || heads <= 0 || dim <= 0 || dim % heads || block <= 0 ||
        dim % block)
        return EQ_BERT_EARGS;
    int64_t width = 0;
    for (int64_t b = 0; b < batch; b++) {
        if (starts[b] < 0 || lengths[b] < 0 || starts[b] > total - lengths[b])
            return EQ_BERT_EARGS;
        width = lengths[b] > width ? lengths[b] : width;
    }
    if (work_len < eq_bert_attention_work(width, heads, dim))
        return EQ_BERT_EARGS;
    int64_t d = dim / heads;
    float scale = 1.0f / sqrtf((float)d);
    /* per head h: q (n, d) pre-scaled, k transposed (d, width), v (n, d) */
    float *qh = work, *kt = qh + width * dim, *vh = kt + width * dim, *p = vh + width * dim,
          *acc = p + width;
    for (int64_t b = 0; b < batch; b++) {
        int64_t s0 = starts[b], n = lengths[b];
        for (int64_t j = 0; j < n; j++) {
            const float *row = qkv + (s0 + j) * 3 * dim;
            for (int64_t h = 0; h < heads; h++)
                for (int64_t c = 0; c < d; c++) {
                    int64_t i = h * d + c;
                    float qv = row[i], kv = row[dim + i], vv = row[2 * dim + i];
                    if (bias) {
                        qv = qv + bias[i];
                        kv = kv + bias[dim + i];
                        vv = vv + bias[2 * dim + i];
                    }
                    qh[(h * width + j) * d + c] = qv * scale;
                    kt[(h * d + c) * width + j] = kv;
                    vh[(h * width + j) * d + c] = vv;
                }
        }
        attend_heads(qh, kt, vh, n, width, heads, d, p, acc, ctx + s0 * dim);
    }
    return quantize(ctx, total, dim, block, q, s);
}
