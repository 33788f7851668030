/* The llama decoder's forward pass in one call (declared and specified in llama_forward.h). */
#include <stdatomic.h>
#include <string.h>

#include "carve.h"
#include "llama_forward.h"
#include "steps.h"

/* ---- scratch ----------------------------------------------------------------------------- */

/* Where each buffer of a pass starts in the caller's scratch, every one 64-byte aligned. */
typedef struct {
    size_t qkv, o, gate_up, delta, row, attn, xq_d, xs_d, xq_q, xs_q, xq_f, xs_f, total;
    int64_t attn_floats;
} forward_layout;

static forward_layout layout_of(const eq_llama_model *m, int64_t rows, int64_t end)
{
    int64_t d = m->dim, qw = m->n_heads * m->head_dim, kvw = m->n_kv * m->head_dim,
            f = m->ffn_dim, fl = (int64_t)sizeof(float),
            swiglu = eq_step_swiglu_work(f, m->ffn_signs, m->ffn_mix, m->ffn_mix_n),
            widest = d > swiglu ? d : swiglu;   /* the steps' one-row scratch */
    forward_layout l;
    size_t at = 0;
    l.attn_floats = eq_step_attend_work(rows, m->n_heads, m->n_kv, m->head_dim, end);
    l.qkv = eq_carve(&at, rows * (qw + 2 * kvw) * fl);
    l.o = eq_carve(&at, rows * d * fl);
    l.gate_up = eq_carve(&at, rows * 2 * f * fl);
    l.delta = eq_carve(&at, rows * d * fl);
    l.row = eq_carve(&at, widest * fl);
    l.attn = eq_carve(&at, l.attn_floats * fl);
    l.xq_d = eq_carve(&at, rows * d);
    l.xs_d = eq_carve(&at, rows * (d / m->block_dim) * fl);
    l.xq_q = eq_carve(&at, rows * qw);
    l.xs_q = eq_carve(&at, rows * (qw / m->block_q) * fl);
    l.xq_f = eq_carve(&at, rows * f);
    l.xs_f = eq_carve(&at, rows * (f / m->block_ffn) * fl);
    l.total = at + EQ_CARVE_SLACK;
    return l;
}

/* ---- argument checks --------------------------------------------------------------------- */

static int matrix_is(const eq_qmatrix *w, int64_t rows, int64_t k)
{
    return w && w->rows == rows && w->k == k;
}

/* A projection group: one fused matrix of sum(widths) rows, or one matrix per width. */
static int group_is(const eq_qmatrix *const *ws, int parts, const int64_t *widths, int64_t k)
{
    if (!ws[1]) {
        int64_t total = 0;
        for (int i = 0; i < parts; i++)
            total += widths[i];
        for (int i = 2; i < parts; i++)
            if (ws[i]) return 0;
        return matrix_is(ws[0], total, k);
    }
    for (int i = 0; i < parts; i++)
        if (!matrix_is(ws[i], widths[i], k)) return 0;
    return 1;
}

static int valid_model(const eq_llama_model *m)
{
    if (!m || !m->blocks || !m->output_norm || m->n_layers <= 0 || m->dim <= 0 ||
        m->n_heads <= 0 || m->n_kv <= 0 || m->n_heads % m->n_kv || m->head_dim <= 0 ||
        m->ffn_dim <= 0 || m->rope_dim < 0 || m->rope_dim % 2 || m->rope_dim > m->head_dim ||
        m->block_dim <= 0 || m->block_q <= 0 || m->block_ffn <= 0 ||
        eq_step_swiglu_work(m->ffn_dim, m->ffn_signs, m->ffn_mix, m->ffn_mix_n) < 0)
        return 0;
    int64_t d = m->dim, qw = m->n_heads * m->head_dim, kvw = m->n_kv * m->head_dim,
            f = m->ffn_dim;
    if (d % m->block_dim || qw % m->block_q || f % m->block_ffn || !m->output ||
        m->output->k != d)
        return 0;
    const int64_t qkv_widths[3] = {qw, kvw, kvw}, gate_up_widths[2] = {f, f};
    for (int64_t i = 0; i < m->n_layers; i++) {
        const eq_llama_block *b = m->blocks + i;
        if (!b->attn_norm || !b->ffn_norm || !group_is(b->qkv, 3, qkv_widths, d) ||
            !group_is(b->gate_up, 2, gate_up_widths, d) || !matrix_is(b->wo, d, qw) ||
            !matrix_is(b->down, d, f))
            return 0;
    }
    return 1;
}

int64_t eq_llama_forward_work(const eq_llama_model *m, int64_t rows, int64_t end)
{
    if (!valid_model(m) || rows <= 0 || end < rows)
        return EQ_STEP_EARGS;
    return (int64_t)layout_of(m, rows, end).total;
}

/* ---- the pass ---------------------------------------------------------------------------- */

/* ---- decoding: the GEMVs of a projection group in one parallel region --------------------- */

/* Rows per chunk of a group's GEMVs: a multiple of 8 (the kernels combine eight rows at once)
 * and about four chunks per thread, so small matrices (k and v: 192 rows in SmolLM2) are
 * shared too and the group costs one fork and join instead of one per matrix. */
#define GROUP_ROW_ALIGN 8
#define GROUP_CHUNKS_PER_THREAD 4

typedef struct {
    const eq_qmatrix *const *ws;
    int parts;
    const int8_t *xq;
    const float *xs;
    int64_t block;
    float *out;               /* the parts' outputs one after another */
    _Atomic int status;       /* the first failure of any chunk */
} group_task;

/* Rows [begin, end) of the group's rows counted across its parts, on one thread: each part's
 * share as a matrix of its own (eq_qmatrix_rows; the sums do not depend on the split). */
static void group_rows(void *ctx, int64_t begin, int64_t end)
{
    group_task *g = ctx;
    for (int i = 0, lo = 0; i < g->parts && lo < end; lo += (int)g->ws[i]->rows, i++) {
        int64_t hi = lo + g->ws[i]->rows, r0 = begin > lo ? begin : lo, r1 = end < hi ? end : hi;
        if (r0 >= r1)
            continue;
        eq_qmatrix view = eq_qmatrix_rows(g->ws[i], r0 - lo, r1 - r0);
        int status = eq_gemm_q8(&view, g->xq, g->xs, 1, g->block, g->out + r0, 1);
        if (status != EQ_OK)
            g->status = status;
    }
}

static int gemv_group(const eq_qmatrix *const *ws, int parts, const int8_t *xq, const float *xs,
                      int64_t block, float *out, int32_t threads)
{
    int64_t total = 0;
    for (int i = 0; i < parts; i++)
        total += ws[i]->rows;
    int64_t chunk = total / ((int64_t)threads * GROUP_CHUNKS_PER_THREAD);
    chunk = (chunk + GROUP_ROW_ALIGN - 1) / GROUP_ROW_ALIGN * GROUP_ROW_ALIGN;
    group_task task = {ws, parts, xq, xs, block, out, EQ_OK};
    eq_parallel_for(group_rows, &task, total, chunk > 0 ? chunk : GROUP_ROW_ALIGN, threads);
    return task.status;
}

/* A projection group's outputs, written into out: part[i] with row stride stride[i]. */
static int project(const eq_qmatrix *const *ws, int parts, const int64_t *widths,
                   const int8_t *xq, const float *xs, int64_t rows, int64_t block, float *out,
                   float **part, int64_t *stride, int32_t threads)
{
    if (!ws[1]) {   /* fused: the outputs side by side in each row */
        int64_t total = 0;
        for (int i = 0; i < parts; i++)
            total += widths[i];
        for (int i = 0, at = 0; i < parts; at += (int)widths[i], i++) {
            part[i] = out + at;
            stride[i] = total;
        }
        return eq_gemm_q8(ws[0], xq, xs, rows, block, out, threads);
    }
    float *at = out;
    for (int i = 0; i < parts; i++) {
        part[i] = at;
        stride[i] = widths[i];
        at += rows * widths[i];
    }
    if (rows == 1 && threads > 1)
        return gemv_group(ws, parts, xq, xs, block, out, threads);
    for (int i = 0; i < parts; i++) {
        int status = eq_gemm_q8(ws[i], xq, xs, rows, block, part[i], threads);
        if (status != EQ_OK)
            return status;
    }
    return EQ_OK;
}

/* 1 + 4 * layer + step for a step that met a non-finite value; a step's argument error. */
#define STEP(call, layer, step)                                                          \
    do {                                                                                 \
        int step_status = (call);                                                        \
        if (step_status != 1)                                                            \
            return step_status == 0 ? (int)(1 + 4 * (layer) + (step)) : step_status;      \
    } while (0)
#define MATMUL(call)                                                                     \
    do {                                                                                 \
        int matmul_status = (call);                                                      \
        if (matmul_status != EQ_OK)                                                      \
            return matmul_status;                                                        \
    } while (0)

int eq_llama_forward(const eq_llama_model *m, const eq_llama_cache *cache, float *x,
                     int64_t rows, int64_t start, const float *cos, const float *sin,
                     int64_t out_rows, float *logits, void *work, int64_t work_bytes,
                     int32_t threads)
{
    int64_t end = start + rows;
    if (!valid_model(m) || !cache || !cache->keys || !cache->values || !x || !cos || !sin ||
        !logits || !work || rows <= 0 || start < 0 || out_rows <= 0 || out_rows > rows ||
        cache->key_block <= 0 || end > cache->capacity ||
        end > cache->n_blocks * cache->key_block)
        return EQ_STEP_EARGS;
    forward_layout l = layout_of(m, rows, end);
    if (work_bytes < (int64_t)l.total)
        return EQ_STEP_EARGS;
    uint8_t *base = eq_carve_base(work);
    float *qkv = (float *)(base + l.qkv), *o = (float *)(base + l.o),
          *gate_up = (float *)(base + l.gate_up), *delta = (float *)(base + l.delta),
          *row = (float *)(base + l.row), *attn = (float *)(base + l.attn);
    int8_t *xq_d = (int8_t *)(base + l.xq_d), *xq_q = (int8_t *)(base + l.xq_q),
           *xq_f = (int8_t *)(base + l.xq_f);
    float *xs_d = (float *)(base + l.xs_d), *xs_q = (float *)(base + l.xs_q),
          *xs_f = (float *)(base + l.xs_f);

    int64_t d = m->dim, hd = m->head_dim, qw = m->n_heads * hd, kvw = m->n_kv * hd,
            f = m->ffn_dim, bd = m->block_dim, bq = m->block_q, bf = m->block_ffn;
    const int64_t qkv_widths[3] = {qw, kvw, kvw}, gate_up_widths[2] = {f, f};
    int64_t key_layer = m->n_kv * cache->n_blocks * hd * cache->key_block,
            value_layer = m->n_kv * cache->capacity * hd;
    float *part[3];
    int64_t stride[3];
    for (int64_t i = 0; i < m->n_layers; i++) {
        /* hot loop: one block per iteration, the steps of _forward_steps in its order */
        const eq_llama_block *b = m->blocks + i;
        STEP(eq_step_norm_quantize(x, i ? delta : NULL, rows, d, b->attn_norm, m->eps, bd, xq_d,
                                   xs_d, row), i, 0);
        MATMUL(project(b->qkv, 3, qkv_widths, xq_d, xs_d, rows, bd, qkv, part, stride, threads));
        if (b->qkv_bias)
            for (int p = 0, at = 0; p < 3; at += (int)qkv_widths[p], p++)
                for (int64_t t = 0; t < rows; t++)
                    for (int64_t j = 0; j < qkv_widths[p]; j++)
                        part[p][t * stride[p] + j] += b->qkv_bias[at + j];
        STEP(eq_step_attend_quantize(part[0], stride[0], part[1], stride[1], part[2], stride[2],
                                     rows, m->n_heads, m->n_kv, hd, start, cos, sin, m->rope_dim,
                                     m->neox, m->attn_scale, cache->keys + i * key_layer,
                                     cache->n_blocks, cache->key_block,
                                     cache->values + i * value_layer, cache->capacity, bq, xq_q,
                                     xs_q, attn, l.attn_floats, threads), i, 1);
        MATMUL(eq_gemm_q8(b->wo, xq_q, xs_q, rows, bq, o, threads));
        STEP(eq_step_norm_quantize(x, o, rows, d, b->ffn_norm, m->eps, bd, xq_d, xs_d, row), i, 2);
        MATMUL(project(b->gate_up, 2, gate_up_widths, xq_d, xs_d, rows, bd, gate_up, part,
                       stride, threads));
        STEP(eq_step_swiglu_quantize(part[0], stride[0], part[1], stride[1], rows, f, bf,
                                     m->ffn_signs, m->ffn_mix, m->ffn_mix_n, xq_f, xs_f, row),
             i, 3);
        MATMUL(eq_gemm_q8(b->down, xq_f, xs_f, rows, bf, delta, threads));
    }
    int64_t r0 = rows - out_rows;
    const float *last = delta + r0 * d;
    if (m->unrotation) {
        eq_step_unrotate(x + r0 * d, last, out_rows, d, m->unrotation, row);
        last = NULL;
    }
    STEP(eq_step_norm_quantize(x + r0 * d, last, out_rows, d, m->output_norm, m->eps, bd,
                               xq_d + r0 * d, xs_d + r0 * (d / bd), row), m->n_layers, 0);
    MATMUL(eq_gemm_q8(m->output, xq_d + r0 * d, xs_d + r0 * (d / bd), out_rows, bd, logits,
                      threads));
    return EQ_OK;
}
