/* AVX-512 primitives (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni plus the
 * AVX2 flags; used only when the CPU has all of them).
 *
 * The dot product is VPDPBUSD (unsigned byte times signed byte, four products summed into
 * each int32 lane, no saturation), so it is exact for every decoded byte 0..255 and needs no
 * widening path. XNOR popcounts use VPOPCNTQ when the CPU has AVX512_VPOPCNTDQ (checked at
 * run time: that function alone is compiled for it). Decoders, activation quantization and
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
               eq_avx2_decode_bits, eq_avx2_decode_pow2},
    .dot = dot_vnni,
    .quantize_block = eq_avx2_quantize_block,
    .halves_to_float = eq_avx2_halves_to_float,
    .popcount_xor = popcount_xor,
    .plan = x86_plan,
    .slots = x86_slots,
    .combine = x86_combine,
};
