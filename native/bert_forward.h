/* BERT's int8 encoder stack in one call (bert_forward.c): the steps of bert_steps.h and the
 * engine's matrix products in the order edgeq/models/bert.py's _layers_q8 runs them, so both
 * give the same bits, without the ~50 returns to Python of a six-layer pass (at batch 1 those
 * cost about a tenth of a sentence's time).
 *
 * On packed token rows x (rows, dim) (the embedding sum; the sequences follow each other):
 *   x = LayerNorm(x) -> q8
 *   per layer:  qkv = W_qkv . ;  attention(qkv + b_qkv) per sequence -> q8
 *               y = W_out . ;  y = LayerNorm(y + b_out + x) -> q8
 *               h = W_up . ;  h = GELU(h + b_up) -> q8
 *               x = W_down . ;  x = LayerNorm(x + b_down + y) -> q8 (not after the last layer)
 * Every matrix input of width dim is quantized in blocks of block_dim, of width ffn in blocks
 * of block_ffn; the caller guarantees the engine's int32 accumulator bound for each.
 */
#ifndef EDGEQ_BERT_FORWARD_H
#define EDGEQ_BERT_FORWARD_H

#include <stdint.h>

#include "bert_steps.h"
#include "edgeq_native.h"

/* One matrix: its panels packed once (eq_prepare_q8), else NULL and the engine's view w. */
typedef struct {
    const eq_qmatrix *w;
    const eq_prepared *prepared;
    const float *bias;                  /* (rows,) or NULL */
} eq_bert_dense;

typedef struct {
    eq_bert_dense qkv, out, up, down;   /* (3 dim, dim), (dim, dim), (ffn, dim), (dim, ffn) */
    const float *attn_norm[2];          /* weight, bias (dim,) */
    const float *ffn_norm[2];
} eq_bert_layer;

typedef struct {
    int64_t n_layers, dim, heads, ffn, block_dim, block_ffn;
    float eps;
    const float *embed_norm[2];         /* weight, bias (dim,) */
    const eq_bert_layer *layers;        /* n_layers */
} eq_bert_model;

/* Bytes of scratch eq_bert_forward_q8 needs for `rows` token rows whose longest sequence has
 * `width` tokens; EQ_BERT_EARGS for an inconsistent model. */
int64_t eq_bert_forward_work(const eq_bert_model *m, int64_t rows, int64_t width);

/* Run x (rows, dim), the embedding sums of `batch` sequences (starts, lengths (batch,) within
 * the rows), through the encoder; x becomes the final hidden states. Returns 0 on success,
 * EQ_BERT_EARGS when sizes are inconsistent (nothing is written), EQ_ENOMEM when a matrix
 * product could not get scratch, or 1 when an activation was not finite (the pass stops). */
int eq_bert_forward_q8(const eq_bert_model *m, float *x, int64_t rows, const int64_t *starts,
                       const int64_t *lengths, int64_t batch, void *work, int64_t work_bytes,
                       int32_t threads);

#endif
