/* NEON primitives for aarch64, compiled twice:
 *   -march=armv8-a                       -> eq_table_neon          (SMULL + SADALP dot)
 *   -march=armv8.2-a+dotprod (+ EQ_NEON_DOTPROD, via kernels_neon_dotprod.c)
 *                                        -> eq_table_neon_dotprod  (SDOT, vdotq_s32)
 * dispatch.c picks one from getauxval(AT_HWCAP).
 *
 * Both dots multiply signed bytes, so a decoded byte u (0..255) enters as u ^ 0x80 = u - 128
 * and 128 * sum(q) is added back: sum u*q = sum (u-128)*q + 128 * sum q, exact for every
 * byte. Decoders use one shift and one mask per vector, TBL for the pow2 lookup and an 8-bit
 * multiply for base-3 trits. Only the SDOT build has the packed-panel GEMM (panel and
 * panel_pack, see eq_panel: m >= EQ_PANEL_MIN_M and prepared matrices).
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "edgeq_native.h"

#ifdef EQ_NEON_DOTPROD
#define TABLE eq_table_neon_dotprod
#define TABLE_NAME "neon_dotprod"
#else
#define TABLE eq_table_neon
#define TABLE_NAME "neon"
#endif

/* ---- decoders ---------------------------------------------------------------------------- */

static void decode_int8(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    const uint8x16_t flip = vdupq_n_u8(0x80);
    int64_t j = 0;
    for (; j + 16 <= k; j += 16)
        vst1q_u8(out + j, veorq_u8(vld1q_u8(row + j), flip));
    eq_decode_scalar(EQ_INT8, row + j, k - j, group, out + j);
}

static void decode_int8_asym(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    (void)group;
    memcpy(out, row, (size_t)k);
}

static inline void nibble_planes(const uint8_t *row, int64_t k, int64_t group, uint8_t *out,
                                 uint8x16_t lut, int use_lut, int kind)
{
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    int64_t half = group / 2;
    for (int64_t g = 0; g < k; g += group, row += half, out += group) {
        int64_t j = 0;
        for (; j + 16 <= half; j += 16) {
            uint8x16_t v = vld1q_u8(row + j);
            uint8x16_t lo = vandq_u8(v, low4);
            uint8x16_t hi = vshrq_n_u8(v, 4);
            if (use_lut) {
                lo = vqtbl1q_u8(lut, lo);
                hi = vqtbl1q_u8(lut, hi);
            }
            vst1q_u8(out + j, lo);
            vst1q_u8(out + half + j, hi);
        }
        for (; j < half; j++) {
            uint8_t b[1] = {row[j]};
            uint8_t pair[2];
            eq_decode_scalar(kind, b, 2, 2, pair);
            out[j] = pair[0];
            out[half + j] = pair[1];
        }
    }
}

static void decode_int4(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    nibble_planes(row, k, group, out, vdupq_n_u8(0), 0, EQ_INT4);
}

static void decode_pow2(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    static const uint8_t values[16] = {64, 65, 66, 68, 72, 80, 96, 128,
                                       64, 63, 62, 60, 56, 48, 32, 0};  /* POW2_VALUES + 64 */
    nibble_planes(row, k, group, out, vld1q_u8(values), 1, EQ_POW2);
}

/* out[j] = ((in[j] >> right) << left) & mask for j < n, OR-ed into out[j] when merge: 16 and 8
 * bytes at a time (per-byte shifts), the last few one by one. Planes of short groups (int2
 * g64: 16 bytes, g96: 24; int3 g96's bit planes: 12) are mostly such partial vectors. */
static inline void plane_bytes(const uint8_t *in, int64_t n, int right, int left, uint8_t mask,
                               int merge, uint8_t *out)
{
    const int8x16_t r = vdupq_n_s8((int8_t)-right), l = vdupq_n_s8((int8_t)left);  /* < 0: right */
    const uint8x16_t m = vdupq_n_u8(mask);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        uint8x16_t v = vandq_u8(vshlq_u8(vshlq_u8(vld1q_u8(in + j), r), l), m);
        vst1q_u8(out + j, merge ? vorrq_u8(v, vld1q_u8(out + j)) : v);
    }
    if (j + 8 <= n) {
        uint8x8_t v = vand_u8(vshl_u8(vshl_u8(vld1_u8(in + j), vget_low_s8(r)), vget_low_s8(l)),
                              vget_low_u8(m));
        vst1_u8(out + j, merge ? vorr_u8(v, vld1_u8(out + j)) : v);
        j += 8;
    }
    for (; j < n; j++)
        out[j] = (uint8_t)((((in[j] >> right) << left) & mask) | (merge ? out[j] : 0));
}

#define PLANE_DECODER(name) static void decode_##name
#include "plane_decoders.h"
#undef PLANE_DECODER

static void decode_base3(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    const uint8x8_t three = vdup_n_u8(3);
    int64_t stride = EQ_BASE3_BYTES_PER_GROUP(group);
    for (int64_t g = 0; g < k; g += group, row += stride, out += group) {
        for (int l = 0; l < 5; l++) {
            const uint8x16_t mul = vdupq_n_u8(pow3[l]);
            int64_t valid = group - l * stride < stride ? group - l * stride : stride;
            int64_t j = 0;
            for (; j + 16 <= valid; j += 16) {
                /* (byte * 3^l) mod 256 is an 8-bit multiply; then * 3 >> 8 */
                uint8x16_t v = vmulq_u8(vld1q_u8(row + j), mul);
                uint8x8_t lo = vshrn_n_u16(vmull_u8(vget_low_u8(v), three), 8);
                uint8x8_t hi = vshrn_n_u16(vmull_u8(vget_high_u8(v), three), 8);
                vst1q_u8(out + l * stride + j, vcombine_u8(lo, hi));
            }
            for (; j < valid; j++) {
                uint8_t shifted = (uint8_t)(row[j] * pow3[l]);
                out[l * stride + j] = (uint8_t)(((uint16_t)shifted * 3) >> 8);
            }
        }
    }
}

static void decode_bits(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    static const uint8_t bits[8] = {1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x8_t mask = vld1_u8(bits);
    const uint8x8_t one = vdup_n_u8(1);
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        uint8x8_t v = vtst_u8(vdup_n_u8(row[j >> 3]), mask);  /* 0xFF where the bit is set */
        vst1_u8(out + j, vand_u8(v, one));
    }
    for (; j < k; j++)
        out[j] = (row[j >> 3] >> (j & 7)) & 1;
    (void)group;
}

/* ---- dot product ------------------------------------------------------------------------- */

/* sum (u - 128) * x over 16 codes, accumulated into int32 lanes */
static inline int32x4_t dot16(int32x4_t acc, const uint8_t *u, const int8_t *x)
{
    int8x16_t us = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(u), vdupq_n_u8(0x80)));
    int8x16_t xs = vld1q_s8(x);
#ifdef EQ_NEON_DOTPROD
    return vdotq_s32(acc, us, xs);
#else
    /* |(u-128) * x| <= 16384 fits int16; pairs are added into int32 */
    int16x8_t lo = vmull_s8(vget_low_s8(us), vget_low_s8(xs));
    int16x8_t hi = vmull_high_s8(us, xs);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

static void dot(const uint8_t *u, const int8_t *x, int64_t k, int64_t sub, const int32_t *xsum,
                int wide, int32_t *out)
{
    if (sub % 16) {
        eq_dot_scalar(u, x, k, sub, xsum, wide, out);
        return;
    }
    for (int64_t s = 0; s * sub < k; s++) {
        int32x4_t acc = vdupq_n_s32(0);
        for (int64_t j = s * sub; j < (s + 1) * sub; j += 16)
            acc = dot16(acc, u + j, x + j);
        /* lanes wrap like the reference's int32 cast; add 128 * sum(q) back */
        uint32_t sum = vaddvq_u32(vreinterpretq_u32_s32(acc));
        out[s] = (int32_t)(sum + 128u * (uint32_t)xsum[s]);
    }
}

/* ---- fused matmul ----------------------------------------------------------------------
 * Slot sums with signed byte products (SDOT, or SMULL + SADALP): a 16-byte group of nibbles
 * (int4, pow2 with groups of 32) or crumbs (ternary with groups of 64) unpacks with one mask
 * and one shift per plane into exactly the 16 codes that pair with 16 consecutive
 * activations, so no activation reordering is needed. Codes below 128 enter as they are;
 * int8 codes are signed already (plan adjust 128); bytes that may reach 128 are XORed with
 * 0x80 (u - 128, adjust 128). */

/* acc + 4 products summed per lane, for 16 signed bytes */
static inline int32x4_t sdot16(int32x4_t acc, int8x16_t u, int8x16_t x)
{
#ifdef EQ_NEON_DOTPROD
    return vdotq_s32(acc, u, x);
#else
    return vpadalq_s16(vpadalq_s16(acc, vmull_s8(vget_low_s8(u), vget_low_s8(x))), vmull_high_s8(u, x));
#endif
}

/* The totals of a0..a3. */
static inline int32x4_t sum4(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3)
{
    return vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
}

static inline void slots_tile(const uint8_t *src, int flip, const int8_t *x, int64_t xstride,
                              const int mt, int64_t k, int32_t *raw, int64_t rstride)
{
    const uint8x16_t flipv = vdupq_n_u8(flip ? 0x80 : 0);
    int64_t nslots = k / EQ_SLOT;
    for (int64_t s = 0; s < nslots; s += 4) {
        int32x4_t acc[EQ_MAX_TILE][4];
        for (int j = 0; j < 4; j++) {
            for (int i = 0; i < mt; i++)
                acc[i][j] = vdupq_n_s32(0);
            if (s + j >= nslots)
                continue;
            const int64_t at = (s + j) * EQ_SLOT;
            int8x16_t u0 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(src + at), flipv));
            int8x16_t u1 = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(src + at + 16), flipv));
            for (int i = 0; i < mt; i++) {
                const int8_t *xi = x + i * xstride + at;
                acc[i][j] = sdot16(sdot16(acc[i][j], u0, vld1q_s8(xi)), u1, vld1q_s8(xi + 16));
            }
        }
        for (int i = 0; i < mt; i++)  /* raw has EQ_RAW_PAD slack for the last 4 */
            vst1q_s32(raw + i * rstride + s, sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    }
}

static void slots(const uint8_t *src, int flip, int wide, const int8_t *x, int64_t xstride, int mt,
                  int64_t k, int32_t *raw, int64_t rstride)
{
    (void)wide;  /* signed products of bytes never saturate here */
    switch (mt) {
    case 1: slots_tile(src, flip, x, xstride, 1, k, raw, rstride); return;
    case 2: slots_tile(src, flip, x, xstride, 2, k, raw, rstride); return;
    case 3: slots_tile(src, flip, x, xstride, 3, k, raw, rstride); return;
    default: slots_tile(src, flip, x, xstride, 4, k, raw, rstride); return;
    }
}

/* m = 1, groups of 16 bytes: nibbles (lut: pow2's signed values) or crumbs; four slots at a
 * time. A nibble group is one slot, a crumb group two (planes 0-1 and 2-3). */
static inline void group16_row(const uint8_t *row, const int8_t *x, int64_t k, const int planes,
                               const int lut, int32_t *raw)
{
    static const int8_t pow2[16] = {0, 1, 2, 4, 8, 16, 32, 64, 0, -1, -2, -4, -8, -16, -32, -64};
    const int8x16_t table = vld1q_s8(pow2);
    const uint8x16_t mask = vdupq_n_u8(planes == 2 ? 0x0F : 0x03);
    const int64_t nslots = k / EQ_SLOT, per_group = planes / 2;
    for (int64_t s = 0; s < nslots; s += 4) {
        int32x4_t acc[4];
        for (int j = 0; j < 4; j += per_group) {
            for (int h = 0; h < per_group; h++)
                acc[j + h] = vdupq_n_s32(0);
            if (s + j >= nslots)
                continue;
            const int64_t g = (s + j) / per_group;
            const uint8x16_t v = vld1q_u8(row + 16 * g);
            const int8_t *xg = x + g * 16 * planes;
            for (int h = 0; h < per_group; h++) {
                uint8x16_t b0 = v, b1 = v;
                if (planes == 2) {
                    b0 = vandq_u8(v, mask);
                    b1 = vshrq_n_u8(v, 4);
                } else {
                    b0 = vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(-4 * h))), mask);
                    b1 = vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(-4 * h - 2))), mask);
                }
                int8x16_t u0 = vreinterpretq_s8_u8(b0), u1 = vreinterpretq_s8_u8(b1);
                if (lut) {
                    u0 = vqtbl1q_s8(table, b0);
                    u1 = vqtbl1q_s8(table, b1);
                }
                acc[j + h] = sdot16(sdot16(acc[j + h], u0, vld1q_s8(xg + 32 * h)), u1,
                                    vld1q_s8(xg + 32 * h + 16));
            }
        }
        vst1q_s32(raw + s, sum4(acc[0], acc[1], acc[2], acc[3]));
    }
}

static void gemv_nib32(const uint8_t *row, const int8_t *x, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    group16_row(row, x, k, 2, 0, raw);
}

static void gemv_pow2_32(const uint8_t *row, const int8_t *x, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    group16_row(row, x, k, 2, 1, raw);
}

static void gemv_crumb64(const uint8_t *row, const int8_t *x, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    group16_row(row, x, k, 4, 0, raw);
}

/* m = 1, ternary 2-bit with groups a multiple of 128: per 32 bytes of a group, the four planes
 * give one slot each (both 16-byte halves against the plane's 32 activations). */
static void gemv_crumb_planar(const uint8_t *row, const int8_t *x, int64_t k, int64_t group,
                              int32_t *raw)
{
    const uint8x16_t mask = vdupq_n_u8(3);
    const int64_t plane = group / 4, chunks = plane / 32, ngroups = k / group;
    for (int64_t g = 0; g < ngroups; g++, row += plane, x += group, raw += group / EQ_SLOT) {
        for (int64_t j = 0; j < chunks; j++) {
            uint8x16_t v0 = vld1q_u8(row + 32 * j), v1 = vld1q_u8(row + 32 * j + 16);
            int32x4_t acc[4];
            for (int l = 0; l < 4; l++) {
                const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * l));
                int8x16_t u0 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v0, shift), mask));
                int8x16_t u1 = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v1, shift), mask));
                const int8_t *xl = x + l * plane + 32 * j;
                acc[l] = sdot16(sdot16(vdupq_n_s32(0), u0, vld1q_s8(xl)), u1, vld1q_s8(xl + 16));
            }
            int32_t s[4];
            vst1q_s32(s, sum4(acc[0], acc[1], acc[2], acc[3]));
            for (int l = 0; l < 4; l++)
                raw[l * chunks + j] = s[l];
        }
    }
}

/* One row's side of the eq_rowvals: a pointer per sub-block or a constant. */
static inline float32x4_t vals4(const eq_rowvals *v, int64_t j, int64_t s)
{
    int64_t at = j * v->row + s * v->sub;
    if (v->sub == 0)
        return vdupq_n_f32(v->f16 ? eq_half_to_float(((const uint16_t *)v->p)[at]) : ((const float *)v->p)[at]);
    if (v->f16)
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)v->p + at)));
    return vld1q_f32((const float *)v->p + at);
}

static inline int32x4_t offs4(const eq_rowscale *rs, int64_t j, int64_t s)
{
    if (rs->zeros) {
        if (rs->zsub == 0)
            return vdupq_n_s32((int32_t)rs->zeros[j * rs->zrow] - rs->zero_bias);
        const uint8_t *z = rs->zeros + j * rs->zrow + s;
        int32_t v[4] = {z[0], z[1], z[2], z[3]};
        return vsubq_s32(vld1q_s32(v), vdupq_n_s32(rs->zero_bias));
    }
    return rs->offs ? vld1q_s32(rs->offs + j * rs->nsub + s) : vdupq_n_s32(rs->off);
}

/* Full blocks of eight sub-blocks in two vectors of four partials (partials 0-3 and 4-7, the
 * same operations as the scalar rule), the rest and the ordered final sum in scalar code. */
static void combine(const eq_rowscale *rs, int nr, const int32_t *raw, int64_t rstride,
                    const int32_t *xsum, const float *xs, float *y)
{
    for (int j = 0; j < nr; j++) {
        const int32_t *r = raw + j * rstride;
        float32x4_t a[2] = {vdupq_n_f32(0), vdupq_n_f32(0)}, am[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
        int64_t s = 0;
        for (; s + EQ_PARTIALS <= rs->nsub; s += EQ_PARTIALS)
            for (int h = 0; h < 2; h++) {
                int64_t at = s + 4 * h;
                int32x4_t q = vld1q_s32(xsum + at);
                int32x4_t isum = vsubq_s32(vmulq_s32(vld1q_s32(r + at), vdupq_n_s32(rs->mult)),
                                           vmulq_s32(offs4(rs, j, at), q));
                float32x4_t x = vld1q_f32(xs + at);
                a[h] = vaddq_f32(a[h], vmulq_f32(vcvtq_f32_s32(isum), vmulq_f32(x, vals4(&rs->ws, j, at))));
                if (rs->wm.p)
                    am[h] = vaddq_f32(am[h], vmulq_f32(vcvtq_f32_s32(q), vmulq_f32(x, vals4(&rs->wm, j, at))));
            }
        float part[EQ_PARTIALS], partm[EQ_PARTIALS];
        vst1q_f32(part, a[0]);
        vst1q_f32(part + 4, a[1]);
        vst1q_f32(partm, am[0]);
        vst1q_f32(partm + 4, am[1]);
        y[j] = eq_combine_finish(rs, j, r, xsum, xs, s, part, partm);
    }
}

#ifdef EQ_NEON_DOTPROD
/* ---- m > 1 with SDOT: the packed panel (see eq_panel) ----------------------------------------
 * A step (four codes of the panel's 16 rows) is 64 bytes: four vectors of four rows each. The
 * by-element SDOT multiplies one of them by four activations picked from a register, so 16
 * activations of a row (four steps) are one load, and a tile of four activation rows keeps
 * 16 accumulators (rows 4c..4c+3 of activation row i in acc[i][c]) in the 32 registers.
 * Sums wrap modulo 2^32 like the slot sums. The plain armv8-a build has no panel: without
 * SDOT a broadcast product costs a widening multiply and a pairwise add per half vector. */
#define PANEL_ROWS 4   /* activation rows per pass over a panel (within EQ_PANEL_TILE) */

#define NEON_INLINE static inline __attribute__((always_inline))

/* acc[i][c] += four codes of rows 4c..4c+3 (w + 16c) times lane L of xv[i], for i < mt. */
#define PANEL_LANE(L)                                                                        \
    do {                                                                                     \
        const int8x16_t w0 = vld1q_s8(wq + 64 * (L)), w1 = vld1q_s8(wq + 64 * (L) + 16);     \
        const int8x16_t w2 = vld1q_s8(wq + 64 * (L) + 32), w3 = vld1q_s8(wq + 64 * (L) + 48); \
        _Pragma("GCC unroll 4") for (int i = 0; i < mt; i++) {                               \
            acc[i][0] = vdotq_laneq_s32(acc[i][0], w0, xv[i], L);                            \
            acc[i][1] = vdotq_laneq_s32(acc[i][1], w1, xv[i], L);                            \
            acc[i][2] = vdotq_laneq_s32(acc[i][2], w2, xv[i], L);                            \
            acc[i][3] = vdotq_laneq_s32(acc[i][3], w3, xv[i], L);                            \
        }                                                                                    \
    } while (0)

/* raw[(i * nsub + s) * EQ_PANEL + j]: sub-block s of panel row j against activation row i.
 * Sub-blocks are a multiple of EQ_SLOT codes (engine.c's fused path): whole loads of 16
 * activations (four steps). */
_Static_assert(EQ_SLOT % 16 == 0, "four panel steps per load of activations");
NEON_INLINE void panel_tile(const int8_t *w, const int8_t *x, int64_t k, const int mt,
                            int64_t nsub, int64_t steps, int32_t *raw)
{
    for (int64_t s = 0; s < nsub; s++) {
        int32x4_t acc[PANEL_ROWS][4];
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++)
            acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = vdupq_n_s32(0);
        const int8_t *xs = x + s * steps * 4, *wq = w + s * steps * 4 * EQ_PANEL;
        for (int64_t q = 0; q < steps; q += 4, xs += 16, wq += 16 * EQ_PANEL) {
            int8x16_t xv[PANEL_ROWS];
#pragma GCC unroll 4
            for (int i = 0; i < mt; i++)
                xv[i] = vld1q_s8(xs + i * k);
            PANEL_LANE(0);
            PANEL_LANE(1);
            PANEL_LANE(2);
            PANEL_LANE(3);
        }
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++) {
            int32_t *r = raw + (i * nsub + s) * EQ_PANEL;
            vst1q_s32(r, acc[i][0]);
            vst1q_s32(r + 4, acc[i][1]);
            vst1q_s32(r + 8, acc[i][2]);
            vst1q_s32(r + 12, acc[i][3]);
        }
    }
}
#undef PANEL_LANE

/* Sub-block s of panel rows 4c..4c+3 added to *part (and the mins' *partm): the scalar rule
 * of eq_combine_partials lane by lane. */
NEON_INLINE void panel_step(const eq_panel *p, int c, const int32_t *raw, const int32_t *xsum,
                            const float *xs, int64_t s, float32x4_t *part, float32x4_t *partm,
                            const int has_off, const int has_wm)
{
    const int64_t at = s * EQ_PANEL + 4 * c;
    int32x4_t r = vld1q_s32(raw + at);
    if (p->mult != 1)
        r = vmulq_s32(r, vdupq_n_s32(p->mult));
    int32x4_t o = has_off ? vmulq_s32(vld1q_s32(p->off + at), vdupq_n_s32(xsum[s]))
                          : vdupq_n_s32((int32_t)((uint32_t)p->off_c * (uint32_t)xsum[s]));
    float32x4_t x = vdupq_n_f32(xs[s]);
    float32x4_t w = vmulq_f32(x, vld1q_f32(p->ws + at));
    *part = vaddq_f32(*part, vmulq_f32(vcvtq_f32_s32(vsubq_s32(r, o)), w));
    if (has_wm) {
        float32x4_t v = vmulq_f32(x, vld1q_f32(p->wm + at));
        *partm = vaddq_f32(*partm, vmulq_f32(vdupq_n_f32((float)xsum[s]), v));
    }
}

/* One activation row's outputs for the panel's rows (nr of them), four rows at a time: partial
 * s % EQ_PARTIALS per sub-block, then the partials and the mins' partials summed in order
 * from 0.0f, as eq_combine_finish does. */
NEON_INLINE void panel_combine(const eq_panel *p, const int32_t *raw, const int32_t *xsum,
                               const float *xs, float *y, int nr, const int has_off,
                               const int has_wm)
{
    const int64_t nsub = p->nsub;
    for (int c = 0; 4 * c < nr; c++) {
        float32x4_t part[EQ_PARTIALS], partm[EQ_PARTIALS];
#pragma GCC unroll 8
        for (int h = 0; h < EQ_PARTIALS; h++)
            part[h] = partm[h] = vdupq_n_f32(0.0f);
        int64_t s = 0;
        for (; s + EQ_PARTIALS <= nsub; s += EQ_PARTIALS) {
#pragma GCC unroll 8
            for (int h = 0; h < EQ_PARTIALS; h++)
                panel_step(p, c, raw, xsum, xs, s + h, &part[h], &partm[h], has_off, has_wm);
        }
#pragma GCC unroll 8
        for (int h = 0; h < EQ_PARTIALS; h++)
            if (s + h < nsub)
                panel_step(p, c, raw, xsum, xs, s + h, &part[h], &partm[h], has_off, has_wm);
        float32x4_t sum = vdupq_n_f32(0.0f), summ = vdupq_n_f32(0.0f);
#pragma GCC unroll 8
        for (int h = 0; h < EQ_PARTIALS; h++) {
            sum = vaddq_f32(sum, part[h]);
            summ = vaddq_f32(summ, partm[h]);
        }
        sum = vaddq_f32(sum, summ);
        if (4 * c + 4 <= nr) {
            vst1q_f32(y + 4 * c, sum);
        } else {
            float v[4];
            vst1q_f32(v, sum);
            memcpy(y + 4 * c, v, sizeof(float) * (size_t)(nr - 4 * c));
        }
    }
}

static void panel(const eq_panel *p, const int8_t *x, int64_t m, const int32_t *xsum,
                  const float *xs, float *y, int64_t ystride, int nr, int32_t *raw)
{
    const int64_t k = p->k, nsub = p->nsub, steps = p->sub / 4;
    const int8_t *w = (const int8_t *)p->w;
    const int has_off = p->off != NULL, has_wm = p->wm != NULL;
    for (int64_t i0 = 0; i0 < m; i0 += PANEL_ROWS) {
        int mt = (int)(m - i0 < PANEL_ROWS ? m - i0 : PANEL_ROWS);
        const int8_t *xt = x + i0 * k;
        switch (mt) {  /* each tile height specialised by inlining */
        case 1: panel_tile(w, xt, k, 1, nsub, steps, raw); break;
        case 2: panel_tile(w, xt, k, 2, nsub, steps, raw); break;
        case 3: panel_tile(w, xt, k, 3, nsub, steps, raw); break;
        default: panel_tile(w, xt, k, 4, nsub, steps, raw); break;
        }
        for (int i = 0; i < mt; i++) {
            const int64_t row = i0 + i;
            const int32_t *ri = raw + i * nsub * EQ_PANEL;
            const int32_t *qs = xsum + row * nsub;
            const float *fs = xs + row * nsub;
            float *yi = y + row * ystride;
            if (has_off)
                has_wm ? panel_combine(p, ri, qs, fs, yi, nr, 1, 1) : panel_combine(p, ri, qs, fs, yi, nr, 1, 0);
            else
                has_wm ? panel_combine(p, ri, qs, fs, yi, nr, 0, 1) : panel_combine(p, ri, qs, fs, yi, nr, 0, 0);
        }
    }
}

/* Panel bytes (see eq_panel): per 16 bytes of four rows, a 4 x 4 transpose of 32-bit words
 * puts word q of the four rows in one vector; a NULL row gives zeros. */
static void panel_pack(const uint8_t *const *rows, int64_t k, uint32_t flip, uint8_t *out)
{
    const uint32x4_t flipv = vdupq_n_u32(flip);
    int64_t j = 0;
    for (; j + 16 <= k; j += 16, out += 16 * EQ_PANEL) {
        for (int g = 0; g < EQ_PANEL; g += 4) {
            uint32x4_t r[4];
            for (int i = 0; i < 4; i++)
                r[i] = rows[g + i] ? veorq_u32(vreinterpretq_u32_u8(vld1q_u8(rows[g + i] + j)), flipv)
                                   : vdupq_n_u32(0);
            uint32x4_t t0 = vtrn1q_u32(r[0], r[1]), t1 = vtrn2q_u32(r[0], r[1]);
            uint32x4_t t2 = vtrn1q_u32(r[2], r[3]), t3 = vtrn2q_u32(r[2], r[3]);
            uint64x2_t a0 = vreinterpretq_u64_u32(t0), a1 = vreinterpretq_u64_u32(t1);
            uint64x2_t a2 = vreinterpretq_u64_u32(t2), a3 = vreinterpretq_u64_u32(t3);
            uint8_t *o = out + 4 * g;  /* word q of rows g..g+3 at (q * EQ_PANEL + g) * 4 */
            vst1q_u8(o, vreinterpretq_u8_u64(vtrn1q_u64(a0, a2)));
            vst1q_u8(o + 4 * EQ_PANEL, vreinterpretq_u8_u64(vtrn1q_u64(a1, a3)));
            vst1q_u8(o + 8 * EQ_PANEL, vreinterpretq_u8_u64(vtrn2q_u64(a0, a2)));
            vst1q_u8(o + 12 * EQ_PANEL, vreinterpretq_u8_u64(vtrn2q_u64(a1, a3)));
        }
    }
    eq_panel_pack_scalar(rows, j, k, flip, out);
}
#endif

static int plan(const eq_qmatrix *w, int64_t m, eq_plan *p)
{
    const int64_t group = w->pack_group;
    if (w->k % EQ_SLOT)
        return 0;
    *p = (eq_plan){.decoded = 1};
    switch (w->kind) {
    case EQ_INT8:
        *p = (eq_plan){.adjust = 128};  /* the codes are signed bytes: c = u - 128 */
        return 1;
    case EQ_INT8_ASYM:
        *p = (eq_plan){.flip = 1, .adjust = 128};
        return 1;
    case EQ_INT4:
    case EQ_INT4_ASYM:
        if (m == 1 && group == 32)
            p->gemv = gemv_nib32;
        return 1;
    case EQ_POW2:
        if (m == 1 && group == 32) {
            p->gemv = gemv_pow2_32;
            p->adjust = EQ_OFFSET_POW2;  /* the table gives c itself */
        } else {
            p->flip = 1;  /* decoded bytes reach 128 */
            p->adjust = 128;
        }
        return 1;
    case EQ_TERNARY_2BIT:
    case EQ_INT2:       /* the same crumbs (u up to 3): the unpacking is layout, not value */
    case EQ_INT2_ASYM:
        if (m == 1 && group == 64)
            p->gemv = gemv_crumb64;
        else if (m == 1 && group % 128 == 0)
            p->gemv = gemv_crumb_planar;
        return 1;
    default:  /* base-3, binary, int3: decoded bytes 0..2, 0..1, 0..7 */
        return 1;
    }
}

/* ---- activation quantization ---------------------------------------------------------------- */

static void quantize_block(const float *x, int64_t n, int8_t *q, float *scale)
{
    float32x4_t vmax = vdupq_n_f32(0.0f);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(x + j)));
    float amax = vmaxvq_f32(vmax);
    for (; j < n; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    float s = amax / 127.0f;
    *scale = s;
    if (!(s > 0.0f)) {
        memset(q, 0, (size_t)n);
        return;
    }
    const float32x4_t vs = vdupq_n_f32(s);
    const float32x4_t hi = vdupq_n_f32(127.0f), lo = vdupq_n_f32(-127.0f);
    j = 0;
    for (; j + 8 <= n; j += 8) {
        /* same float32 operations as the scalar code: x / s, then round half to even */
        float32x4_t a = vrndnq_f32(vdivq_f32(vld1q_f32(x + j), vs));
        float32x4_t b = vrndnq_f32(vdivq_f32(vld1q_f32(x + j + 4), vs));
        int32x4_t ia = vcvtq_s32_f32(vmaxq_f32(vminq_f32(a, hi), lo));
        int32x4_t ib = vcvtq_s32_f32(vmaxq_f32(vminq_f32(b, hi), lo));
        int16x8_t h = vcombine_s16(vmovn_s32(ia), vmovn_s32(ib));
        vst1_s8(q + j, vmovn_s16(h));
    }
    for (; j < n; j++)
        q[j] = eq_quantize_code(x[j], s);
}

/* ---- float16 and popcount ------------------------------------------------------------------- */

static void halves_to_float(const uint16_t *h, int64_t n, float *out)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + i))));
    for (; i < n; i++)
        out[i] = eq_half_to_float(h[i]);
}

static uint64_t popcount_xor(const uint8_t *a, const uint8_t *b, int64_t nbytes)
{
    uint64_t total = 0;
    int64_t i = 0;
    for (; i + 16 <= nbytes; i += 16) {
        uint8x16_t c = vcntq_u8(veorq_u8(vld1q_u8(a + i), vld1q_u8(b + i)));
        total += vaddlvq_u8(c);
    }
    return total + eq_popcount_xor_scalar(a + i, b + i, nbytes - i);
}

const eq_simd_table TABLE = {
    .name = TABLE_NAME,
    .decode = {decode_int8, decode_int8_asym, decode_int4, decode_int4, decode_2bit, decode_base3,
               decode_bits, decode_pow2, decode_int3, decode_int3, decode_2bit, decode_2bit},
    .dot = dot,
    .quantize_block = quantize_block,
    .halves_to_float = halves_to_float,
    .popcount_xor = popcount_xor,
    .plan = plan,
    .slots = slots,
    .combine = combine,
#ifdef EQ_NEON_DOTPROD
    .panel = panel,
    .panel_pack = panel_pack,
#endif
};
