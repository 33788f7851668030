/* The portable driver: row loops, scales, threads and the public kernels.
 *
 * For each weight row (threads split the rows): decode the row once into u bytes with the
 * selected SIMD decoder, then for each activation row take the per-sub-block dot products
 * with the SIMD dot and combine them with the offsets and scales here, in plain C.
 * The combine is the same code for every variant, so all variants return the same bits.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq_native.h"

/* Rough multiply-adds one thread should get before a second one pays for its start-up
 * (the test driver builds with 1, so even its tiny cases exercise the thread split). */
#ifndef EQ_WORK_PER_THREAD
#define EQ_WORK_PER_THREAD (1 << 20)
#endif
#define MAX_THREADS 64
#define PARTIALS 8 /* float partial sums per dot: fixed, so the order never depends on the CPU */

/* First member of every job: the rows one thread handles and its result. */
typedef struct {
    int64_t row_begin, row_end;
    int status;
} span;

typedef struct {
    span span;
    const eq_qmatrix *w;
    const eq_simd_table *t;
    const int8_t *xq;      /* (m, k) */
    int64_t m;
    int64_t fine;          /* granularity of the dot products: sub, or gcd(sub, zero group) */
    int64_t sub;
    int64_t nfine, nsub;
    const int32_t *xsum;   /* (m, nfine) sum of q per fine block */
    const float *xs_sub;   /* matmul: (m, nsub) activation scale of each sub-block */
    int32_t *isums;        /* block_sums out: (m, rows, nsub), else NULL */
    float *y;              /* matmul out: (m, rows), else NULL */
} row_job;

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

static int32_t kind_mult(int kind) { return kind == EQ_BINARY ? 2 : 1; }

static int32_t kind_offset(int kind)
{
    switch (kind) {
    case EQ_INT8: return EQ_OFFSET_INT8;
    case EQ_INT4: return EQ_OFFSET_INT4;
    case EQ_TERNARY_2BIT:
    case EQ_TERNARY_BASE3: return EQ_OFFSET_TERNARY;
    case EQ_BINARY: return EQ_OFFSET_BINARY;
    case EQ_POW2: return EQ_OFFSET_POW2;
    default: return 0;  /* int4_asym; int8_asym uses its zero points */
    }
}

/* Decoded bytes above 128 need the exact widening path on ISAs whose byte product saturates. */
static int kind_wide(int kind) { return kind == EQ_INT8 || kind == EQ_INT8_ASYM; }

static int64_t ngroups(const eq_qmatrix *w) { return w->k / w->scale_block; }

/* Weight scales (or mins) of row r as float32, one per group. */
static void row_scales(const eq_qmatrix *w, const eq_simd_table *t, const void *base, int64_t r,
                       float *out)
{
    int64_t g = ngroups(w);
    int64_t sr = w->scale_rows == 1 ? 0 : r;
    if (w->scale_f16)
        t->halves_to_float((const uint16_t *)base + sr * g, g, out);
    else
        memcpy(out, (const float *)base + sr * g, (size_t)g * sizeof(float));
}

/* Repeat one value per group as one value per block of `block` codes. */
static void expand_floats(const float *per_group, int64_t groups, int64_t per, float *out)
{
    for (int64_t g = 0; g < groups; g++)
        for (int64_t i = 0; i < per; i++)
            *out++ = per_group[g];
}

/* Offsets of the fine blocks of row r: a constant, or int8_asym's zero points. */
static void fine_offsets(const eq_qmatrix *w, int64_t r, int64_t fine, int64_t nfine,
                         int32_t *out)
{
    if (w->kind != EQ_INT8_ASYM) {
        int32_t off = kind_offset(w->kind);
        for (int64_t t = 0; t < nfine; t++)
            out[t] = off;
        return;
    }
    const uint8_t *z = w->zeros + (w->scale_rows == 1 ? 0 : r) * ngroups(w);
    int64_t per = w->scale_block / fine;
    for (int64_t t = 0; t < nfine; t++)
        out[t] = z[t / per];
}

/* isum = mult * raw - offset * sum(q) per block; off NULL: the constant off_c. */
static void combine_ints(const int32_t *restrict raw, const int32_t *restrict off, int32_t off_c,
                         const int32_t *restrict xsum, int32_t mult, int64_t n,
                         uint32_t *restrict isum)
{
    if (off)
        for (int64_t s = 0; s < n; s++)
            isum[s] = (uint32_t)mult * (uint32_t)raw[s] - (uint32_t)off[s] * (uint32_t)xsum[s];
    else
        for (int64_t s = 0; s < n; s++)
            isum[s] = (uint32_t)mult * (uint32_t)raw[s] - (uint32_t)off_c * (uint32_t)xsum[s];
}

/* sum_s float(v[s]) * (xs[s] * ws[s]) in PARTIALS interleaved float32 partial sums, added
 * in a fixed order: the same bits on every CPU (no FMA: -ffp-contract=off). */
static float scaled_sum(const int32_t *restrict v, const float *restrict xs,
                        const float *restrict ws, int64_t n)
{
    float part[PARTIALS] = {0};
    int64_t s = 0;
    for (; s + PARTIALS <= n; s += PARTIALS)
        for (int p = 0; p < PARTIALS; p++)
            part[p] += (float)v[s + p] * (xs[s + p] * ws[s + p]);
    for (int p = 0; s < n; s++, p++)
        part[p] += (float)v[s] * (xs[s] * ws[s]);
    float y = 0.0f;
    for (int p = 0; p < PARTIALS; p++)
        y += part[p];
    return y;
}

static void run_rows(row_job *job)
{
    const eq_qmatrix *w = job->w;
    const eq_simd_table *t = job->t;
    int64_t k = w->k, nfine = job->nfine, nsub = job->nsub, groups = ngroups(w);
    int64_t per_sub = job->sub / job->fine;
    int32_t mult = kind_mult(w->kind);
    int wide = kind_wide(w->kind);
    int matmul = job->y != NULL;

    /* u is padded so SIMD decoders may write whole vectors past k */
    uint8_t *u = malloc((size_t)k + 64);
    int32_t *raw = malloc((size_t)nfine * sizeof(int32_t));
    int32_t *off = malloc((size_t)nfine * sizeof(int32_t));
    uint32_t *isum = malloc((size_t)nsub * sizeof(uint32_t));
    float *wsg = malloc((size_t)groups * 2 * sizeof(float));
    float *ws_sub = malloc((size_t)nsub * 2 * sizeof(float));
    if (!u || !raw || !off || !isum || !wsg || !ws_sub) {
        job->span.status = EQ_ENOMEM;
        goto done;
    }
    float *wm_sub = ws_sub + nsub;

    for (int64_t r = job->span.row_begin; r < job->span.row_end; r++) {
        t->decode[w->kind](w->codes + r * w->row_bytes, k, w->pack_group, u);
        if (w->kind == EQ_INT8_ASYM || per_sub != 1)
            fine_offsets(w, r, job->fine, nfine, off);
        if (matmul) {
            row_scales(w, t, w->scales, r, wsg);
            expand_floats(wsg, groups, w->scale_block / job->sub, ws_sub);
            if (w->mins) {
                row_scales(w, t, w->mins, r, wsg + groups);
                expand_floats(wsg + groups, groups, w->scale_block / job->sub, wm_sub);
            }
        }
        for (int64_t i = 0; i < job->m; i++) {
            const int32_t *xsum = job->xsum + i * nfine;
            t->dot(u, job->xq + i * k, k, job->fine, xsum, wide, raw);
            /* hot loop: isum = mult * raw - offset * sum(q), wrapping like int32 */
            if (per_sub == 1)
                combine_ints(raw, w->kind == EQ_INT8_ASYM ? off : NULL, kind_offset(w->kind), xsum,
                             mult, nsub, isum);
            else
                for (int64_t s = 0; s < nsub; s++) {
                    uint32_t acc = 0;
                    for (int64_t f = s * per_sub; f < (s + 1) * per_sub; f++)
                        acc += (uint32_t)mult * (uint32_t)raw[f] - (uint32_t)off[f] * (uint32_t)xsum[f];
                    isum[s] = acc;
                }
            if (!matmul) {
                int32_t *dst = job->isums + (i * w->rows + r) * nsub;
                for (int64_t s = 0; s < nsub; s++)
                    dst[s] = (int32_t)isum[s];
                continue;
            }
            const float *xs = job->xs_sub + i * nsub;
            float y = scaled_sum((const int32_t *)isum, xs, ws_sub, nsub);
            /* scale-min layouts: + sum(q) * (m * xs); here fine == sub */
            float ym = w->mins ? scaled_sum(xsum, xs, wm_sub, nsub) : 0.0f;
            job->y[i * w->rows + r] = y + ym;
        }
    }
done:
    free(u);
    free(raw);
    free(off);
    free(isum);
    free(wsg);
    free(ws_sub);
}

static void *run_rows_thread(void *arg)
{
    run_rows((row_job *)arg);
    return NULL;
}

/* Threads worth starting for `work` multiply-adds over `rows` rows. */
static int32_t thread_count(int32_t requested, int64_t rows, int64_t work)
{
    int64_t n = work / EQ_WORK_PER_THREAD;
    if (n > requested) n = requested;
    if (n > MAX_THREADS) n = MAX_THREADS;
    if (n > rows) n = rows;
    return n < 1 ? 1 : (int32_t)n;
}

/* Split rows over threads (jobs: an array of structs starting with a span), run fn on each
 * part and return the first error. A thread that cannot start runs here instead. */
static int run_split(void *jobs, size_t job_size, int32_t nthreads, int64_t rows,
                     void *(*fn)(void *))
{
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int32_t p = 0; p < nthreads; p++) {
        span *sp = (span *)((char *)jobs + (size_t)p * job_size);
        sp->row_begin = rows * p / nthreads;
        sp->row_end = rows * (p + 1) / nthreads;
        sp->status = EQ_OK;
    }
    for (int32_t p = 1; p < nthreads; p++) {
        void *job = (char *)jobs + (size_t)p * job_size;
        if (pthread_create(&tid[p], NULL, fn, job) == 0)
            started[p] = 1;
        else
            fn(job);
    }
    fn(jobs);
    int status = EQ_OK;
    for (int32_t p = 0; p < nthreads; p++) {
        if (p > 0 && started[p])
            pthread_join(tid[p], NULL);
        span *sp = (span *)((char *)jobs + (size_t)p * job_size);
        if (sp->status != EQ_OK && status == EQ_OK)
            status = sp->status;
    }
    return status;
}

/* Argument checks: the Python side validates first; these keep the C entry points safe. */
static int valid_matrix(const eq_qmatrix *w)
{
    if (!w || w->kind < 0 || w->kind >= EQ_NKINDS || w->rows <= 0 || w->k <= 0 || !w->codes ||
        w->scale_block <= 0 || w->k % w->scale_block || w->pack_group <= 0 ||
        w->k % w->pack_group || (w->scale_rows != 1 && w->scale_rows != w->rows))
        return 0;
    if (w->kind == EQ_INT4_ASYM && !w->mins) return 0;
    if (w->kind == EQ_INT8_ASYM && !w->zeros) return 0;
    return 1;
}

static int run_sums(const eq_qmatrix *w, const int8_t *xq, int64_t m, int64_t sub,
                    const float *xs, int64_t act_block, int32_t *isums, float *y, int32_t threads)
{
    if (!valid_matrix(w) || !xq || m <= 0 || sub <= 0 || w->k % sub)
        return EQ_EINVAL;
    int64_t k = w->k;
    int64_t fine = w->kind == EQ_INT8_ASYM ? gcd64(sub, w->scale_block) : sub;
    if (y && (!w->scales || !xs || act_block <= 0 || k % act_block || act_block % sub ||
              w->scale_block % sub))
        return EQ_EINVAL;
    int64_t nfine = k / fine, nsub = k / sub;
    const eq_simd_table *t = eq_simd();
    int32_t *xsum = malloc((size_t)(m * nfine) * sizeof(int32_t));
    float *xs_sub = y ? malloc((size_t)(m * nsub) * sizeof(float)) : NULL;
    int32_t nthreads = thread_count(threads < 1 ? 1 : threads, w->rows, w->rows * k * m);
    row_job *jobs = calloc((size_t)nthreads, sizeof(row_job));
    int status = EQ_ENOMEM;
    if (!xsum || (y && !xs_sub) || !jobs)
        goto done;
    for (int64_t i = 0; i < m * nfine; i++) {
        uint32_t acc = 0;
        for (int64_t j = 0; j < fine; j++)
            acc += (uint32_t)(int32_t)xq[i * fine + j];
        xsum[i] = (int32_t)acc;
    }
    if (y)
        for (int64_t i = 0; i < m; i++)
            expand_floats(xs + i * (k / act_block), k / act_block, act_block / sub,
                          xs_sub + i * nsub);
    for (int32_t p = 0; p < nthreads; p++)
        jobs[p] = (row_job){.w = w, .t = t, .xq = xq, .m = m, .fine = fine, .sub = sub,
                            .nfine = nfine, .nsub = nsub, .xsum = xsum, .xs_sub = xs_sub,
                            .isums = isums, .y = y};
    status = run_split(jobs, sizeof(row_job), nthreads, w->rows, run_rows_thread);
done:
    free(xsum);
    free(xs_sub);
    free(jobs);
    return status;
}

/* ---- public kernels ------------------------------------------------------------------------ */

int eq_quantize_q8(const float *x, int64_t m, int64_t k, int64_t block, int8_t *q, float *scales)
{
    if (!x || !q || !scales || m <= 0 || k <= 0 || block <= 0 || k % block)
        return EQ_EINVAL;
    const eq_simd_table *t = eq_simd();
    for (int64_t b = 0; b < m * (k / block); b++)
        t->quantize_block(x + b * block, block, q + b * block, scales + b);
    return EQ_OK;
}

#define EQ_DEFINE_KIND(name, KIND)                                                             \
    int eq_block_sums_##name##_q8(const eq_qmatrix *w, const int8_t *xq, int64_t m,           \
                                  int64_t sub, int32_t *out, int32_t threads)                  \
    {                                                                                          \
        if (!w || w->kind != KIND || !out) return EQ_EINVAL;                                   \
        return run_sums(w, xq, m, sub, NULL, 0, out, NULL, threads);                           \
    }                                                                                          \
    int eq_gemm_##name##_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs, int64_t m, \
                            int64_t act_block, float *out, int32_t threads)                    \
    {                                                                                          \
        if (!w || w->kind != KIND || !out || act_block <= 0) return EQ_EINVAL;                 \
        return run_sums(w, xq, m, gcd64(w->scale_block, act_block), xs, act_block, NULL, out,  \
                        threads);                                                              \
    }                                                                                          \
    int eq_vec_dot_##name##_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs,        \
                               int64_t act_block, float *out, int32_t threads)                \
    {                                                                                          \
        return eq_gemm_##name##_q8(w, xq, xs, 1, act_block, out, threads);                     \
    }
EQ_DEFINE_KIND(int8, EQ_INT8)
EQ_DEFINE_KIND(int8_asym, EQ_INT8_ASYM)
EQ_DEFINE_KIND(int4, EQ_INT4)
EQ_DEFINE_KIND(int4_asym, EQ_INT4_ASYM)
EQ_DEFINE_KIND(ternary_2bit, EQ_TERNARY_2BIT)
EQ_DEFINE_KIND(ternary_base3, EQ_TERNARY_BASE3)
EQ_DEFINE_KIND(binary, EQ_BINARY)
EQ_DEFINE_KIND(pow2, EQ_POW2)

typedef struct {
    span span;
    const uint8_t *w, *x;
    int64_t n, m, kb, k;
    int32_t *out;
    eq_popxor_fn popxor;
} xnor_job;

static void *run_xnor(void *arg)
{
    xnor_job *job = arg;
    for (int64_t r = job->span.row_begin; r < job->span.row_end; r++)
        for (int64_t i = 0; i < job->m; i++) {
            uint64_t pop = job->popxor(job->w + r * job->kb, job->x + i * job->kb, job->kb);
            job->out[i * job->n + r] = (int32_t)(uint32_t)((uint64_t)job->k - 2 * pop);
        }
    return NULL;
}

int eq_xnor_gemm_binary(const uint8_t *w, int64_t n, const uint8_t *x, int64_t m, int64_t kb,
                        int64_t k, int32_t *out, int32_t threads)
{
    if (!w || !x || !out || n <= 0 || m <= 0 || kb <= 0 || k < 0)
        return EQ_EINVAL;
    int32_t nthreads = thread_count(threads < 1 ? 1 : threads, n, n * m * kb);
    xnor_job jobs[MAX_THREADS];
    for (int32_t p = 0; p < nthreads; p++)
        jobs[p] = (xnor_job){.w = w, .x = x, .n = n, .m = m, .kb = kb, .k = k, .out = out,
                             .popxor = eq_simd()->popcount_xor};
    return run_split(jobs, sizeof(xnor_job), nthreads, n, run_xnor);
}

size_t eq_qmatrix_size(void) { return sizeof(eq_qmatrix); }
