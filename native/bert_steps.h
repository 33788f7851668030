/* BERT's fused steps in portable C (bert_steps.c): the work between two matrix products of
 * the int8 forward (edgeq.models.bert, token_states_q8), the same formulas in the same order
 * as written in the Numba steps of edgeq/models/bert_numba_steps.py. Each step ends by
 * quantizing its output for the next matrix product with the engine's activation quantizer
 * (eq_quantize_q8: s = absmax / 127 per block of `block` values, q = rint(v / s)).
 *
 * Token states are packed: the rows of every sequence follow each other, no padding.
 * Arrays are C-contiguous float32; the caller allocates every output and the scratch `work`;
 * nothing is allocated here. Return value: 1 every quantized value was finite, 0 some was
 * not (the codes are then unspecified), EQ_BERT_EARGS (-1) the sizes are inconsistent
 * (nothing is written).
 */
#ifndef EDGEQ_BERT_STEPS_H
#define EDGEQ_BERT_STEPS_H

#include <stdint.h>

#define EQ_BERT_EARGS (-1)

/* Rows of x (rows, n): x = LayerNorm(x + x_bias + residual) * weight + bias in place (x_bias
 * (n,) and residual (rows, n) may be NULL), eps added to the variance; then quantized into
 * q (rows, n), s (rows, n/block), unless block is 0 (returns 1). */
int eq_bert_layer_norm_q8(float *x, const float *x_bias, const float *residual, int64_t rows,
                          int64_t n, const float *weight, const float *bias, float eps,
                          int64_t block, int8_t *q, float *s);

/* h (rows, n) = GELU(h + bias) in place (exact GELU, erf by a rational function), then
 * quantized into q (rows, n), s (rows, n/block). */
int eq_bert_gelu_q8(float *h, const float *bias, int64_t rows, int64_t n, int64_t block,
                    int8_t *q, float *s);

/* Floats of scratch eq_bert_attention_q8 needs for sequences of at most `width` tokens. */
int64_t eq_bert_attention_work(int64_t width, int64_t heads, int64_t dim);

/* Packed qkv (total, 3*dim) + bias (3*dim,) (NULL: none) -> multi-head attention of each
 * sequence (starts, lengths (batch,)) over its own tokens -> ctx (total, dim), then quantized
 * into q (total, dim), s (total, dim/block). work: eq_bert_attention_work(longest, ...). */
int eq_bert_attention_q8(const float *qkv, const float *bias, const int64_t *starts,
                         const int64_t *lengths, int64_t batch, int64_t total, int64_t heads,
                         int64_t dim, float *ctx, int64_t block, int8_t *q, float *s,
                         float *work, int64_t work_len);

#endif
