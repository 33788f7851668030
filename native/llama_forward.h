/* The llama decoder's whole forward pass in one call (llama_forward.c): the fused steps of
 * steps.h and the engine's matrix products in the order edgeq/models/llama.py's
 * _forward_steps runs them, so both give the same bits, without a return to Python between
 * the ~8 calls of every block (at 135M parameters that return trip costs about a quarter of
 * a decoded token's time).
 *
 * Per block, on the residual stream x (rows, dim):
 *   x += delta (the previous block's MLP output; none for block 0); rmsnorm * attn_norm -> q8
 *   q | k | v = W_qkv . (+ bias); RoPE, k, v into the cache; attention -> q8
 *   o = W_o . ;  x += o; rmsnorm * ffn_norm -> q8
 *   gate | up = W_gate_up . ;  silu(gate) * up (turned by H_f if the model has it) -> q8
 *   delta = W_down .
 * then x += delta; rmsnorm * output_norm -> q8; logits = W_out . for the last out_rows rows.
 * Every matrix takes the activation quantization block of its input (block_dim, block_q,
 * block_ffn); the caller guarantees the engine's int32 accumulator bound for each.
 */
#ifndef EDGEQ_LLAMA_FORWARD_H
#define EDGEQ_LLAMA_FORWARD_H

#include <stdint.h>

#include "edgeq_native.h"

/* One block's weights. A projection group is one row-fused matrix (outputs side by side:
 * qkv[1], qkv[2] NULL; gate_up[1] NULL) or one matrix per output. */
typedef struct {
    const eq_qmatrix *qkv[3];
    const eq_qmatrix *gate_up[2];
    const eq_qmatrix *wo, *down;
    const float *attn_norm, *ffn_norm;  /* (dim,) */
    const float *qkv_bias;              /* (n_heads*hd + 2*n_kv*hd,) or NULL */
} eq_llama_block;

typedef struct {
    int64_t n_layers, dim, n_heads, n_kv, head_dim, ffn_dim, rope_dim;
    int32_t neox;
    float attn_scale;
    double eps;
    int64_t block_dim, block_q, block_ffn;
    const eq_llama_block *blocks;       /* n_layers */
    const float *output_norm;           /* (dim,) */
    const eq_qmatrix *output;           /* (vocab, dim) */
    const float *unrotation;            /* (dim, dim) R^T of a rotated residual stream, or NULL
                                           (eq_step_unrotate before output_norm) */
    const float *ffn_signs, *ffn_mix;   /* ffn_down's input rotation H_f: (ffn_dim,), (ffn_mix_n,
                                           ffn_mix_n), as eq_step_swiglu_quantize takes it;
                                           NULL, NULL, 0: none */
    int64_t ffn_mix_n;
} eq_llama_model;

/* A float16 KV cache, as bits: keys (n_layers, n_kv, n_blocks, hd, key_block), values
 * (n_layers, n_kv, capacity, hd) (see edgeq/models/kv_cache.py). */
typedef struct {
    uint16_t *keys, *values;
    int64_t n_blocks, key_block, capacity;
} eq_llama_cache;

/* Bytes of scratch eq_llama_forward needs for `rows` positions ending at position end. */
int64_t eq_llama_forward_work(const eq_llama_model *m, int64_t rows, int64_t end);

/* Run rows embedded tokens x (rows, dim), at positions [start, start + rows), through every
 * block (x is the residual stream, updated in place), writing their keys and values into the
 * cache, and the logits of the last out_rows rows (1 <= out_rows <= rows) into logits
 * (out_rows, vocab). cos, sin (rows, rope_dim/2). Returns 0 on success; EQ_STEP_EARGS when
 * sizes are inconsistent (nothing is written); EQ_ENOMEM when a matrix product could not get
 * scratch; or 1 + 4 * layer + step for the first activation that was not finite (step 0:
 * block input, 1: attention, 2: residual, 3: MLP; layer n_layers: the final hidden state),
 * where the pass stops. */
int eq_llama_forward(const eq_llama_model *m, const eq_llama_cache *cache, float *x,
                     int64_t rows, int64_t start, const float *cos, const float *sin,
                     int64_t out_rows, float *logits, void *work, int64_t work_bytes,
                     int32_t threads);

#endif
