/* BERT's int8 encoder stack in one call (declared and specified in bert_forward.h). */
#include "bert_forward.h"
#include "carve.h"

/* Where each buffer of a pass starts in the caller's scratch, every one 64-byte aligned. */
typedef struct {
    size_t y, qkv, ctx, h, q, s, qf, sf, attn, total;
    int64_t attn_floats;
} forward_layout;

static forward_layout layout_of(const eq_bert_model *m, int64_t rows, int64_t width)
{
    int64_t d = m->dim, f = m->ffn, fl = (int64_t)sizeof(float);
    forward_layout l;
    size_t at = 0;
    l.attn_floats = eq_bert_attention_work(width, m->heads, d);
    l.y = eq_carve(&at, rows * d * fl);
    l.qkv = eq_carve(&at, rows * 3 * d * fl);
    l.ctx = eq_carve(&at, rows * d * fl);
    l.h = eq_carve(&at, rows * f * fl);
    l.q = eq_carve(&at, rows * d);
    l.s = eq_carve(&at, rows * (d / m->block_dim) * fl);
    l.qf = eq_carve(&at, rows * f);
    l.sf = eq_carve(&at, rows * (f / m->block_ffn) * fl);
    l.attn = eq_carve(&at, l.attn_floats * fl);
    l.total = at + EQ_CARVE_SLACK;
    return l;
}

/* A dense layer of `rows` outputs over inputs of width k quantized in blocks of `block`. */
static int dense_is(const eq_bert_dense *a, int64_t rows, int64_t k, int64_t block)
{
    const eq_qmatrix *w = a->prepared ? eq_prepared_matrix(a->prepared) : a->w;
    return w && w->rows == rows && w->k == k && (!a->prepared || eq_prepared_block(a->prepared) == block);
}

static int valid_model(const eq_bert_model *m)
{
    if (!m || !m->layers || !m->embed_norm[0] || !m->embed_norm[1] || m->n_layers <= 0 ||
        m->dim <= 0 || m->heads <= 0 || m->dim % m->heads || m->ffn <= 0 ||
        m->block_dim <= 0 || m->dim % m->block_dim || m->block_ffn <= 0 || m->ffn % m->block_ffn)
        return 0;
    int64_t d = m->dim, f = m->ffn, bd = m->block_dim;
    for (int64_t i = 0; i < m->n_layers; i++) {
        const eq_bert_layer *l = m->layers + i;
        if (!dense_is(&l->qkv, 3 * d, d, bd) || !dense_is(&l->out, d, d, bd) ||
            !dense_is(&l->up, f, d, bd) || !dense_is(&l->down, d, f, m->block_ffn) ||
            !l->attn_norm[0] || !l->attn_norm[1] || !l->ffn_norm[0] || !l->ffn_norm[1])
            return 0;
    }
    return 1;
}

int64_t eq_bert_forward_work(const eq_bert_model *m, int64_t rows, int64_t width)
{
    if (!valid_model(m) || rows <= 0 || width <= 0 || width > rows)
        return EQ_BERT_EARGS;
    return (int64_t)layout_of(m, rows, width).total;
}

static int dense_q8(const eq_bert_dense *a, const int8_t *q, const float *s, int64_t rows,
                    int64_t block, float *out, int32_t threads)
{
    return a->prepared ? eq_gemm_prepared_q8(a->prepared, q, s, rows, out, threads)
                       : eq_gemm_q8(a->w, q, s, rows, block, out, threads);
}

/* Stop the pass on a failed product (its status) or a non-finite activation (1). */
#define PRODUCT(call) do { int status_ = (call); if (status_ != EQ_OK) return status_; } while (0)
#define STEP(call) do { int status_ = (call); if (status_ != 1) return status_ < 0 ? status_ : 1; } while (0)

int eq_bert_forward_q8(const eq_bert_model *m, float *x, int64_t rows, const int64_t *starts,
                       const int64_t *lengths, int64_t batch, void *work, int64_t work_bytes,
                       int32_t threads)
{
    if (!x || !starts || !lengths || !work || batch <= 0)
        return EQ_BERT_EARGS;
    int64_t width = 0;
    for (int64_t b = 0; b < batch; b++) {
        if (starts[b] < 0 || lengths[b] <= 0 || starts[b] > rows - lengths[b])
            return EQ_BERT_EARGS;
        width = lengths[b] > width ? lengths[b] : width;
    }
    int64_t need = eq_bert_forward_work(m, rows, width);
    if (need < 0 || work_bytes < need)
        return EQ_BERT_EARGS;
    uint8_t *base = eq_carve_base(work);
    forward_layout l = layout_of(m, rows, width);
    float *y = (float *)(base + l.y), *qkv = (float *)(base + l.qkv),
          *ctx = (float *)(base + l.ctx), *h = (float *)(base + l.h),
          *s = (float *)(base + l.s), *sf = (float *)(base + l.sf),
          *attn = (float *)(base + l.attn);
    int8_t *q = (int8_t *)(base + l.q), *qf = (int8_t *)(base + l.qf);
    const int64_t d = m->dim, f = m->ffn, bd = m->block_dim, bf = m->block_ffn;

    STEP(eq_bert_layer_norm_q8(x, NULL, NULL, rows, d, m->embed_norm[0], m->embed_norm[1],
                               m->eps, bd, q, s));
    for (int64_t i = 0; i < m->n_layers; i++) {
        const eq_bert_layer *a = m->layers + i;
        PRODUCT(dense_q8(&a->qkv, q, s, rows, bd, qkv, threads));
        STEP(eq_bert_attention_q8(qkv, a->qkv.bias, starts, lengths, batch, rows, m->heads, d,
                                  ctx, bd, q, s, attn, l.attn_floats));
        PRODUCT(dense_q8(&a->out, q, s, rows, bd, y, threads));
        STEP(eq_bert_layer_norm_q8(y, a->out.bias, x, rows, d, a->attn_norm[0], a->attn_norm[1],
                                   m->eps, bd, q, s));
        PRODUCT(dense_q8(&a->up, q, s, rows, bd, h, threads));
        STEP(eq_bert_gelu_q8(h, a->up.bias, rows, f, bf, qf, sf));
        PRODUCT(dense_q8(&a->down, qf, sf, rows, bf, x, threads));
        STEP(eq_bert_layer_norm_q8(x, a->down.bias, y, rows, d, a->ffn_norm[0], a->ffn_norm[1],
                                   m->eps, i + 1 < m->n_layers ? bd : 0, q, s));
    }
    return 0;
}
