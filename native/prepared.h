/* Matrix products C callers and Python (cffi reads this header; build_native.py) call with a
 * matrix of any kind: eq_gemm_q8, and prepared matrices. Included by edgeq_native.h, after
 * eq_qmatrix; a plain header (no macros or inline functions) so that cffi's cdef can read it. */
#ifndef EDGEQ_PREPARED_H
#define EDGEQ_PREPARED_H

#include <stddef.h>
#include <stdint.h>

/* ---- prepared matrices (engine.c): a matrix's panels packed once, for the panel path ------
 * eq_prepare_q8 packs w's rows into panels (see eq_panel) with their weight side, for
 * activations in blocks of act_block, on the variant in use; NULL when that variant has no
 * panel path for w (or out of memory). w's arrays must outlive the result. Memory:
 * eq_prepared_bytes (about rows * k bytes, plus the expanded scales). eq_gemm_prepared_q8 is
 * eq_gemm_<kind>_q8 with the panels read instead of packed, for every m (the panel kernel's
 * tiles take any height), bit for bit the same results. */
typedef struct eq_prepared eq_prepared;
eq_prepared *eq_prepare_q8(const eq_qmatrix *w, int64_t act_block);
size_t eq_prepared_bytes(const eq_prepared *p);
/* The activation block p was prepared for (0 for NULL), and the matrix it reads. */
int64_t eq_prepared_block(const eq_prepared *p);
const eq_qmatrix *eq_prepared_matrix(const eq_prepared *p);
void eq_prepared_free(eq_prepared *p);
int eq_gemm_prepared_q8(const eq_prepared *p, const int8_t *xq, const float *xs, int64_t m,
                        float *out, int32_t threads);

/* The matmul of whatever kind w is (for C callers holding matrices of several kinds). */
int eq_gemm_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs, int64_t m,
               int64_t act_block, float *out, int32_t threads);

#endif
