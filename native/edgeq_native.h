/* edgeq native kernels: the C mirror of edgeq/qtypes layouts and the public API.
 *
 * Layouts (each mirrors the docstring of its edgeq/qtypes module; rows are packed one after
 * another, row r of the codes starts at codes + r * row_bytes):
 *
 *   kind            codes per row            code value c of code j
 *   int8            int8[k]                  c = codes[j]                       (-128..127)
 *   int8_asym       uint8[k]                 c = codes[j] - zero(group of j)    (-255..255)
 *   int4(_asym)     uint8[k/2], groups of G  byte b of a group: code b in bits 0-3,
 *                                            code b + G/2 in bits 4-7; c = n - 8 (sym) or n
 *   ternary_2bit    uint8[k/4], groups of P  byte b: codes b + l*P/4 in bits 2l..2l+1; c = t - 1
 *   ternary_base3   uint8[k/P * ceil(P/5)]   byte b: codes b + l*S (S = ceil(P/5)), trit
 *                                            l = ((byte * 3^l) mod 256) * 3 >> 8; c = t - 1
 *   binary          uint8[ceil(k/8)]         bit j%8 of byte j/8 (LSB first); c = 2 bit - 1
 *   pow2            uint8[k/2], like int4    c = POW2_VALUES[nibble]
 *   int3(_asym)     uint8[3k/8], groups of P P/4 bytes give u & 3 as ternary_2bit does,
 *                                            then P/8 bytes: bit l of byte j is u >> 2 of
 *                                            code j + l*P/8; c = u - 4 (sym) or u
 *   int2(_asym)     uint8[k/4], groups of P  the ternary_2bit layout; c = u - 2 (sym) or u
 *   (P, the packing group, is the scale group for "group" granularity, else the row length.)
 *
 * Scales: float32 with one per tensor or row, float16 (IEEE binary16, read as uint16) per
 * group; mins (int4_asym, int3_asym, int2_asym) float16 per group; zeros (int8_asym) uint8,
 * indexed like scales.
 *
 * How every kernel computes (the integer rules are edgeq/kernels/reference.py):
 *   1. a weight row is decoded into unsigned bytes u = (c + OFFSET) / MULT (table below), so a
 *      single unsigned-by-signed byte dot product serves every layout;
 *   2. per sub-block s: raw = sum u * q (exact modulo 2^32), then
 *      isum = MULT * raw - OFFSET * sum(q)   (int8_asym: OFFSET is the group's zero point);
 *   3. matmul: y = sum_s float(isum) * (ws * xs)  [+ sum_s float(sum q) * (wm * xs)], float32,
 *      summed in order and without FMA contraction, so every SIMD variant gives the same bits.
 * Integer sums wrap modulo 2^32 exactly like the reference's int64 -> int32 cast; the Python
 * side only calls these kernels when the reference's int32 bound holds.
 */
#ifndef EDGEQ_NATIVE_H
#define EDGEQ_NATIVE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

enum eq_kind {
    EQ_INT8 = 0,
    EQ_INT8_ASYM = 1,
    EQ_INT4 = 2,
    EQ_INT4_ASYM = 3,
    EQ_TERNARY_2BIT = 4,
    EQ_TERNARY_BASE3 = 5,
    EQ_BINARY = 6,
    EQ_POW2 = 7,
    EQ_INT3 = 8,
    EQ_INT3_ASYM = 9,
    EQ_INT2 = 10,
    EQ_INT2_ASYM = 11,
    EQ_NKINDS = 12
};

/* Error codes returned by the public functions (0 is success). */
enum eq_status {
    EQ_OK = 0,
    EQ_EINVAL = -1,   /* an argument is inconsistent (the Python side checks first) */
    EQ_ENOMEM = -2,   /* scratch allocation failed */
    EQ_ENOTFINITE = -3 /* an activation to quantize is NaN or infinite */
};

/* A quantized (rows, k) weight matrix, read in place. */
typedef struct {
    int32_t kind;         /* enum eq_kind */
    int32_t scale_f16;    /* 1: scales/mins are float16 (uint16 bits), 0: float32 */
    int64_t rows;         /* n, output features */
    int64_t k;            /* in features */
    int64_t pack_group;   /* P: codes per packing group (int4, pow2, ternary); k otherwise */
    int64_t row_bytes;    /* bytes of codes per row */
    int64_t scale_block;  /* codes per scale along k (k for tensor/row granularity) */
    int64_t scale_rows;   /* 1 (tensor) or rows */
    const uint8_t *codes; /* rows * row_bytes */
    const void *scales;   /* scale_rows * (k / scale_block) float32 or uint16 */
    const uint16_t *mins; /* int4/int3/int2_asym: rows * (k / scale_block) float16, else NULL */
    const uint8_t *zeros; /* int8_asym: like scales, else NULL */
} eq_qmatrix;
_Static_assert(sizeof(eq_qmatrix) == 8 + 6 * 8 + 4 * sizeof(void *), "eq_qmatrix has no padding");

/* Bytes of codes per row (P: packing group), as in each layout's components(). */
#define EQ_ROW_BYTES_INT8(k) (k)
#define EQ_ROW_BYTES_NIBBLES(k) ((k) / 2)
#define EQ_ROW_BYTES_2BIT(k) ((k) / 4)
#define EQ_BASE3_BYTES_PER_GROUP(p) (((p) + 4) / 5)
#define EQ_ROW_BYTES_BASE3(k, p) ((k) / (p) * EQ_BASE3_BYTES_PER_GROUP(p))
#define EQ_ROW_BYTES_BITS(k) (((k) + 7) / 8)
#define EQ_ROW_BYTES_INT3(k) ((k) * 3 / 8)

/* The codes of one default-size group (scales live in their own array, not interleaved as
 * in ggml): sizes must match the Python layouts' components(). */
typedef struct { uint8_t qs[16]; } eq_group_int4_32;      /* + f16 scale: 4.5 bits/weight */
typedef struct { int8_t qs[32]; } eq_group_int8_32;       /* + f16 scale: 8.5 bits/weight */
typedef struct { uint8_t qs[16]; } eq_group_ternary2_64;  /* + f16 scale: 2.25 bits/weight */
typedef struct { uint8_t qs[13]; } eq_group_ternary3_64;  /* + f16 scale: 1.875 bits/weight */
typedef struct { uint8_t qs[16]; } eq_group_pow2_32;      /* + f16 scale: 4.5 bits/weight */
typedef struct { uint8_t crumbs[8], high[4]; } eq_group_int3_32; /* + f16 scale (+ min): 3.5 (4.0) */
typedef struct { uint8_t qs[8]; } eq_group_int2_32;       /* + f16 scale (+ min): 2.5 (3.0) */
_Static_assert(sizeof(eq_group_int4_32) == EQ_ROW_BYTES_NIBBLES(32), "int4 group of 32");
_Static_assert(sizeof(eq_group_int8_32) == EQ_ROW_BYTES_INT8(32), "int8 group of 32");
_Static_assert(sizeof(eq_group_ternary2_64) == EQ_ROW_BYTES_2BIT(64), "ternary 2bit group of 64");
_Static_assert(sizeof(eq_group_ternary3_64) == EQ_ROW_BYTES_BASE3(64, 64), "base3 group of 64");
_Static_assert(sizeof(eq_group_pow2_32) == EQ_ROW_BYTES_NIBBLES(32), "pow2 group of 32");
_Static_assert(sizeof(eq_group_int3_32) == EQ_ROW_BYTES_INT3(32), "int3 group of 32");
_Static_assert(sizeof(eq_group_int2_32) == EQ_ROW_BYTES_2BIT(32), "int2 group of 32");
_Static_assert(EQ_ROW_BYTES_BITS(9) == 2, "binary rows round up to whole bytes");

/* Decoded-byte offsets: c = MULT * u - OFFSET (int8_asym: OFFSET = zero point). */
#define EQ_OFFSET_INT8 128
#define EQ_OFFSET_INT4 8
#define EQ_OFFSET_TERNARY 1
#define EQ_OFFSET_BINARY 1
#define EQ_OFFSET_POW2 64
#define EQ_OFFSET_INT3 4   /* symmetric; the asymmetric kinds have offset 0 and mins */
#define EQ_OFFSET_INT2 2

/* pow2 nibble -> integer weight value (edgeq.qtypes.pow2.CODE_VALUES). */
extern const int8_t EQ_POW2_VALUES[16];

/* ---- per-ISA primitives: the dispatch table ------------------------------------------- */
/* Decoders write u for codes [0, k) of one row into out (k bytes). */
typedef void (*eq_decode_fn)(const uint8_t *row, int64_t k, int64_t pack_group, uint8_t *out);
/* out[s] = sum_{j in sub-block s} u[j] * x[j] modulo 2^32; xsum[s] = sum x over the sub-block
 * (given for ISAs that compute with u ^ 0x80); wide = 1 when u may exceed 128. */
typedef void (*eq_dot_fn)(const uint8_t *u, const int8_t *x, int64_t k, int64_t sub,
                          const int32_t *xsum, int wide, int32_t *out);
typedef void (*eq_quant_fn)(const float *x, int64_t n, int8_t *q, float *scale);
typedef void (*eq_halves_fn)(const uint16_t *h, int64_t n, float *out);
typedef uint64_t (*eq_popxor_fn)(const uint8_t *a, const uint8_t *b, int64_t nbytes);
/* pop[4 * a + b] = popcount(w row a XOR x row b) over nbytes, for 4 weight rows (w + a *
 * wstride) and 4 activation rows (x + b * xstride): a register tile for the XNOR GEMM. */
typedef void (*eq_popxor_tile_fn)(const uint8_t *w, int64_t wstride, const uint8_t *x,
                                  int64_t xstride, int64_t nbytes, uint64_t pop[16]);

/* ---- the fused matmul path (k and the sub-block a multiple of EQ_SLOT) ------------------
 * Phase 1, per ISA: integer sums per slot of EQ_SLOT codes, raw[s] = sum v[j] * x[j] over
 * slot s, modulo 2^32, where v is what the kernel multiplies (see eq_plan.adjust). The
 * m = 1 kernels (gemv) unpack the packed row in registers; the m > 1 kernel (slots) reads
 * bytes that are either the codes themselves (int8) or a row decoded once into scratch, and
 * multiplies them with up to EQ_MAX_TILE activation rows per pass over the weight row.
 * Phase 2 (combine): slots summed into sub-blocks, offsets and scales applied in the fixed
 * float order described at the top of this file. */
#define EQ_SLOT 32
#define EQ_MAX_TILE 4
/* Slack after the last slot that kernels may write in raw arrays. */
#define EQ_RAW_PAD 8

/* raw rows i < mt (stride rstride) for the k/EQ_SLOT slots of src against x rows (stride
 * xstride); v = src byte, XOR 0x80 when flip, read unsigned on x86 and signed on NEON;
 * wide: v may exceed 128 (matters only for ISAs whose byte product saturates). */
typedef void (*eq_slots_fn)(const uint8_t *src, int flip, int wide, const int8_t *x,
                            int64_t xstride, int mt, int64_t k, int32_t *raw, int64_t rstride);
/* raw[s] for one packed row and one activation row prepared by the plan's prep. */
typedef void (*eq_gemv_fn)(const uint8_t *row, const int8_t *xp, int64_t k, int64_t pack_group,
                           int32_t *raw);
/* Activations (k) rearranged into the order a gemv kernel reads (prep_bytes written). */
typedef void (*eq_prep_fn)(const int8_t *x, int64_t k, int64_t pack_group, int8_t *xp);

/* How one variant runs one matrix: chosen once per call by the table's plan function. */
typedef struct {
    eq_gemv_fn gemv;       /* m == 1: fused unpack + dot, or NULL to use slots */
    eq_prep_fn prep;       /* gemv's activation order, or NULL for the natural order */
    int64_t prep_bytes;    /* bytes per prepared activation row */
    int decoded;           /* slots read rows decoded into scratch by the table's decoder
                              (else the codes themselves) */
    int flip, wide;        /* passed to slots */
    int32_t adjust;        /* isum = mult * raw - (offset - adjust) * sum(q) */
} eq_plan;
/* 1 and *plan filled when the variant has a fused path for w with m activation rows. */
typedef int (*eq_plan_fn)(const eq_qmatrix *w, int64_t m, eq_plan *plan);

/* A per-(row, sub-block) quantity for a block of rows: row j, sub-block s reads
 * p[j * row + s * sub] (sub is 0 for one value per row, else 1), as float16 bits or float32. */
typedef struct {
    const void *p;            /* NULL: absent (mins of symmetric layouts) */
    int64_t row;
    int32_t sub;
    int32_t f16;
} eq_rowvals;

/* The weight side of the float sum for a block of rows, set up once per block by engine.c. */
typedef struct {
    int64_t nsub;
    int32_t mult;
    int32_t off;              /* the constant offset when zeros and offs are NULL */
    eq_rowvals ws, wm;        /* scales; mins */
    const uint8_t *zeros;     /* int8_asym: zero point (minus zero_bias) at zeros[j * zrow + s * zsub] */
    int64_t zrow;
    int32_t zsub;
    int32_t zero_bias;
    const int32_t *offs;      /* offsets expanded per sub-block, row stride nsub */
} eq_rowscale;
/* For nr <= EQ_PARTIALS weight rows j (raw + j * rstride), with one activation row:
 * y[j] = sum_s float(isum_s) * (xs_s * ws_s) in EQ_PARTIALS partial sums [+ the same for
 * float(xsum_s) * (xs_s * wm_s)], isum_s = mult * raw_s - off_s * xsum_s (wrapping). */
typedef void (*eq_combine_fn)(const eq_rowscale *rs, int nr, const int32_t *raw, int64_t rstride,
                              const int32_t *xsum, const float *xs, float *y);
#define EQ_PARTIALS 8

/* ---- the packed-panel GEMM (m >= EQ_PANEL_MIN_M, where the variant has it) -----------------
 * EQ_PANEL weight rows of bytes v (as the plan says: codes, flipped codes or a decoded row)
 * are interleaved in groups of four codes: panel byte (q * EQ_PANEL + j) * 4 + b is code
 * 4q + b of row j. One vector load then holds four codes of every row of the panel, and a
 * byte dot product against four activations broadcast to every lane sums them per row, with
 * no horizontal reduction; a sub-block's sum is complete when its k/4 steps are done.
 * The weight side of the float sum is expanded per sub-block s and row j, [s][EQ_PANEL]:
 * ws, wm (float) and off (int32), so the kernel's combine is the scalar rule lane by lane. */
#define EQ_PANEL 16
#define EQ_PANEL_TILE 8        /* activation rows per pass over a panel */
#define EQ_PANEL_MIN_M 8       /* below this, packing costs more than it saves */
#define EQ_PANEL_GROUP_MAX 2   /* the most panels a variant's panel kernel takes per call */
typedef struct {
    const uint8_t *w;          /* (k / 4, EQ_PANEL, 4) bytes v */
    int64_t k, sub, nsub;
    int32_t mult;
    int32_t off_c;             /* the offset of every row and sub-block when off is NULL */
    const int32_t *off;        /* (nsub, EQ_PANEL) or NULL */
    const float *ws;           /* (nsub, EQ_PANEL) */
    const float *wm;           /* (nsub, EQ_PANEL), NULL without mins */
} eq_panel;
/* y[i * ystride + j] for activation rows i < m and rows j < nr of the variant's panel_group
 * consecutive panels p[0], p[1], ... (nr <= panel_group * EQ_PANEL; each broadcast activation
 * then feeds every panel of the group); raw is scratch of EQ_PANEL_TILE * nsub * EQ_PANEL int32. */
typedef void (*eq_panel_fn)(const eq_panel *p, const int8_t *x, int64_t m, const int32_t *xsum,
                            const float *xs, float *y, int64_t ystride, int nr, int32_t *raw);
/* The panel bytes of rows[0..EQ_PANEL) (k bytes each, XOR flip per 4 bytes); a NULL row
 * gives zeros. */
typedef void (*eq_panel_pack_fn)(const uint8_t *const *rows, int64_t k, uint32_t flip,
                                 uint8_t *out);

typedef struct {
    const char *name;
    eq_decode_fn decode[EQ_NKINDS];
    eq_dot_fn dot;
    eq_quant_fn quantize_block;  /* one activation block: scale = absmax/127, q = rint(x/s) */
    eq_halves_fn halves_to_float;
    eq_popxor_fn popcount_xor;
    eq_popxor_tile_fn popcount_xor_tile;  /* NULL: pair by pair with popcount_xor */
    eq_plan_fn plan;             /* NULL: every matmul takes the generic decode + dot path */
    eq_slots_fn slots;
    eq_combine_fn combine;
    eq_panel_fn panel;           /* NULL: m > 1 takes the slots path */
    eq_panel_pack_fn panel_pack; /* given with panel */
    int panel_group;             /* panels per panel call (see eq_panel_fn); 0 counts as 1;
                                    at most EQ_PANEL_GROUP_MAX */
} eq_simd_table;

/* Each variant's table (defined only where its file is compiled). */
extern const eq_simd_table eq_table_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const eq_simd_table eq_table_avx2;
extern const eq_simd_table eq_table_avx512;
#endif
#if defined(__aarch64__)
extern const eq_simd_table eq_table_neon;
extern const eq_simd_table eq_table_neon_dotprod;
#endif

/* Scalar building blocks that SIMD files reuse for tails and rare shapes. */
void eq_decode_scalar(int kind, const uint8_t *row, int64_t k, int64_t pack_group, uint8_t *out);
/* int3 (both kinds): no SIMD decoder of its own yet, every table uses this one. */
void eq_decode_int3_scalar(const uint8_t *row, int64_t k, int64_t pack_group, uint8_t *out);
void eq_dot_scalar(const uint8_t *u, const int8_t *x, int64_t k, int64_t sub,
                   const int32_t *xsum, int wide, int32_t *out);
void eq_quantize_block_scalar(const float *x, int64_t n, int8_t *q, float *scale);
/* One activation code for scale s > 0, the rule every quantize_block shares: x / s in float32,
 * rounded half to even (the default mode), clamped to [-127, 127]. */
static inline int8_t eq_quantize_code(float x, float s)
{
    float v = nearbyintf(x / s);
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    return (int8_t)v;
}
float eq_half_to_float(uint16_t h);
/* Panel bytes of codes [j, k) of rows[0..EQ_PANEL) (see eq_panel; j and k multiples of 4),
 * four bytes at a time: the tail after a SIMD panel_pack's blocks. */
void eq_panel_pack_scalar(const uint8_t *const *rows, int64_t j, int64_t k, uint32_t flip,
                          uint8_t *out);
uint64_t eq_popcount_xor_scalar(const uint8_t *a, const uint8_t *b, int64_t nbytes);
void eq_combine_scalar(const eq_rowscale *rs, int nr, const int32_t *raw, int64_t rstride,
                       const int32_t *xsum, const float *xs, float *y);
/* Sub-blocks [s, nsub) of row j added to part[] / partm[] (partial s % EQ_PARTIALS): the
 * scalar rule, for SIMD combines' rare cases; _finish then sums the partials in order. */
void eq_combine_partials(const eq_rowscale *rs, int j, const int32_t *raw, const int32_t *xsum,
                         const float *xs, int64_t s, float *part, float *partm);
float eq_combine_finish(const eq_rowscale *rs, int j, const int32_t *raw, const int32_t *xsum,
                        const float *xs, int64_t s, float *part, float *partm);

/* ---- thread pool (threadpool.c) -------------------------------------------------------- */
/* fn(ctx, begin, end) over [0, n) in chunks of `chunk`, on up to `threads` threads counting
 * the caller. Workers are created on first need and kept: they spin briefly after a task,
 * then sleep on a condition variable. A call made while another is using the pool runs on
 * the calling thread alone. */
typedef void (*eq_task_fn)(void *ctx, int64_t begin, int64_t end);
void eq_parallel_for(eq_task_fn fn, void *ctx, int64_t n, int64_t chunk, int32_t threads);
/* Worker threads started so far (for tests and benchmarks). */
int32_t eq_pool_workers(void);

/* ---- dispatch ---------------------------------------------------------------------------- */
/* The table in use: the best this CPU supports, or EDGEQ_SIMD's choice. */
const eq_simd_table *eq_simd(void);
/* Name of the variant in use. */
const char *eq_variant(void);
/* Space-separated names of the variants this CPU supports, best last. */
const char *eq_variants(void);
/* Use variant `name`: 0 ok, -1 unknown name, -2 not supported by this CPU. */
int eq_select_variant(const char *name);

/* ---- public kernels (one per operation and weight kind; _q8: int8 activations) ---------- */
/* q (m, k) int8 and scales (m, k/block) float32; block divides k; EQ_ENOTFINITE if x holds
 * NaN or inf (nothing is written then). */
int eq_quantize_q8(const float *x, int64_t m, int64_t k, int64_t block, int8_t *q, float *scales);

#define EQ_DECLARE_KIND(name)                                                                  \
    int eq_block_sums_##name##_q8(const eq_qmatrix *w, const int8_t *xq, int64_t m,           \
                                  int64_t sub, int32_t *out, int32_t threads);                 \
    int eq_vec_dot_##name##_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs,        \
                               int64_t act_block, float *out, int32_t threads);               \
    int eq_gemm_##name##_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs, int64_t m, \
                            int64_t act_block, float *out, int32_t threads);
EQ_DECLARE_KIND(int8)
EQ_DECLARE_KIND(int8_asym)
EQ_DECLARE_KIND(int4)
EQ_DECLARE_KIND(int4_asym)
EQ_DECLARE_KIND(ternary_2bit)
EQ_DECLARE_KIND(ternary_base3)
EQ_DECLARE_KIND(binary)
EQ_DECLARE_KIND(pow2)
EQ_DECLARE_KIND(int3)
EQ_DECLARE_KIND(int3_asym)
EQ_DECLARE_KIND(int2)
EQ_DECLARE_KIND(int2_asym)

#include "prepared.h"   /* prepared matrices and eq_gemm_q8: a plain header cffi reads too */

/* Rows [r0, r0 + n) of w as a matrix of their own (0 <= r0, r0 + n <= w->rows): the same
 * arrays, read from row r0 on. */
eq_qmatrix eq_qmatrix_rows(const eq_qmatrix *w, int64_t r0, int64_t n);

/* out (m, n) int32 = k - 2 popcount(w XOR x) over kb bytes per row. */
int eq_xnor_gemm_binary(const uint8_t *w, int64_t n, const uint8_t *x, int64_t m, int64_t kb,
                        int64_t k, int32_t *out, int32_t threads);

/* sizeof(eq_qmatrix), for the Python side's layout check. */
size_t eq_qmatrix_size(void);

#endif
