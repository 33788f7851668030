/* BERT's fused steps (declared and specified in bert_steps.h).
 *
 * The formulas, constants and loop orders are those written in the Numba steps
 * (edgeq/models/bert_numba_steps.py): sums run in index order in float32 (but for LayerNorm's
 * and softmax's, in a fixed number of lanes, see SUM_LANES and KEY_BLOCK), GELU's erf is the
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

/* ---- attention ------------------------------------------------------------------------------
 * Sentences are short (MiniLM: 4-41 tokens, mostly 8-20), so the work per head is a few small
 * products, and loop overhead and scalar tails decide the speed. The hot loops therefore run on
 * whole blocks of KEY_BLOCK keys (k^T's rows padded with zeros to a multiple of KEY_BLOCK, the
 * padded scores masked out) and on ROW_BLOCK query rows at once, so that each k^T or v vector
 * loaded feeds ROW_BLOCK multiply-adds. Vectors are GCC/Clang vector types of VEC floats, the
 * register width of the build (x86-64: 8, an AVX register; GCC's baseline clone splits them in
 * two; elsewhere 4, SSE or NEON: wider types would live on the stack); each lane does exactly
 * the scalar operations, and KEY_BLOCK is 16 keys everywhere, so the sums' order, and the
 * results, are the same whatever VEC. */
#if defined(__x86_64__)
#define VEC 8
#define LANES_OF(x) {x, x, x, x, x, x, x, x}
#define LANE_INDEX {0, 1, 2, 3, 4, 5, 6, 7}
#else
#define VEC 4
#define LANES_OF(x) {x, x, x, x}
#define LANE_INDEX {0, 1, 2, 3}
#endif
#define KEY_BLOCK 16
#define KEY_VECS (KEY_BLOCK / VEC)
#define ROW_BLOCK 4

#if defined(__GNUC__) && !defined(__clang__)
/* GCC warns that returning these vectors changes with the ABI; no call returns one: the helpers
 * are all inlined (and none takes a vector argument, which would draw the same note) */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef float vfloat __attribute__((vector_size(VEC * sizeof(float))));
typedef int32_t vmask __attribute__((vector_size(VEC * sizeof(int32_t))));

#define INLINE static inline __attribute__((always_inline))

INLINE vfloat load_vec(const float *p)
{
    vfloat v;
    memcpy(&v, p, sizeof v);   /* an unaligned vector load */
    return v;
}

#define STORE_VEC(p, v)                   \
    do {                                  \
        vfloat store_ = (v);              \
        memcpy((p), &store_, sizeof store_); \
    } while (0)

INLINE vfloat splat(float x)
{
    return (vfloat)LANES_OF(x);
}

/* m ? a : b per lane (m: all ones or all zeros), by bits, so NaN in b's unused lanes is harmless */
#define SELECT_VEC(m, a, b) ((vfloat)(((vmask)(a) & (m)) | ((vmask)(b) & ~(m))))

/* the lanes of the vector of keys from jb on that are real keys (< n) */
INLINE vmask keys_below(int64_t jb, int64_t n)
{
    int32_t left = (int32_t)(n - jb < VEC ? n - jb : VEC);
    vmask lane = LANE_INDEX, bound = LANES_OF(left);
    return lane < bound;
}

/* exp(y) per lane for y = s[l] - top <= 0: y = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor
 * polynomial of degree 7, 2^n from the exponent bits; below -87 the result stays about 1e-38.
 * n = rint(y/ln2) by adding and subtracting 1.5 * 2^23 (exact: |y/ln2| <= 126, so the sum's
 * unit is 1, and its ties go to even as rintf's do), which vectorizes on every target. */
INLINE vfloat exp_minus(const float *s, float top)
{
    vfloat y = load_vec(s) - top;
    y = SELECT_VEC(y > splat(F(-87.0)), y, splat(F(-87.0)));
    vfloat n = (y * F(1.4426950408889634) + F(12582912.0)) - F(12582912.0);
    vfloat r = (y - n * F(0.693359375)) + n * F(2.12194440e-4);   /* ln 2 in two parts */
    vfloat p = splat(F(1.0 / 5040));
    p = p * r + F(1.0 / 720);
    p = p * r + F(1.0 / 120);
    p = p * r + F(1.0 / 24);
    p = p * r + F(1.0 / 6);
    p = p * r + F(0.5);
    p = p * r + F(1.0);
    p = p * r + F(1.0);
    vmask bits = (__builtin_convertvector(n, vmask) + 127) << 23;
    return p * (vfloat)bits;
}

/* acc[r][u] = sum over t = 0..steps-1, in order, of a[r][t] * b[t * bstride + u * VEC]: the
 * ROW_BLOCK rows of a against KEY_BLOCK consecutive columns of b, each b vector loaded once for
 * all rows. The hot loop of both products (scores, weighted values). */
INLINE void block_products(const float *const a[ROW_BLOCK], const float *b, int64_t bstride,
                           int64_t steps, vfloat acc[ROW_BLOCK][KEY_VECS])
{
#pragma GCC unroll 8
    for (int r = 0; r < ROW_BLOCK; r++)
#pragma GCC unroll 8
        for (int u = 0; u < KEY_VECS; u++)
            acc[r][u] = splat(0.0f);
    for (int64_t t = 0; t < steps; t++) {
        vfloat bt[KEY_VECS];
#pragma GCC unroll 8
        for (int u = 0; u < KEY_VECS; u++)
            bt[u] = load_vec(b + t * bstride + u * VEC);
#pragma GCC unroll 8
        for (int r = 0; r < ROW_BLOCK; r++)
#pragma GCC unroll 8
            for (int u = 0; u < KEY_VECS; u++)
                acc[r][u] += bt[u] * a[r][t];
    }
}

/* scores (ROW_BLOCK, kw): row r = q[r] k^T over the kw (padded) keys, each score's sum over
 * c = 0..d-1 in order; the padded keys get -3e38 (nothing, to the max) */
INLINE void score_rows(const float *const q[ROW_BLOCK], const float *kt, int64_t n, int64_t kw,
                       int64_t d, float *scores)
{
    for (int64_t jb = 0; jb < kw; jb += KEY_BLOCK) {
        vfloat acc[ROW_BLOCK][KEY_VECS];
        block_products(q, kt + jb, kw, d, acc);
#pragma GCC unroll 8
        for (int u = 0; u < KEY_VECS; u++) {
            vmask real = keys_below(jb + u * VEC, n);
#pragma GCC unroll 8
            for (int r = 0; r < ROW_BLOCK; r++)
                STORE_VEC(scores + r * kw + jb + u * VEC, SELECT_VEC(real, acc[r][u],
                                                                     splat(F(-3e38))));
        }
    }
}

/* one row of scores (kw, padded) -> softmax weights in place, the padded ones 0: the max, the
 * exponentials, their sum in KEY_BLOCK lanes (key j into lane j % KEY_BLOCK, then the lanes in
 * order: a fixed order whatever the padding and VEC), each exponential times 1 / sum */
INLINE void softmax_row(float *p, int64_t n, int64_t kw)
{
    vfloat top_lanes = splat(F(-3e38));
    for (int64_t j = 0; j < kw; j += VEC) {
        vfloat s = load_vec(p + j);
        top_lanes = SELECT_VEC(s > top_lanes, s, top_lanes);
    }
    float top = F(-3e38);
    for (int l = 0; l < VEC; l++)
        top = top_lanes[l] > top ? top_lanes[l] : top;
    vfloat sum_lanes[KEY_VECS];
#pragma GCC unroll 8
    for (int u = 0; u < KEY_VECS; u++)
        sum_lanes[u] = splat(0.0f);
    for (int64_t jb = 0; jb < kw; jb += KEY_BLOCK)
#pragma GCC unroll 8
        for (int u = 0; u < KEY_VECS; u++) {
            int64_t j = jb + u * VEC;
            vfloat e = SELECT_VEC(keys_below(j, n), exp_minus(p + j, top), splat(0.0f));
            STORE_VEC(p + j, e);
            sum_lanes[u] += e;
        }
    float sum = 0.0f;
    for (int u = 0; u < KEY_VECS; u++)
        for (int l = 0; l < VEC; l++)
            sum += sum_lanes[u][l];
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < kw; j += VEC)
        STORE_VEC(p + j, load_vec(p + j) * inv);
}

/* ctx rows r < rows (row stride dim) = sum_j w[r][j] v_j over j = 0..n-1 in order, w: the
 * softmax weights (ROW_BLOCK, kw); v (n, d) */
INLINE void weigh_values(const float *w, const float *v, int64_t n, int64_t kw, int64_t d,
                         int64_t rows, float *ctx, int64_t dim)
{
    const float *wr[ROW_BLOCK];
    for (int r = 0; r < ROW_BLOCK; r++)
        wr[r] = w + r * kw;
    int64_t cb = 0;
    for (; cb + KEY_BLOCK <= d; cb += KEY_BLOCK) {
        vfloat acc[ROW_BLOCK][KEY_VECS];
        block_products(wr, v + cb, d, n, acc);
        for (int64_t r = 0; r < rows; r++)
#pragma GCC unroll 8
            for (int u = 0; u < KEY_VECS; u++)
                STORE_VEC(ctx + r * dim + cb + u * VEC, acc[r][u]);
    }
    for (int64_t r = 0; r < rows; r++)   /* the last d % KEY_BLOCK columns, one at a time */
        for (int64_t c = cb; c < d; c++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < n; j++)
                acc += v[j * d + c] * w[r * kw + j];
            ctx[r * dim + c] = acc;
        }
}

/* One sequence of n tokens, laid out in work: q (heads, n, d) pre-scaled, k transposed
 * (heads * d, kw) with zero padding, v (heads, n, d) -> ctx rows (n, dim), row stride dim.
 * scores: (ROW_BLOCK, kw). */
EQ_BERT_CLONES static void attend_heads(const float *qh, const float *kt, const float *vh,
                                        int64_t n, int64_t kw, int64_t heads, int64_t d,
                                        float *restrict scores, float *ctx)
{
    int64_t dim = heads * d;
    for (int64_t h = 0; h < heads; h++) {
        const float *qhh = qh + h * n * d, *kth = kt + h * d * kw, *vhh = vh + h * n * d;
        for (int64_t i0 = 0; i0 < n; i0 += ROW_BLOCK) {
            int64_t rows = n - i0 < ROW_BLOCK ? n - i0 : ROW_BLOCK;
            const float *q[ROW_BLOCK];   /* a short last block repeats its last row */
            for (int r = 0; r < ROW_BLOCK; r++)
                q[r] = qhh + (i0 + (r < rows ? r : rows - 1)) * d;
            score_rows(q, kth, n, kw, d, scores);
            for (int64_t r = 0; r < rows; r++)
                softmax_row(scores + r * kw, n, kw);
            weigh_values(scores, vhh, n, kw, d, rows, ctx + i0 * dim + h * d, dim);
        }
    }
}

/* k's row length in work: n keys rounded up to whole key blocks */
static int64_t key_width(int64_t n)
{
    return (n + KEY_BLOCK - 1) / KEY_BLOCK * KEY_BLOCK;
}

int64_t eq_bert_attention_work(int64_t width, int64_t heads, int64_t dim)
{
    if (width < 0 || heads <= 0 || dim <= 0 || dim % heads)
        return EQ_BERT_EARGS;
    int64_t kw = key_width(width);
    return 2 * width * dim + kw * dim + ROW_BLOCK * kw;   /* q, v; k^T padded; scores */
}

/* one sequence's q (pre-scaled), k^T and v, bias added, laid out as attend_heads reads them */
EQ_BERT_CLONES static void gather_heads(const float *qkv, const float *bias, int64_t n,
                                        int64_t kw, int64_t heads, int64_t d, float scale,
                                        float *restrict qh, float *restrict kt,
                                        float *restrict vh)
{
    int64_t dim = heads * d;
    for (int64_t j = 0; j < n; j++) {
        const float *row = qkv + j * 3 * dim;
        for (int64_t h = 0; h < heads; h++) {
            const float *rq = row + h * d, *rv = row + 2 * dim + h * d;
            float *qj = qh + (h * n + j) * d, *vj = vh + (h * n + j) * d;
            if (bias) {
                const float *bq = bias + h * d, *bv = bias + 2 * dim + h * d;
                EQ_LANES(c, d, qj[c] = (rq[c] + bq[c]) * scale);
                EQ_LANES(c, d, vj[c] = rv[c] + bv[c]);
            } else {
                EQ_LANES(c, d, qj[c] = rq[c] * scale);
                memcpy(vj, rv, (size_t)d * sizeof *vj);
            }
        }
    }
    /* k^T row by row, its stores contiguous: measured 3-30% faster per call than storing
     * each token's k to kw-strided addresses in the loop above */
    const float *k = qkv + dim;
    for (int64_t i = 0; i < dim; i++) {
        float *kti = kt + i * kw;
        if (kw > n)   /* the padding: zeros, not stale floats (denormals would be slow) */
#pragma GCC unroll 8
            for (int u = 0; u < KEY_VECS; u++)
                STORE_VEC(kti + kw - KEY_BLOCK + u * VEC, splat(0.0f));
        if (bias)
            for (int64_t j = 0; j < n; j++)
                kti[j] = k[j * 3 * dim + i] + bias[dim + i];
        else
            for (int64_t j = 0; j < n; j++)
                kti[j] = k[j * 3 * dim + i];
    }
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
    /* each sequence is laid out with its own key width, so its bits do not depend on the batch */
    for (int64_t b = 0; b < batch; b++) {
        int64_t s0 = starts[b], n = lengths[b], kw = key_width(n);
        float *qh = work, *vh = qh + n * dim, *kt = vh + n * dim, *scores = kt + kw * dim;
        gather_heads(qkv + s0 * 3 * dim, bias, n, kw, heads, d, scale, qh, kt, vh);
        attend_heads(qh, kt, vh, n, kw, heads, d, scores, ctx + s0 * dim);
    }
    return quantize(ctx, total, dim, block, q, s);
}
