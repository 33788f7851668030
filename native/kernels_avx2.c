/* AVX2 primitives (compiled with -mavx2 -mf16c -mpopcnt only; used when the CPU has them).
 *
 * Decoders unpack a row plane by plane (one shift and one mask per vector, PSHUFB for the
 * pow2 lookup); the dot product is PMADDUBSW + PMADDWD per 32 codes, or a widening
 * PMADDWD for decoded bytes above 128 where PMADDUBSW could saturate. Tails and sub-blocks
 * that are not a multiple of 32 go to the scalar code.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "edgeq_native.h"

/* ---- decoders ---------------------------------------------------------------------------- */

void eq_avx2_decode_int8(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    (void)group;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + j));
        _mm256_storeu_si256((__m256i *)(out + j), _mm256_xor_si256(v, flip));
    }
    eq_decode_scalar(EQ_INT8, row + j, k - j, group, out + j);
}

void eq_avx2_decode_int8_asym(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    (void)group;
    memcpy(out, row, (size_t)k);
}

/* Nibble planes of each group; lut maps a nibble to its decoded byte (identity for int4). */
static inline void nibble_planes(const uint8_t *row, int64_t k, int64_t group, uint8_t *out,
                                 __m128i lut, int use_lut, int kind)
{
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m256i low4x2 = _mm256_set1_epi8(0x0F);
    const __m256i lut2 = _mm256_broadcastsi128_si256(lut);
    int64_t half = group / 2;
    if (group == 32) {
        /* the common case: one 32-byte load holds two groups, 64 codes */
        int64_t g = 0;
        for (; g + 64 <= k; g += 64, row += 32, out += 64) {
            __m256i v = _mm256_loadu_si256((const __m256i *)row);
            __m256i lo = _mm256_and_si256(v, low4x2);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4x2);
            if (use_lut) {
                lo = _mm256_shuffle_epi8(lut2, lo);
                hi = _mm256_shuffle_epi8(lut2, hi);
            }
            /* group 0 is (lo, hi) of the low 128 bits, group 1 of the high 128 bits */
            _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_storeu_si256((__m256i *)(out + 32), _mm256_permute2x128_si256(lo, hi, 0x31));
        }
        k -= g;
    }
    for (int64_t g = 0; g < k; g += group, row += half, out += group) {
        int64_t j = 0;
        for (; j + 32 <= half; j += 32) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + j));
            __m256i lo = _mm256_and_si256(v, low4x2);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4x2);
            if (use_lut) {
                lo = _mm256_shuffle_epi8(lut2, lo);
                hi = _mm256_shuffle_epi8(lut2, hi);
            }
            _mm256_storeu_si256((__m256i *)(out + j), lo);
            _mm256_storeu_si256((__m256i *)(out + half + j), hi);
        }
        for (; j + 16 <= half; j += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(row + j));
            __m128i lo = _mm_and_si128(v, low4);
            __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
            if (use_lut) {
                lo = _mm_shuffle_epi8(lut, lo);
                hi = _mm_shuffle_epi8(lut, hi);
            }
            _mm_storeu_si128((__m128i *)(out + j), lo);
            _mm_storeu_si128((__m128i *)(out + half + j), hi);
        }
        for (; j < half; j++) {  /* groups whose half is not a multiple of 16 */
            uint8_t b[1] = {row[j]};
            uint8_t pair[2];
            eq_decode_scalar(kind, b, 2, 2, pair);
            out[j] = pair[0];
            out[half + j] = pair[1];
        }
    }
}

void eq_avx2_decode_int4(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    nibble_planes(row, k, group, out, _mm_setzero_si128(), 0, EQ_INT4);
}

void eq_avx2_decode_pow2(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    /* EQ_POW2_VALUES + 64 */
    const __m128i lut = _mm_setr_epi8(64, 65, 66, 68, 72, 80, 96, (char)128,
                                      64, 63, 62, 60, 56, 48, 32, 0);
    nibble_planes(row, k, group, out, lut, 1, EQ_POW2);
}

/* out[j] = ((in[j] >> right) << left) & mask for j < n, OR-ed into out[j] when merge: 32, 16
 * and 8 bytes at a time, the last few one by one. PSRLW / PSLLW move bits across the bytes of
 * a 16-bit lane; for the masks used here (3 after a right shift; 4 after a right shift by up
 * to 7 and a left shift by 2) every kept bit is the byte's own. Planes of short groups (int2
 * g64: 16 bytes, g96: 24; int3 g96's bit planes: 12) are mostly such partial vectors. */
static inline void plane_bytes(const uint8_t *in, int64_t n, int right, int left, uint8_t mask,
                               int merge, uint8_t *out)
{
    const __m128i r = _mm_cvtsi32_si128(right), l = _mm_cvtsi32_si128(left);
    const __m128i m16 = _mm_set1_epi8((char)mask), zero16 = _mm_setzero_si128();
    const __m256i m32 = _mm256_set1_epi8((char)mask), zero32 = _mm256_setzero_si256();
/* the rule on 128 bits of in, OR-ed with old (zero unless merge) */
#define PLANE128(v, old) _mm_or_si128(_mm_and_si128(_mm_sll_epi16(_mm_srl_epi16(v, r), l), m16), old)
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(in + j));
        __m256i old = merge ? _mm256_loadu_si256((const __m256i *)(out + j)) : zero32;
        v = _mm256_or_si256(_mm256_and_si256(_mm256_sll_epi16(_mm256_srl_epi16(v, r), l), m32), old);
        _mm256_storeu_si256((__m256i *)(out + j), v);
    }
    if (j + 16 <= n) {
        __m128i old = merge ? _mm_loadu_si128((const __m128i *)(out + j)) : zero16;
        _mm_storeu_si128((__m128i *)(out + j), PLANE128(_mm_loadu_si128((const __m128i *)(in + j)), old));
        j += 16;
    }
    if (j + 8 <= n) {
        __m128i old = merge ? _mm_loadl_epi64((const __m128i *)(out + j)) : zero16;
        _mm_storel_epi64((__m128i *)(out + j), PLANE128(_mm_loadl_epi64((const __m128i *)(in + j)), old));
        j += 8;
    }
#undef PLANE128
    for (; j < n; j++)
        out[j] = (uint8_t)((((in[j] >> right) << left) & mask) | (merge ? out[j] : 0));
}

/* One group of 32 codes, all in one vector: the group's bytes broadcast so that lane c holds
 * crumb byte c % 8 (code c is bits 2(c/8).. of it; the four lanes of a dword share c/8, so one
 * VPSRLVD shifts them) and bit-plane byte c % 4 (code c is its bit c/4, picked by a mask). */
static inline void group32(const uint8_t *crumbs, const uint8_t *bits, uint8_t *out)
{
    int64_t c8;
    memcpy(&c8, crumbs, sizeof c8);
    __m256i v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi64x(c8),
                                                   _mm256_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6)),
                                 _mm256_set1_epi8(3));
    if (bits) {
        const __m256i pick = _mm256_setr_epi8(1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8,
                                              16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64,
                                              -128, -128, -128, -128);   /* lane c: 1 << (c/4) */
        int32_t b4;
        memcpy(&b4, bits, sizeof b4);
        __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_set1_epi32(b4), pick), pick);
        v = _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(4)));
    }
    _mm256_storeu_si256((__m256i *)out, v);
}

#define PLANE_DECODER(name) void eq_avx2_decode_##name
#define PLANE_GROUP32 group32
#include "plane_decoders.h"
#undef PLANE_GROUP32
#undef PLANE_DECODER

void eq_avx2_decode_base3(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    static const uint16_t pow3[5] = {1, 3, 9, 27, 81};
    const __m256i low8 = _mm256_set1_epi16(0xFF);
    const __m256i three = _mm256_set1_epi16(3);
    int64_t stride = EQ_BASE3_BYTES_PER_GROUP(group);
    for (int64_t g = 0; g < k; g += group, row += stride, out += group) {
        for (int l = 0; l < 5; l++) {
            const __m256i mul = _mm256_set1_epi16((short)pow3[l]);
            int64_t valid = group - l * stride < stride ? group - l * stride : stride;
            int64_t j = 0;
            for (; j + 16 <= valid; j += 16) {
                /* trit = ((byte * 3^l) mod 256) * 3 >> 8, in 16-bit lanes */
                __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(row + j)));
                v = _mm256_and_si256(_mm256_mullo_epi16(v, mul), low8);
                v = _mm256_srli_epi16(_mm256_mullo_epi16(v, three), 8);
                __m128i packed = _mm_packus_epi16(_mm256_castsi256_si128(v),
                                                  _mm256_extracti128_si256(v, 1));
                _mm_storeu_si128((__m128i *)(out + l * stride + j), packed);
            }
            for (; j < valid; j++) {
                uint8_t shifted = (uint8_t)(row[j] * pow3[l]);
                out[l * stride + j] = (uint8_t)(((uint16_t)shifted * 3) >> 8);
            }
        }
    }
}

void eq_avx2_decode_bits(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    /* byte i of the result takes source byte i/8 and tests bit i%8 */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i one = _mm256_set1_epi8(1);
    int64_t j = 0;
    for (; j + 32 <= k; j += 32) {
        int32_t word;
        memcpy(&word, row + j / 8, 4);
        /* PSHUFB works per 128-bit lane: put the 4 bytes in both lanes first */
        __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(word), spread);
        v = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), one);
        _mm256_storeu_si256((__m256i *)(out + j), v);
    }
    for (; j < k; j++)
        out[j] = (row[j >> 3] >> (j & 7)) & 1;
    (void)group;
}

/* ---- dot product ------------------------------------------------------------------------- */

static inline __m256i dot32(const uint8_t *u, const int8_t *x, int wide)
{
    if (wide) {
        __m256i u0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)u));
        __m256i u1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(u + 16)));
        __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x));
        __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 16)));
        return _mm256_add_epi32(_mm256_madd_epi16(u0, x0), _mm256_madd_epi16(u1, x1));
    }
    /* u <= 128: a pair of products stays within int16 */
    __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)u),
                                     _mm256_loadu_si256((const __m256i *)x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

static inline __m256i dot_sub(const uint8_t *u, const int8_t *x, int64_t sub, int wide)
{
    __m256i acc = dot32(u, x, wide);
    for (int64_t j = 32; j < sub; j += 32)
        acc = _mm256_add_epi32(acc, dot32(u + j, x + j, wide));
    return acc;
}

static inline int32_t hsum8(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* The four lane sums of a, b, c, d. */
static inline __m128i hsum8x4(__m256i a, __m256i b, __m256i c, __m256i d)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

void eq_avx2_dot(const uint8_t *u, const int8_t *x, int64_t k, int64_t sub,
                 const int32_t *xsum, int wide, int32_t *out)
{
    if (sub % 32) {
        eq_dot_scalar(u, x, k, sub, xsum, wide, out);
        return;
    }
    int64_t nsub = k / sub, s = 0;
    for (; s + 4 <= nsub; s += 4) {
        const uint8_t *us = u + s * sub;
        const int8_t *xs = x + s * sub;
        __m128i sums = hsum8x4(dot_sub(us, xs, sub, wide), dot_sub(us + sub, xs + sub, sub, wide),
                               dot_sub(us + 2 * sub, xs + 2 * sub, sub, wide),
                               dot_sub(us + 3 * sub, xs + 3 * sub, sub, wide));
        _mm_storeu_si128((__m128i *)(out + s), sums);
    }
    for (; s < nsub; s++)
        out[s] = hsum8(dot_sub(u + s * sub, x + s * sub, sub, wide));
}

/* ---- activation quantization ---------------------------------------------------------------- */

void eq_avx2_quantize_block(const float *x, int64_t n, int8_t *q, float *scale)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 vmax = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask));
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float amax = 0.0f;
    for (int i = 0; i < 8; i++)
        amax = lanes[i] > amax ? lanes[i] : amax;
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
    const __m256 vs = _mm256_set1_ps(s);
    const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    j = 0;
    for (; j + 32 <= n; j += 32) {
        __m256i v[4];
        for (int b = 0; b < 4; b++) {
            /* same float32 operations as the scalar code: x / s, then round half to even */
            __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + j + 8 * b), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v[b] = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(r, hi), lo));
        }
        __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        /* the packs interleave 128-bit lanes: put the 32-bit groups back in order */
        w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + j), w);
    }
    for (; j < n; j++)
        q[j] = eq_quantize_code(x[j], s);
}

/* ---- float16 and popcount ------------------------------------------------------------------- */

void eq_avx2_halves_to_float(const uint16_t *h, int64_t n, float *out)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++)
        out[i] = eq_half_to_float(h[i]);
}

uint64_t eq_avx2_popcount_xor(const uint8_t *a, const uint8_t *b, int64_t nbytes)
{
    uint64_t total = 0;
    int64_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t wa, wb;
        memcpy(&wa, a + i, 8);
        memcpy(&wb, b + i, 8);
        total += (uint64_t)_mm_popcnt_u64(wa ^ wb);
    }
    return total + eq_popcount_xor_scalar(a + i, b + i, nbytes - i);
}

/* ---- fused matmul ------------------------------------------------------------------------ */

#define EQ_VNNI 0
#include "kernels_x86_fused.h"

const eq_simd_table eq_table_avx2 = {
    .name = "avx2",
    .decode = {eq_avx2_decode_int8, eq_avx2_decode_int8_asym, eq_avx2_decode_int4,
               eq_avx2_decode_int4, eq_avx2_decode_2bit, eq_avx2_decode_base3,
               eq_avx2_decode_bits, eq_avx2_decode_pow2, eq_avx2_decode_int3,
               eq_avx2_decode_int3, eq_avx2_decode_2bit, eq_avx2_decode_2bit},
    .dot = eq_avx2_dot,
    .quantize_block = eq_avx2_quantize_block,
    .halves_to_float = eq_avx2_halves_to_float,
    .popcount_xor = eq_avx2_popcount_xor,
    .plan = x86_plan,
    .slots = x86_slots,
    .combine = x86_combine,
};
