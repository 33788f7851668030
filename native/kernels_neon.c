/* NEON primitives for aarch64, compiled twice:
 *   -march=armv8-a                       -> eq_table_neon          (SMULL + SADALP dot)
 *   -march=armv8.2-a+dotprod (+ EQ_NEON_DOTPROD, via kernels_neon_dotprod.c)
 *                                        -> eq_table_neon_dotprod  (SDOT, vdotq_s32)
 * dispatch.c picks one from getauxval(AT_HWCAP).
 *
 * Both dots multiply signed bytes, so a decoded byte u (0..255) enters as u ^ 0x80 = u - 128
 * and 128 * sum(q) is added back: sum u*q = sum (u-128)*q + 128 * sum q, exact for every
 * byte. Decoders use one shift and one mask per vector, TBL for the pow2 lookup and an 8-bit
 * multiply for base-3 trits.
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

static void decode_2bit(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    const uint8x16_t three = vdupq_n_u8(3);
    int64_t quarter = group / 4;
    for (int64_t g = 0; g < k; g += group, row += quarter, out += group) {
        for (int l = 0; l < 4; l++) {
            const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * l));  /* negative: right shift */
            int64_t j = 0;
            for (; j + 16 <= quarter; j += 16)
                vst1q_u8(out + l * quarter + j, vandq_u8(vshlq_u8(vld1q_u8(row + j), shift), three));
            for (; j < quarter; j++)
                out[l * quarter + j] = (row[j] >> (2 * l)) & 3;
        }
    }
}

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
    for (; j < n; j++) {
        float v = nearbyintf(x[j] / s);
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        q[j] = (int8_t)v;
    }
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
               decode_bits, decode_pow2},
    .dot = dot,
    .quantize_block = quantize_block,
    .halves_to_float = halves_to_float,
    .popcount_xor = popcount_xor,
};
