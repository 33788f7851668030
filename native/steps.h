/* The llama decoder's fused steps in portable C (steps.c): the work between two matrix
 * products, the same formulas in the same order as the Numba steps of
 * edgeq/models/llama_steps.py, so both give the same bits.
 *
 * Arrays are C-contiguous float32 unless a row stride (in elements) is given; the caller
 * allocates every output and the scratch `work`; nothing is allocated here. Return value:
 * 1 every quantized value was finite, 0 some was not (the codes are then unspecified),
 * EQ_STEP_EARGS (-1) the sizes are inconsistent (nothing is written).
 */
#ifndef EDGEQ_STEPS_H
#define EDGEQ_STEPS_H

#include <stdint.h>

#define EQ_STEP_EARGS (-1)

/* float32 -> binary16 bits, rounded to nearest even (inf above the largest half, NaN stays
 * NaN), as the KV cache stores keys and values. */
void eq_floats_to_halves(const float *x, int64_t n, uint16_t *out);

/* h (k,) -> q int8 (k,), scales (k/block,): s = absmax / 127, q = rint(h / s) half to even,
 * clipped to [-127, 127]; an all-zero block gives s = 0, q = 0. */
int eq_step_quantize_row(const float *h, int64_t k, int64_t block, int8_t *q, float *scales);

/* Rows of x (rows, d): x += delta (NULL: none), then rmsnorm(x) * weight -> xq (rows, d),
 * xs (rows, d/block). work: d floats. */
int eq_step_norm_quantize(float *x, const float *delta, int64_t rows, int64_t d,
                          const float *weight, double eps, int64_t block, int8_t *xq, float *xs,
                          float *work);

/* Rows of x (rows, d): x += delta (NULL: none), then x = x R^T, where R (d, d) is the
 * rotation the residual stream was turned by, given transposed: unrotation = R^T, row-major.
 * Each element sums x[k] * unrotation[k][j] over k in order, in float32. work: d floats.
 * Returns 1 (the next step checks the values). */
int eq_step_unrotate(float *x, const float *delta, int64_t rows, int64_t d,
                     const float *unrotation, float *work);

/* Floats of scratch eq_step_attend_quantize needs. */
int64_t eq_step_attend_work(int64_t rows, int64_t n_heads, int64_t n_kv, int64_t head_dim,
                            int64_t end);

/* Rows t of q (rows, n_heads*hd) and k, v (rows, n_kv*hd), row strides given, at positions
 * start + t: RoPE (cos, sin (rows, rope_dim/2)); k, v into one layer of the float16 cache,
 * keys (n_kv, n_blocks, hd, key_block) transposed in blocks, values (n_kv, capacity, hd);
 * then causal attention of every row over positions <= start + t, quantized into
 * xq (rows, n_heads*hd), xs. Key/value heads are shared out among `threads` threads (each
 * output is computed the same way whatever the count). work: eq_step_attend_work floats. */
int eq_step_attend_quantize(const float *q, int64_t q_stride, const float *k, int64_t k_stride,
                            const float *v, int64_t v_stride, int64_t rows, int64_t n_heads,
                            int64_t n_kv, int64_t head_dim, int64_t start, const float *cos,
                            const float *sin, int64_t rope_dim, int32_t neox, float scale,
                            uint16_t *keys, int64_t n_blocks, int64_t key_block, uint16_t *values,
                            int64_t capacity, int64_t block, int8_t *xq, float *xs, float *work,
                            int64_t work_len, int32_t threads);

/* Floats of scratch eq_step_swiglu_quantize needs: f, or 2 f with the rotation; EQ_STEP_EARGS
 * when the rotation's arguments are inconsistent (see there). */
int64_t eq_step_swiglu_work(int64_t f, const float *signs, const float *mix, int64_t mix_n);

/* silu(gate) * up of each row (rows, f), row strides given -> h, then, with a rotation (signs
 * and mix not NULL), h -> h H_f (ffn_down's input rotation; NULL, NULL, 0 for none), then
 * h -> xq (rows, f), xs. H_f = diag(signs) (mix (x) H_p / sqrt(p)): signs (f,) of +-1, mix
 * (mix_n, mix_n) row-major, p = f / mix_n a power of two, H_p the Sylvester Hadamard matrix.
 * In float32, in this order: y = h * signs; in each chunk y[a p .. a p + p) a fast
 * Walsh-Hadamard transform, stages of span s = 1, 2, .., p/2, each pair (i, i + s) of a span
 * becoming (y_i + y_{i+s}, y_i - y_{i+s}); y *= (float)(1 / sqrt(p)); out[a' p + b] = sum over
 * a in order of y[a p + b] * mix[a][a'] (from 0). work: eq_step_swiglu_work floats. */
int eq_step_swiglu_quantize(const float *gate, int64_t gate_stride, const float *up,
                            int64_t up_stride, int64_t rows, int64_t f, int64_t block,
                            const float *signs, const float *mix, int64_t mix_n, int8_t *xq,
                            float *xs, float *work);

#endif
