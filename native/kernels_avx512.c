/* AVX-512 primitives (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni plus the
 * AVX2 flags; used only when the CPU has all of them).
 *
 * The dot product is VPDPBUSD (unsigned byte times signed byte, four products summed into
 * each int32 lane, no saturation), so it is exact for every decoded byte 0..255 and needs no
 * widening path. XNOR popcounts use VPOPCNTQ when the CPU has AVX512_VPOPCNTDQ (checked at
 * run time: those functions alone are compiled for it), else a nibble lookup (VPSHUFB) summed
 * by VPSADBW; the XNOR GEMM runs 4 x 4 register tiles of weight x activation rows. Decoders, activation quantization and
 * float16 conversion are the AVX2 ones.
 */
#include <immintrin.h>
#include <string.h>

#include "edgeq_native.h"

void eq_avx2_decode_int8(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_int8_asym(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_int4(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_pow2(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_2bit(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_int3(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_base3(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_decode_bits(const uint8_t *, int64_t, int64_t, uint8_t *);
void eq_avx2_quantize_block(const float *, int64_t, int8_t *, float *);
void eq_avx2_halves_to_float(const uint16_t *, int64_t, float *);
uint64_t eq_avx2_popcount_xor(const uint8_t *, const uint8_t *, int64_t);
extern int eq_has_vpopcntq;

/* Lane sums of one sub-block, 32 codes per VPDPBUSD (sub is a multiple of 32). */
static inline __m256i dot_sub(const uint8_t *u, const int8_t *x, int64_t sub)
{
    __m256i acc = _mm256_setzero_si256();
    int64_t j = 0;
    if (sub % 64 == 0) {
        __m512i acc512 = _mm512_setzero_si512();
        for (; j < sub; j += 64)
            acc512 = _mm512_dpbusd_epi32(acc512, _mm512_loadu_si512(u + j), _mm512_loadu_si512(x + j));
        return _mm256_add_epi32(_mm512_castsi512_si256(acc512), _mm512_extracti64x4_epi64(acc512, 1));
    }
    for (; j < sub; j += 32)
        acc = _mm256_dpbusd_epi32(acc, _mm256_loadu_si256((const __m256i *)(u + j)),
                                  _mm256_loadu_si256((const __m256i *)(x + j)));
    return acc;
}

static inline __m128i hsum8x4(__m256i a, __m256i b, __m256i c, __m256i d)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

static void dot_vnni(const uint8_t *u, const int8_t *x, int64_t k, int64_t sub,
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
        __m128i sums = hsum8x4(dot_sub(us, xs, sub), dot_sub(us + sub, xs + sub, sub),
                               dot_sub(us + 2 * sub, xs + 2 * sub, sub),
                               dot_sub(us + 3 * sub, xs + 3 * sub, sub));
        _mm_storeu_si128((__m128i *)(out + s), sums);
    }
    for (; s < nsub; s++) {
        __m128i v = hsum8x4(dot_sub(u + s * sub, x + s * sub, sub), _mm256_setzero_si256(),
                            _mm256_setzero_si256(), _mm256_setzero_si256());
        out[s] = _mm_cvtsi128_si32(v);
    }
}

__attribute__((target("avx512vpopcntdq"))) static uint64_t popcount_vpopcntq(
    const uint8_t *a, const uint8_t *b, int64_t nbytes)
{
    __m512i acc = _mm512_setzero_si512();
    int64_t i = 0;
    for (; i + 64 <= nbytes; i += 64) {
        __m512i v = _mm512_xor_si512(_mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
        acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(v));
    }
    return (uint64_t)_mm512_reduce_add_epi64(acc) + eq_avx2_popcount_xor(a + i, b + i, nbytes - i);
}

/* 8 accumulators of 8 lanes -> their 8 totals in order (pairs, then 128-bit lanes twice). */
static inline __m512i totals8(const __m512i *a)
{
    __m512i p[4], q[2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)  /* lane pair L: [a[2i] pair sum, a[2i+1] pair sum] */
        p[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                                _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)
        q[i] = _mm512_add_epi64(_mm512_shuffle_i64x2(p[2 * i], p[2 * i + 1], 0x88),
                                _mm512_shuffle_i64x2(p[2 * i], p[2 * i + 1], 0xDD));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(q[0], q[1], 0x88),
                            _mm512_shuffle_i64x2(q[0], q[1], 0xDD));
}

/* Per 64-bit lane, the popcount of v: VPOPCNTQ, or (without AVX512_VPOPCNTDQ) a nibble
 * lookup with VPSHUFB summed per lane by VPSADBW. */
__attribute__((target("avx512vpopcntdq"))) static inline __m512i popcnt_q(__m512i v)
{
    return _mm512_popcnt_epi64(v);
}

static inline __m512i popcnt_lut(__m512i v)
{
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512i n = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(v, low)),
                                _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), low)));
    return _mm512_sad_epu8(n, _mm512_setzero_si512());
}

__attribute__((target("avx512vpopcntdq"))) static inline __m256i popcnt_q256(__m256i v)
{
    return _mm256_popcnt_epi64(v);
}

static inline __m256i popcnt_lut256(__m256i v)
{
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i n = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                                _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
    return _mm256_sad_epu8(n, _mm256_setzero_si256());
}

/* Up to 8 bytes of row `row` from byte j on (fewer at the end of the row: zero-padded). */
static inline int64_t word_at(const uint8_t *row, int64_t j, int64_t nbytes)
{
    int64_t v = 0;
    if (nbytes - j >= 8)
        memcpy(&v, row + j, 8);
    else
        memcpy(&v, row + j, (size_t)(nbytes - j));
    return v;
}

/* 4 x 4 register tile: each 64-byte load of a weight row serves four activation rows. A
 * tail of more than 24 bytes is read with masked loads (zero bytes add nothing); a shorter
 * one 8 bytes at a time, the four weight rows' words in one 256-bit vector against each
 * activation row's word broadcast (lane a of tail[b] counts pair (a, b)). */
#define POPXOR_TILE(NAME, ATTR, POPCNT, POPCNT256)                                           \
    ATTR static void NAME(const uint8_t *w, int64_t wstride, const uint8_t *x,               \
                          int64_t xstride, int64_t nbytes, uint64_t pop[16])                 \
    {                                                                                        \
        __m512i acc[16];                                                                     \
        _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)                                \
            acc[i] = _mm512_setzero_si512();                                                 \
        int64_t j = 0, vec_end = nbytes % 64 > 24 ? nbytes : nbytes - nbytes % 64;           \
        for (; j < vec_end; j += 64) {                                                       \
            __mmask64 mask = nbytes - j >= 64 ? ~(__mmask64)0                                \
                                              : ((__mmask64)1 << (nbytes - j)) - 1;          \
            __m512i xv[4];                                                                   \
            _Pragma("GCC unroll 4") for (int b = 0; b < 4; b++)                              \
                xv[b] = _mm512_maskz_loadu_epi8(mask, x + b * xstride + j);                  \
            _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) {                            \
                __m512i wv = _mm512_maskz_loadu_epi8(mask, w + a * wstride + j);             \
                _Pragma("GCC unroll 4") for (int b = 0; b < 4; b++)                          \
                    acc[4 * a + b] = _mm512_add_epi64(acc[4 * a + b],                        \
                                                      POPCNT(_mm512_xor_si512(wv, xv[b])));  \
            }                                                                                \
        }                                                                                    \
        _mm512_storeu_si512(pop, totals8(acc));                                              \
        _mm512_storeu_si512(pop + 8, totals8(acc + 8));                                      \
        if (j == nbytes)                                                                     \
            return;                                                                          \
        __m256i tail[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),                   \
                           _mm256_setzero_si256(), _mm256_setzero_si256()};                  \
        for (; j < nbytes; j += 8) {                                                         \
            __m256i wv = _mm256_setr_epi64x(word_at(w, j, nbytes),                           \
                                            word_at(w + wstride, j, nbytes),                 \
                                            word_at(w + 2 * wstride, j, nbytes),             \
                                            word_at(w + 3 * wstride, j, nbytes));            \
            _Pragma("GCC unroll 4") for (int b = 0; b < 4; b++) {                            \
                __m256i xv = _mm256_set1_epi64x(word_at(x + b * xstride, j, nbytes));        \
                tail[b] = _mm256_add_epi64(tail[b], POPCNT256(_mm256_xor_si256(wv, xv)));    \
            }                                                                                \
        }                                                                                    \
        uint64_t t[4][4];                                                                    \
        for (int b = 0; b < 4; b++)                                                          \
            _mm256_storeu_si256((__m256i *)t[b], tail[b]);                                   \
        for (int a = 0; a < 4; a++)                                                          \
            for (int b = 0; b < 4; b++)                                                      \
                pop[4 * a + b] += t[b][a];                                                   \
    }
POPXOR_TILE(popxor_tile_vpopcntq, __attribute__((target("avx512vpopcntdq"))), popcnt_q, popcnt_q256)
POPXOR_TILE(popxor_tile_lut, , popcnt_lut, popcnt_lut256)
#undef POPXOR_TILE

static void popcount_xor_tile(const uint8_t *w, int64_t wstride, const uint8_t *x,
                              int64_t xstride, int64_t nbytes, uint64_t pop[16])
{
    if (eq_has_vpopcntq)
        popxor_tile_vpopcntq(w, wstride, x, xstride, nbytes, pop);
    else
        popxor_tile_lut(w, wstride, x, xstride, nbytes, pop);
}

static uint64_t popcount_xor(const uint8_t *a, const uint8_t *b, int64_t nbytes)
{
    return eq_has_vpopcntq ? popcount_vpopcntq(a, b, nbytes) : eq_avx2_popcount_xor(a, b, nbytes);
}

/* ---- fused matmul (VPDPBUSD) ---------------------------------------------------------------- */

#define EQ_VNNI 1
#include "kernels_x86_fused.h"

const eq_simd_table eq_table_avx512 = {
    .name = "avx512",
    .decode = {eq_avx2_decode_int8, eq_avx2_decode_int8_asym, eq_avx2_decode_int4,
               eq_avx2_decode_int4, eq_avx2_decode_2bit, eq_avx2_decode_base3,
               eq_avx2_decode_bits, eq_avx2_decode_pow2, eq_avx2_decode_int3,
               eq_avx2_decode_int3, eq_avx2_decode_2bit, eq_avx2_decode_2bit},
    .dot = dot_vnni,
    .quantize_block = eq_avx2_quantize_block,
    .halves_to_float = eq_avx2_halves_to_float,
    .popcount_xor = popcount_xor,
    .popcount_xor_tile = popcount_xor_tile,
    .plan = x86_plan,
    .slots = x86_slots,
    .combine = x86_combine,
    .panel = x86_panel,
    .panel_pack = x86_panel_pack,
    .panel_group = 2,
};
