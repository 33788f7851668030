/* The fused matmul kernels for x86, shared by two builds (a template by inclusion):
 *   kernels_avx2.c    EQ_VNNI 0: byte dot = PMADDUBSW + PMADDWD (exact only for u <= 128,
 *                     so int8 rows take a widening PMADDWD path)
 *   kernels_avx512.c  EQ_VNNI 1: byte dot = VPDPBUSD on 256-bit vectors (AVX512-VL + VNNI),
 *                     exact for every u; on Zen 4 a 512-bit op costs two 256-bit ones, so
 *                     256-bit vectors lose nothing there and keep one code path.
 * Every slot sum (32 codes) is an exact integer modulo 2^32; the float rule is in combine.
 *
 * Layouts unpacked in registers for m = 1 (everything else decodes a row into scratch):
 *   nibbles (int4, int4_asym, pow2) with groups of 32 and ternary 2-bit with groups of 64:
 *     one 32-byte load holds two groups A, B of 16 bytes; plane l (the codes 16l..16l+15 of
 *     a group: bits 4l.. of each byte for nibbles, 2l.. for crumbs) of both groups comes out
 *     of one shift and one mask. The activations are rearranged once per call to match
 *     (prep_pair16: per pair of groups, plane by plane, A's 16 values then B's), so two
 *     planes of one slot accumulate into one vector whose 128-bit halves are A and B.
 *   ternary 2-bit with groups (or rows) a multiple of 128: each 32-byte load yields 32 codes
 *     of each of the four planes, read against the activations in their natural order;
 *     other multiples of 32 from 128 on slot by slot, a slot across two planes in two parts.
 * m >= EQ_PANEL_MIN_M on AVX-512 (x86_panel): rows packed into panels (eq_panel), sums per
 * row in the lanes of one accumulator, the combine done lane by lane in the same float order.
 * Include after <immintrin.h>, "edgeq_native.h" and a definition of EQ_VNNI.
 */

#define X86_INLINE static inline __attribute__((always_inline))

/* ---- byte dot products: acc + (4 products summed per int32 lane) ----------------------- */

#if EQ_VNNI
X86_INLINE __m256i dot_narrow(__m256i acc, __m256i u, __m256i x) { return _mm256_dpbusd_epi32(acc, u, x); }
X86_INLINE __m256i dot_wide(__m256i acc, __m256i u, __m256i x) { return _mm256_dpbusd_epi32(acc, u, x); }
/* two planes of small codes (u <= 15) into one fresh accumulator */
X86_INLINE __m256i dot_pair_small(__m256i u0, __m256i x0, __m256i u1, __m256i x1)
{
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u0, x0), u1, x1);
}
#else
/* u <= 128: a pair of products stays within int16 */
X86_INLINE __m256i dot_narrow(__m256i acc, __m256i u, __m256i x)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1)));
}
/* any u: widen to 16 bits, no saturation */
X86_INLINE __m256i dot_wide(__m256i acc, __m256i u, __m256i x)
{
    __m256i u0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(u));
    __m256i u1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1));
    __m256i x0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
    __m256i x1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1));
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(u0, x0), _mm256_madd_epi16(u1, x1)));
}
/* u <= 15: four products of two planes stay within int16 (4 * 15 * 128 < 2^15) */
X86_INLINE __m256i dot_pair_small(__m256i u0, __m256i x0, __m256i u1, __m256i x1)
{
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u0, x0), _mm256_maddubs_epi16(u1, x1));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
#endif

/* ---- reductions ----------------------------------------------------------------------------- */

/* The totals of four vectors of eight lanes. */
X86_INLINE __m128i sum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* Per 128-bit half, the totals of the four lanes of a0..a3: [a0 a1 a2 a3 | a0 a1 a2 a3]. */
X86_INLINE __m256i quad_sums(__m256i a0, __m256i a1, __m256i a2, __m256i a3)
{
    return _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
}

/* ---- m > 1 (and int8 rows): bytes against up to four activation rows ---------------------- */

X86_INLINE void slots_tile(const uint8_t *src, int flip, int wide, const int8_t *x,
                           int64_t xstride, const int mt, int64_t k, int32_t *raw, int64_t rstride)
{
    const __m256i flipv = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    int64_t nslots = k / EQ_SLOT;
    for (int64_t s = 0; s < nslots; s += 4) {
        __m256i acc[EQ_MAX_TILE][4];   /* in registers: the loops unrolled (not at -O2 alone) */
        int n = nslots - s < 4 ? (int)(nslots - s) : 4;
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            if (j >= n) {
                for (int i = 0; i < mt; i++)
                    acc[i][j] = zero;
                continue;
            }
            const int64_t at = (s + j) * EQ_SLOT;
            __m256i u = _mm256_loadu_si256((const __m256i *)(src + at));
            if (flip)
                u = _mm256_xor_si256(u, flipv);
#pragma GCC unroll 4
            for (int i = 0; i < mt; i++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x + i * xstride + at));
                acc[i][j] = wide ? dot_wide(zero, u, xv) : dot_narrow(zero, u, xv);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < mt; i++)  /* raw has EQ_RAW_PAD slack for the last 4 */
            _mm_storeu_si128((__m128i *)(raw + i * rstride + s),
                             sum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    }
}

/* The (flip, wide) pairs plans use, times the tile heights: each specialised by inlining. */
#define SLOTS_CASE(F, W)                                                                     \
    switch (mt) {                                                                            \
    case 1: slots_tile(src, F, W, x, xstride, 1, k, raw, rstride); return;                   \
    case 2: slots_tile(src, F, W, x, xstride, 2, k, raw, rstride); return;                   \
    case 3: slots_tile(src, F, W, x, xstride, 3, k, raw, rstride); return;                   \
    default: slots_tile(src, F, W, x, xstride, 4, k, raw, rstride); return;                  \
    }

static void x86_slots(const uint8_t *src, int flip, int wide, const int8_t *x, int64_t xstride,
                      int mt, int64_t k, int32_t *raw, int64_t rstride)
{
    if (flip)
        SLOTS_CASE(1, 1)
    else if (wide)
        SLOTS_CASE(0, 1)
    else
        SLOTS_CASE(0, 0)
}

#if !EQ_VNNI
/* ---- m = 1: two 16-byte groups per load ----------------------------------------------------- */

/* Activations for gemv_pair16: per pair of groups of `group` codes, plane l (16 codes) of
 * group A then of group B; a missing last B is zeros. Writes prep_pair16_bytes(k, group). */
static int64_t prep_pair16_bytes(int64_t k, int64_t group)
{
    return (k / group + 1) / 2 * 2 * group;
}

static void prep_pair16(const int8_t *x, int64_t k, int64_t group, int8_t *xp)
{
    int64_t ngroups = k / group, planes = group / 16;
    for (int64_t g = 0; g < ngroups; g += 2, xp += 2 * group) {
        const int8_t *a = x + g * group, *b = a + group;
        for (int64_t l = 0; l < planes; l++) {
            __m128i va = _mm_loadu_si128((const __m128i *)(a + 16 * l));
            __m128i vb = g + 1 < ngroups ? _mm_loadu_si128((const __m128i *)(b + 16 * l))
                                         : _mm_setzero_si128();
            _mm_storeu_si128((__m128i *)(xp + 32 * l), va);
            _mm_storeu_si128((__m128i *)(xp + 32 * l + 16), vb);
        }
    }
}

/* The accumulator of planes 2h and 2h + 1 of a loaded pair of groups: lanes 0-3 hold group A's
 * slot h, lanes 4-7 group B's. */
X86_INLINE __m256i pair16_acc(__m256i v, const int8_t *xg, int h, const int bits, const int lut)
{
    const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
    __m256i u0 = _mm256_and_si256(_mm256_srli_epi16(v, 2 * h * bits), mask);
    __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(v, (2 * h + 1) * bits), mask);
    __m256i x0 = _mm256_loadu_si256((const __m256i *)(xg + 64 * h));
    __m256i x1 = _mm256_loadu_si256((const __m256i *)(xg + 64 * h + 32));
    if (!lut)
        return dot_pair_small(u0, x0, u1, x1);
    /* pow2: EQ_POW2_VALUES + 64, up to 128, so two separate dots */
    const __m256i table = _mm256_setr_epi8(64, 65, 66, 68, 72, 80, 96, (char)128, 64, 63, 62,
                                           60, 56, 48, 32, 0, 64, 65, 66, 68, 72, 80, 96,
                                           (char)128, 64, 63, 62, 60, 56, 48, 32, 0);
    u0 = _mm256_shuffle_epi8(table, u0);
    u1 = _mm256_shuffle_epi8(table, u1);
    return dot_narrow(dot_narrow(_mm256_setzero_si256(), u0, x0), u1, x1);
}

/* Slot sums of one row whose groups are 16 bytes of `planes` planes of `bits` bits (nibbles:
 * 2 x 4, crumbs: 4 x 2); lut: map nibbles through pow2's table. A pair of groups holds
 * `planes` slots; eight slots (4 accumulators) are reduced at a time. */
X86_INLINE void pair16_row(const uint8_t *row, const int8_t *xp, int64_t k, const int planes,
                           const int bits, const int lut, int32_t *raw)
{
    /* lane of the reduced vector holding each slot of the eight (see quad_sums) */
    const __m256i order = planes == 2 ? _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)
                                      : _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    const int64_t group = 16 * planes, ngroups = k / group;
    const int pairs = 8 / planes, block = 2 * pairs;  /* per eight slots */
    int64_t g = 0;
    for (; g + block <= ngroups; g += block) {
        __m256i acc[4];
        for (int p = 0; p < pairs; p++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + 16 * (g + 2 * p)));
            for (int h = 0; h < planes / 2; h++)
                acc[p * (planes / 2) + h] = pair16_acc(v, xp + (g + 2 * p) * group, h, bits, lut);
        }
        _mm256_storeu_si256((__m256i *)(raw + g * planes / 2),
                            _mm256_permutevar8x32_epi32(quad_sums(acc[0], acc[1], acc[2], acc[3]), order));
    }
    if (g == ngroups)
        return;
    /* the last, partial block; slots past the row are zeros written into raw's slack */
    __m256i acc[4];
    for (int p = 0; p < pairs; p++) {
        const int64_t ga = g + 2 * p;
        for (int h = 0; h < planes / 2; h++)
            acc[p * (planes / 2) + h] = _mm256_setzero_si256();
        if (ga >= ngroups)
            continue;
        __m256i v = ga + 1 < ngroups
            ? _mm256_loadu_si256((const __m256i *)(row + 16 * ga))
            /* a last group alone: 16 bytes, no read past the row */
            : _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128((const __m128i *)(row + 16 * ga)));
        for (int h = 0; h < planes / 2; h++)
            acc[p * (planes / 2) + h] = pair16_acc(v, xp + ga * group, h, bits, lut);
    }
    _mm256_storeu_si256((__m256i *)(raw + g * planes / 2),
                        _mm256_permutevar8x32_epi32(quad_sums(acc[0], acc[1], acc[2], acc[3]), order));
}

static void gemv_nib32(const uint8_t *row, const int8_t *xp, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    pair16_row(row, xp, k, 2, 4, 0, raw);
}

static void gemv_pow2_32(const uint8_t *row, const int8_t *xp, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    pair16_row(row, xp, k, 2, 4, 1, raw);
}

static void gemv_crumb64(const uint8_t *row, const int8_t *xp, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    pair16_row(row, xp, k, 4, 2, 0, raw);
}
#endif

#if EQ_VNNI
/* ---- m = 1 on AVX-512: four 16-byte groups per 64-byte load ---------------------------------
 * The same planes as pair16 with 512-bit vectors: plane l of groups g..g+3 pairs with 64
 * activations (prep_quad16: per four groups, plane by plane, 16 values of each group), and
 * each 128-bit quarter of an accumulator is one group's slot. */
static int64_t prep_quad16_bytes(int64_t k, int64_t group)
{
    return (k / group + 3) / 4 * 4 * group;
}

static void prep_quad16(const int8_t *x, int64_t k, int64_t group, int8_t *xp)
{
    int64_t ngroups = k / group, planes = group / 16;
    for (int64_t g = 0; g < ngroups; g += 4, xp += 4 * group)
        for (int64_t l = 0; l < planes; l++)
            for (int64_t i = 0; i < 4; i++) {
                __m128i v = g + i < ngroups ? _mm_loadu_si128((const __m128i *)(x + (g + i) * group + 16 * l))
                                            : _mm_setzero_si128();
                _mm_storeu_si128((__m128i *)(xp + 64 * l + 16 * i), v);
            }
}

/* Planes 2h and 2h + 1 of four loaded groups: quarter i holds group i's slot h. */
X86_INLINE __m512i quad16_acc(__m512i v, const int8_t *xg, int h, const int bits, const int lut)
{
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    __m512i u0 = _mm512_and_si512(_mm512_srli_epi16(v, 2 * h * bits), mask);
    __m512i u1 = _mm512_and_si512(_mm512_srli_epi16(v, (2 * h + 1) * bits), mask);
    if (lut) {  /* pow2: EQ_POW2_VALUES + 64 in every quarter */
        const __m512i table = _mm512_broadcast_i32x4(_mm_setr_epi8(
            64, 65, 66, 68, 72, 80, 96, (char)128, 64, 63, 62, 60, 56, 48, 32, 0));
        u0 = _mm512_shuffle_epi8(table, u0);
        u1 = _mm512_shuffle_epi8(table, u1);
    }
    __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u0, _mm512_loadu_si512(xg + 128 * h));
    return _mm512_dpbusd_epi32(acc, u1, _mm512_loadu_si512(xg + 128 * h + 64));
}

/* Eight slot sums from two accumulators of four quarters each: lane i of the result is
 * quarter order[i] (a's quarters are 0-3, b's 4-7). */
X86_INLINE __m256i quarters8(__m512i a, __m512i b, __m512i order)
{
    __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));  /* [a b a b] per quarter */
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(order, t));
}

/* The bytes of the first n (< 4 or 4) 16-byte quarters. */
X86_INLINE __mmask64 quarters_mask(int64_t n) { return n >= 4 ? ~(__mmask64)0 : ((__mmask64)1 << (16 * n)) - 1; }

X86_INLINE void quad16_row(const uint8_t *row, const int8_t *xp, int64_t k, const int planes,
                           const int bits, const int lut, int32_t *raw)
{
    /* quarter q of a sits at lane 4q of t, of b at 4q + 1; crumbs: a holds slots 0, 2, 4, 6 */
    const __m512i order = planes == 2
        ? _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0)
        : _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    const int64_t group = 16 * planes, ngroups = k / group;
    const int64_t block = 16 / planes;  /* groups per eight slots: two accumulators */
    int64_t g = 0;
    for (; g + block <= ngroups; g += block) {
        __m512i acc[2];
        if (planes == 2) {
            acc[0] = quad16_acc(_mm512_loadu_si512(row + 16 * g), xp + g * group, 0, bits, lut);
            acc[1] = quad16_acc(_mm512_loadu_si512(row + 16 * (g + 4)), xp + (g + 4) * group, 0, bits, lut);
        } else {
            __m512i v = _mm512_loadu_si512(row + 16 * g);
            acc[0] = quad16_acc(v, xp + g * group, 0, bits, lut);
            acc[1] = quad16_acc(v, xp + g * group, 1, bits, lut);
        }
        _mm256_storeu_si256((__m256i *)(raw + g * planes / 2), quarters8(acc[0], acc[1], order));
    }
    if (g == ngroups)
        return;
    /* the last, partial block: masked loads stop at the row's end; the activations are
     * zero-padded by prep_quad16; slots past the row land in raw's slack */
    int64_t have = ngroups - g;  /* 1 .. block - 1 */
    __m512i a, b;
    if (planes == 2) {
        int64_t h0 = have < 4 ? have : 4, h1 = have - h0;
        a = quad16_acc(_mm512_maskz_loadu_epi8(quarters_mask(h0), row + 16 * g), xp + g * group, 0, bits, lut);
        b = h1 > 0 ? quad16_acc(_mm512_maskz_loadu_epi8(quarters_mask(h1), row + 16 * (g + 4)),
                                xp + (g + 4) * group, 0, bits, lut)
                   : _mm512_setzero_si512();
    } else {
        __m512i v = _mm512_maskz_loadu_epi8(quarters_mask(have), row + 16 * g);
        a = quad16_acc(v, xp + g * group, 0, bits, lut);
        b = quad16_acc(v, xp + g * group, 1, bits, lut);
    }
    _mm256_storeu_si256((__m256i *)(raw + g * planes / 2), quarters8(a, b, order));
}

static void gemv_nib32(const uint8_t *row, const int8_t *xp, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    quad16_row(row, xp, k, 2, 4, 0, raw);
}

static void gemv_pow2_32(const uint8_t *row, const int8_t *xp, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    quad16_row(row, xp, k, 2, 4, 1, raw);
}

static void gemv_crumb64(const uint8_t *row, const int8_t *xp, int64_t k, int64_t group, int32_t *raw)
{
    (void)group;
    quad16_row(row, xp, k, 4, 2, 0, raw);
}
#endif

/* ---- m = 1: ternary 2-bit, planes of whole slots (group a multiple of 128) --------------- */

static void gemv_crumb_planar(const uint8_t *row, const int8_t *x, int64_t k, int64_t group,
                              int32_t *raw)
{
    const __m256i mask = _mm256_set1_epi8(3), zero = _mm256_setzero_si256();
    const int64_t plane = group / 4, chunks = plane / 32, ngroups = k / group;
    for (int64_t g = 0; g < ngroups; g++, row += plane, x += group, raw += group / EQ_SLOT) {
        int64_t j = 0;
        if (chunks % 4 == 0) {
            /* four loads at a time: four consecutive slots of each plane */
            for (; j < chunks; j += 4) {
                __m256i acc[4][4];   /* in registers: both loops unrolled (not at -O2 alone) */
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(row + 32 * (j + c)));
#pragma GCC unroll 4
                    for (int l = 0; l < 4; l++) {
                        __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, 2 * l), mask);
                        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + l * plane + 32 * (j + c)));
                        acc[l][c] = dot_narrow(zero, u, xv);
                    }
                }
#pragma GCC unroll 4
                for (int l = 0; l < 4; l++)
                    _mm_storeu_si128((__m128i *)(raw + l * chunks + j),
                                     sum4(acc[l][0], acc[l][1], acc[l][2], acc[l][3]));
            }
            continue;
        }
        for (; j < chunks; j++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(row + 32 * j));
            __m256i acc[4];
#pragma GCC unroll 4
            for (int l = 0; l < 4; l++) {
                __m256i u = _mm256_and_si256(_mm256_srli_epi16(v, 2 * l), mask);
                acc[l] = dot_narrow(zero, u, _mm256_loadu_si256((const __m256i *)(x + l * plane + 32 * j)));
            }
            int32_t s[4];
            _mm_storeu_si128((__m128i *)s, sum4(acc[0], acc[1], acc[2], acc[3]));
            for (int l = 0; l < 4; l++)
                raw[l * chunks + j] = s[l];
        }
    }
}

/* ---- m = 1: ternary 2-bit, groups of 32 * (4j + 1..3) codes, at least 128 -----------------
 * Planes of P = group/4 bytes, P a multiple of 8 and at least 32, so a plane may start mid-slot.
 * Each slot is read at its place: a slot inside plane l is the 32 bytes from its code's byte,
 * shifted by 2l; a slot across planes l and l + 1 takes the last a bytes of plane l (the
 * load ending at the plane's last byte, its first 32 - a bytes masked off) and the first
 * 32 - a bytes of plane l + 1. Every load stays within the group's bytes and activations. */
X86_INLINE __m256i crumb_slot(const uint8_t *row, const int8_t *xg, int64_t plane, int64_t c0,
                              int64_t l, int64_t j)
{
    const __m256i mask = _mm256_set1_epi8(3), zero = _mm256_setzero_si256();
    const __m128i shift = _mm_cvtsi32_si128((int)(2 * l));
    if (j + EQ_SLOT <= plane) {
        __m256i u = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(row + j)), shift), mask);
        return dot_narrow(zero, u, _mm256_loadu_si256((const __m256i *)(xg + c0)));
    }
    const int a = (int)(plane - j);  /* codes of the slot in plane l: 8, 16 or 24 */
    const __m256i first = _mm256_cmpgt_epi8(_mm256_set1_epi8((char)(32 - a)),
        _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                         21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31));  /* bytes i < 32 - a */
    __m256i u0 = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)(row + plane - 32)), shift), mask);
    __m256i u1 = _mm256_and_si256(_mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)row),
                                                   _mm_cvtsi32_si128((int)(2 * l + 2))), mask);
    u0 = _mm256_andnot_si256(first, u0);
    u1 = _mm256_and_si256(first, u1);
    __m256i acc = dot_narrow(zero, u0, _mm256_loadu_si256((const __m256i *)(xg + c0 + a - 32)));
    return dot_narrow(acc, u1, _mm256_loadu_si256((const __m256i *)(xg + c0 + a)));
}

/* Slot s (zeros past the group's nslots), then l, j moved on to slot s + 1. */
X86_INLINE __m256i crumb_next(const uint8_t *row, const int8_t *xg, int64_t plane, int64_t nslots,
                              int64_t s, int64_t *l, int64_t *j)
{
    __m256i acc = s < nslots ? crumb_slot(row, xg, plane, s * EQ_SLOT, *l, *j) : _mm256_setzero_si256();
    *j += EQ_SLOT;
    if (*j >= plane) {
        *j -= plane;
        *l += 1;
    }
    return acc;
}

static void gemv_crumb_slots(const uint8_t *row, const int8_t *x, int64_t k, int64_t group,
                             int32_t *raw)
{
    const int64_t plane = group / 4, ngroups = k / group, nslots = group / EQ_SLOT;
    for (int64_t g = 0; g < ngroups; g++, row += plane, x += group, raw += nslots) {
        /* four slots per reduction; the lanes past the group land in the next group's slots
         * (written again next) or in raw's slack */
        int64_t l = 0, j = 0;  /* plane and byte of the next slot's first code */
        for (int64_t s = 0; s < nslots; s += 4) {
            __m256i a0 = crumb_next(row, x, plane, nslots, s, &l, &j);
            __m256i a1 = crumb_next(row, x, plane, nslots, s + 1, &l, &j);
            __m256i a2 = crumb_next(row, x, plane, nslots, s + 2, &l, &j);
            __m256i a3 = crumb_next(row, x, plane, nslots, s + 3, &l, &j);
            _mm_storeu_si128((__m128i *)(raw + s), sum4(a0, a1, a2, a3));
        }
    }
}

/* ---- the float sum ----------------------------------------------------------------------- */

/* How one row reads a per-sub-block quantity: absent, one constant, or float16 / float32 /
 * uint8 (zero points) / int32 (expanded offsets) per sub-block. */
enum { V_NONE, V_CONST, V_F16, V_F32, V_U8, V_I32 };

typedef struct {
    const void *p;  /* the row's values from sub-block 0 */
    __m256 c;       /* V_CONST */
    __m256i ci;     /* offsets: the constant */
} rowsrc;

X86_INLINE int vals_mode(const eq_rowvals *v)
{
    return !v->p ? V_NONE : v->sub == 0 ? V_CONST : v->f16 ? V_F16 : V_F32;
}

X86_INLINE rowsrc vals_src(const eq_rowvals *v, int j, const int mode)
{
    rowsrc r = {NULL, _mm256_setzero_ps(), _mm256_setzero_si256()};
    int64_t at = j * v->row;
    if (mode == V_CONST)
        r.c = _mm256_set1_ps(v->f16 ? eq_half_to_float(((const uint16_t *)v->p)[at])
                                    : ((const float *)v->p)[at]);
    else if (mode == V_F16)
        r.p = (const uint16_t *)v->p + at;
    else if (mode == V_F32)
        r.p = (const float *)v->p + at;
    return r;
}

/* Lanes [0, n) of the tail block of an array of nsub values: the n values from s on, read
 * without passing nsub; the other lanes are cleared by the caller's mask. */
X86_INLINE __m256i tail_index(int n) { return _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 - n)); }

X86_INLINE __m256 load_halves(const uint16_t *h, int64_t s, int n, int64_t nsub)
{
    if (n == 8)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + s)));
#if EQ_VNNI
    (void)nsub;
    return _mm256_cvtph_ps(_mm_maskz_loadu_epi16((__mmask8)((1u << n) - 1), h + s));
#else
    if (nsub >= 8)  /* the eight values ending at nsub, the last n moved to the front */
        return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + nsub - 8))),
                                        tail_index(n));
    uint16_t tmp[8] = {0};
    for (int i = 0; i < n; i++)
        tmp[i] = h[s + i];
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tmp));
#endif
}

X86_INLINE __m256i load_bytes(const uint8_t *b, int64_t s, int n, int64_t nsub)
{
    if (n == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + s)));
#if EQ_VNNI
    (void)nsub;
    return _mm256_cvtepu8_epi32(_mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1), b + s));
#else
    if (nsub >= 8)
        return _mm256_permutevar8x32_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + nsub - 8))),
                                           tail_index(n));
    uint8_t tmp[8] = {0};
    for (int i = 0; i < n; i++)
        tmp[i] = b[s + i];
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)tmp));
#endif
}

X86_INLINE __m256 load_vals(const rowsrc *v, const int mode, int64_t s, int n, int64_t nsub,
                            __m256i mask)
{
    __m256 r = mode == V_CONST ? v->c
             : mode == V_F16 ? load_halves((const uint16_t *)v->p, s, n, nsub)
             : n == 8 ? _mm256_loadu_ps((const float *)v->p + s)
                      : _mm256_maskload_ps((const float *)v->p + s, mask);
    return n == 8 ? r : _mm256_and_ps(r, _mm256_castsi256_ps(mask));
}

/* Sub-blocks [s, s + n) of one row (n <= 8) added to the partials a / am: lane p is the scalar
 * rule's partial p, with the same operations. In a last block with n < 8 the empty lanes add
 * +0 * 0, which leaves every final sum unchanged (the running sum starts at +0, so it is never
 * -0, and adding a zero of either sign keeps it). */
X86_INLINE void combine_block(const eq_rowscale *rs, const rowsrc *ws, const rowsrc *wm,
                              const rowsrc *off, const int WS, const int WM, const int OFF,
                              const int32_t *raw, const int32_t *xsum, const float *xs, int64_t s,
                              int n, __m256 *a, __m256 *am)
{
    const int64_t nsub = rs->nsub;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i q, r, o = off->ci;
    __m256 x;
    if (n == 8) {
        q = _mm256_loadu_si256((const __m256i *)(xsum + s));
        r = _mm256_loadu_si256((const __m256i *)(raw + s));
        x = _mm256_loadu_ps(xs + s);
    } else {
        q = _mm256_maskload_epi32(xsum + s, mask);
        r = _mm256_maskload_epi32(raw + s, mask);
        x = _mm256_maskload_ps(xs + s, mask);
    }
    if (OFF == V_U8)
        o = _mm256_sub_epi32(load_bytes((const uint8_t *)off->p, s, n, nsub), _mm256_set1_epi32(rs->zero_bias));
    else if (OFF == V_I32)
        o = n == 8 ? _mm256_loadu_si256((const __m256i *)((const int32_t *)off->p + s))
                   : _mm256_maskload_epi32((const int32_t *)off->p + s, mask);
    if (rs->mult != 1)
        r = _mm256_mullo_epi32(r, _mm256_set1_epi32(rs->mult));
    /* no offset (int4_asym): skip the multiply, a slow one (two uops, ten cycles on Zen 4) */
    int no_offset = OFF == V_CONST && !rs->zeros && rs->off == 0;
    __m256i isum = no_offset ? r : _mm256_sub_epi32(r, _mm256_mullo_epi32(o, q));
    __m256 w = load_vals(ws, WS, s, n, nsub, mask);
    *a = _mm256_add_ps(*a, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(x, w)));
    if (WM != V_NONE) {
        __m256 v = load_vals(wm, WM, s, n, nsub, mask);
        *am = _mm256_add_ps(*am, _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_mul_ps(x, v)));
    }
}

X86_INLINE void combine_row_t(const eq_rowscale *rs, int j, const int32_t *raw,
                              const int32_t *xsum, const float *xs, __m256 *acc, __m256 *accm,
                              const int WS, const int WM, const int OFF)
{
    rowsrc ws = vals_src(&rs->ws, j, WS), wm = vals_src(&rs->wm, j, WM);
    rowsrc off = {NULL, _mm256_setzero_ps(), _mm256_set1_epi32(rs->off)};
    if (OFF == V_U8)
        off.p = rs->zeros + j * rs->zrow;
    else if (OFF == V_I32)
        off.p = rs->offs + j * rs->nsub;
    else if (rs->zeros)  /* one zero point per row */
        off.ci = _mm256_set1_epi32((int32_t)rs->zeros[j * rs->zrow] - rs->zero_bias);
    __m256 a = _mm256_setzero_ps(), am = _mm256_setzero_ps();
    int64_t s = 0;
    for (; s + EQ_PARTIALS <= rs->nsub; s += EQ_PARTIALS)
        combine_block(rs, &ws, &wm, &off, WS, WM, OFF, raw, xsum, xs, s, 8, &a, &am);
    if (s < rs->nsub)
        combine_block(rs, &ws, &wm, &off, WS, WM, OFF, raw, xsum, xs, s, (int)(rs->nsub - s), &a, &am);
    *acc = a;
    *accm = am;
}

/* r[j] lane p -> r[p] lane j */
X86_INLINE void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* nr rows: partials per row, then rows into lanes so that the partials are added in order
 * 0..7 for eight rows at once. */
X86_INLINE void combine_rows_t(const eq_rowscale *rs, int nr, const int32_t *raw, int64_t rstride,
                               const int32_t *xsum, const float *xs, float *y,
                               const int WS, const int WM, const int OFF)
{
    __m256 acc[8], accm[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        acc[j] = accm[j] = _mm256_setzero_ps();
        if (j < nr)
            combine_row_t(rs, j, raw + j * rstride, xsum, xs, &acc[j], &accm[j], WS, WM, OFF);
    }
    transpose8(acc);
    __m256 sum = _mm256_setzero_ps(), summ = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int p = 0; p < EQ_PARTIALS; p++)
        sum = _mm256_add_ps(sum, acc[p]);
    if (WM != V_NONE) {
        transpose8(accm);
#pragma GCC unroll 8
        for (int p = 0; p < EQ_PARTIALS; p++)
            summ = _mm256_add_ps(summ, accm[p]);
    }
    sum = _mm256_add_ps(sum, summ);
    if (nr == 8) {
        _mm256_storeu_ps(y, sum);
    } else {
        _mm256_maskstore_ps(y, _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), sum);
    }
}

/* One instance per combination the layouts produce (mins only without zero points). */
static void x86_combine(const eq_rowscale *rs, int nr, const int32_t *raw, int64_t rstride,
                        const int32_t *xsum, const float *xs, float *y)
{
    const int ws = vals_mode(&rs->ws), wm = vals_mode(&rs->wm);
    const int off = rs->offs ? V_I32 : rs->zeros && rs->zsub ? V_U8 : V_CONST;
#define COMBINE_CASE(WS, WM, OFF)                                                            \
    if (ws == WS && wm == WM && off == OFF) {                                                \
        combine_rows_t(rs, nr, raw, rstride, xsum, xs, y, WS, WM, OFF);                      \
        return;                                                                              \
    }
#define COMBINE_WS(WS)                                                                       \
    COMBINE_CASE(WS, V_NONE, V_CONST)                                                        \
    COMBINE_CASE(WS, V_NONE, V_U8)                                                           \
    COMBINE_CASE(WS, V_NONE, V_I32)                                                          \
    COMBINE_CASE(WS, V_CONST, V_CONST)                                                       \
    COMBINE_CASE(WS, V_F16, V_CONST)                                                         \
    COMBINE_CASE(WS, V_F32, V_CONST)
    COMBINE_WS(V_F16)
    COMBINE_WS(V_CONST)
    COMBINE_WS(V_F32)
#undef COMBINE_WS
#undef COMBINE_CASE
    eq_combine_scalar(rs, nr, raw, rstride, xsum, xs, y);  /* mins with zero points: none today */
}

#if EQ_VNNI
/* ---- m > 1: the packed panel (see eq_panel), 16 rows per 512-bit vector ----------------------
 * Per activation row and panel, an accumulator holds the running sub-block sums of the
 * panel's 16 rows; a step is one weight load per panel and, per activation row, four
 * activations broadcast once and one VPDPBUSD per panel. Two panels (32 weight rows) share
 * each broadcast: on Zen 4 a tile of one panel x 8 rows is bound by its nine loads per eight
 * VPDPBUSD (its dot loop alone measured 2.6 G VPDPBUSD/s, two panels x 4 rows 3.4 G, about
 * one 512-bit VPDPBUSD per cycle).
 * Sums wrap modulo 2^32 like the slot sums. The combine runs straight from the accumulators,
 * with no sums stored: sub-blocks are visited partial by partial (s = q, q + 8, ... for
 * q = 0..7), so an accumulator needs one register for the partial being built and one for
 * the running total, which then is the scalar rule's sum of the partials in order 0..7. */

/* Activation rows per tile: one panel x 8 rows, or two panels x 4 rows (the accumulators,
 * partials and weights of 2 x 4 fit the 32 registers; 2 x 5 spills). */
#define PANEL_ROWS(np) ((np) == 1 ? EQ_PANEL_TILE : EQ_PANEL_TILE / 2)
/* Accumulators per (panel, activation row): a few chains split a sub-block's steps over
 * several (exact integer sums in any order) so that VPDPBUSD's latency is hidden. */
#define PANEL_NACC(chains) ((chains) == 1 ? 4 : (chains) <= 4 ? 2 : 1)

/* tot[c * EQ_PANEL_TILE + i] = activation row i's outputs for the rows of panel p[c] (c < np),
 * without the mins term; x, xsum and xs start at the tile's first row. simple: mult is 1 and
 * the offset one constant, so the offset term starts the accumulator instead of being
 * multiplied in afterwards. fetch: prefetch the panels (the first tile; later tiles find
 * them in cache). */
X86_INLINE void panel_tile(const eq_panel *p, const int np, const int8_t *x, const int mt,
                           const int32_t *xsum, const float *xs, __m512 *tot, const int simple,
                           const int fetch)
{
    const int na = PANEL_NACC(np * mt);
    const int64_t k = p->k, nsub = p->nsub, steps = p->sub / 4;  /* a multiple of 8 */
    const int64_t sub_bytes = steps * 4 * EQ_PANEL;               /* one sub-block of a panel */
#pragma GCC unroll 2
    for (int c = 0; c < np; c++)
#pragma GCC unroll 8
        for (int i = 0; i < mt; i++)
            tot[c * EQ_PANEL_TILE + i] = _mm512_setzero_ps();
    for (int q = 0; q < EQ_PARTIALS; q++) {
        __m512 part[2][EQ_PANEL_TILE];
#pragma GCC unroll 2
        for (int c = 0; c < np; c++)
#pragma GCC unroll 8
            for (int i = 0; i < mt; i++)
                part[c][i] = _mm512_setzero_ps();
        for (int64_t s = q; s < nsub; s += EQ_PARTIALS) {
            const uint8_t *w0 = p[0].w + s * sub_bytes, *w1 = p[np - 1].w + s * sub_bytes;
            const int8_t *xb = x + s * steps * 4;
            /* sub-blocks go partial by partial, not in memory order, and the hardware
             * prefetcher misses the jumps: fetch the next one's codes and weight side (one
             * 64-byte line each: 16 lanes of 4 bytes) while this one runs. Measured on BERT
             * at batch 1: stalls on these loads were a quarter of the kernel's time. */
            const int64_t next = s + EQ_PARTIALS < nsub ? s + EQ_PARTIALS : q + 1;
            if (fetch && next < nsub) {
#pragma GCC unroll 2
                for (int c = 0; c < np; c++) {
                    for (int64_t b = 0; b < sub_bytes; b += 64)
                        _mm_prefetch((const char *)(p[c].w + next * sub_bytes + b), _MM_HINT_T0);
                    _mm_prefetch((const char *)(p[c].ws + next * EQ_PANEL), _MM_HINT_T0);
                    if (p[c].wm)
                        _mm_prefetch((const char *)(p[c].wm + next * EQ_PANEL), _MM_HINT_T0);
                    if (p[c].off)
                        _mm_prefetch((const char *)(p[c].off + next * EQ_PANEL), _MM_HINT_T0);
                }
            }
            __m512i acc[2][EQ_PANEL_TILE][4];
#pragma GCC unroll 8
            for (int i = 0; i < mt; i++) {
                /* isum = raw - off * xsum, wrapping (simple), else raw alone */
                const __m512i start = simple ? _mm512_set1_epi32((int32_t)(
                                                   0u - (uint32_t)p->off_c * (uint32_t)xsum[i * nsub + s]))
                                             : _mm512_setzero_si512();
#pragma GCC unroll 2
                for (int c = 0; c < np; c++)
#pragma GCC unroll 4
                    for (int a = 0; a < na; a++)
                        acc[c][i][a] = a ? _mm512_setzero_si512() : start;
            }
            /* hot loop: eight steps (one 32-code slot) straight-line; a loop carrying the
             * accumulators step by step costs register copies at -O2 */
            for (int64_t t = 0; t < steps; t += 8, w0 += 8 * 4 * EQ_PANEL, w1 += 8 * 4 * EQ_PANEL,
                                          xb += 8 * 4) {
#pragma GCC unroll 8
                for (int u = 0; u < 8; u++) {
                    const int a = u % na;
                    const __m512i wv0 = _mm512_loadu_si512(w0 + u * 4 * EQ_PANEL);
                    const __m512i wv1 = np > 1 ? _mm512_loadu_si512(w1 + u * 4 * EQ_PANEL) : wv0;
#pragma GCC unroll 8
                    for (int i = 0; i < mt; i++) {
                        int32_t four;
                        memcpy(&four, xb + i * k + 4 * u, 4);
                        const __m512i xv = _mm512_set1_epi32(four);
                        acc[0][i][a] = _mm512_dpbusd_epi32(acc[0][i][a], wv0, xv);
                        if (np > 1)
                            acc[1][i][a] = _mm512_dpbusd_epi32(acc[1][i][a], wv1, xv);
                    }
                }
            }
#pragma GCC unroll 2
            for (int c = 0; c < np; c++) {
                const __m512 ws = _mm512_loadu_ps(p[c].ws + s * EQ_PANEL);
#pragma GCC unroll 8
                for (int i = 0; i < mt; i++) {
                    __m512i r = acc[c][i][0];
#pragma GCC unroll 4
                    for (int a = 1; a < na; a++)
                        r = _mm512_add_epi32(r, acc[c][i][a]);
                    if (!simple) {
                        const int32_t xq = xsum[i * nsub + s];
                        if (p->mult != 1)
                            r = _mm512_mullo_epi32(r, _mm512_set1_epi32(p->mult));
                        __m512i o = p[c].off
                            ? _mm512_mullo_epi32(_mm512_loadu_si512(p[c].off + s * EQ_PANEL), _mm512_set1_epi32(xq))
                            : _mm512_set1_epi32((int32_t)((uint32_t)p->off_c * (uint32_t)xq));
                        r = _mm512_sub_epi32(r, o);
                    }
                    __m512 f = _mm512_mul_ps(_mm512_set1_ps(xs[i * nsub + s]), ws);
                    part[c][i] = _mm512_add_ps(part[c][i], _mm512_mul_ps(_mm512_cvtepi32_ps(r), f));
                }
            }
        }
#pragma GCC unroll 2
        for (int c = 0; c < np; c++)
#pragma GCC unroll 8
            for (int i = 0; i < mt; i++)
                tot[c * EQ_PANEL_TILE + i] = _mm512_add_ps(tot[c * EQ_PANEL_TILE + i], part[c][i]);
    }
}

/* One activation row's mins term for the panel's rows, summed like tot in panel_tile. */
X86_INLINE __m512 panel_mins(const eq_panel *p, const int32_t *xsum, const float *xs)
{
    __m512 tot = _mm512_setzero_ps();
    for (int q = 0; q < EQ_PARTIALS; q++) {
        __m512 part = _mm512_setzero_ps();
        for (int64_t s = q; s < p->nsub; s += EQ_PARTIALS) {
            __m512 v = _mm512_mul_ps(_mm512_set1_ps(xs[s]), _mm512_loadu_ps(p->wm + s * EQ_PANEL));
            part = _mm512_add_ps(part, _mm512_mul_ps(_mm512_set1_ps((float)xsum[s]), v));
        }
        tot = _mm512_add_ps(tot, part);
    }
    return tot;
}

/* 16 rows x 16 four-byte words -> word q of every row in r[q]. */
X86_INLINE void transpose16x16_epi32(__m512i r[16])
{
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* in 128-bit lane L, u[4i + c] holds word 4L + c of rows 4i..4i+3 */
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        __m512i a0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), a1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
        __m512i b0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), b1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_i32x4(a0, b0, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(a1, b1, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(a0, b0, 0xDD);
        r[12 + c] = _mm512_shuffle_i32x4(a1, b1, 0xDD);
    }
}

static void x86_panel_pack(const uint8_t *const *rows, int64_t k, uint32_t flip, uint8_t *out)
{
    const __m512i flipv = _mm512_set1_epi32((int32_t)flip);
    int64_t j = 0;
    /* 64 bytes of each row at a time, transposed by words */
    for (; j + 64 <= k; j += 64, out += 64 * EQ_PANEL) {
        __m512i r[16];
#pragma GCC unroll 16
        for (int i = 0; i < EQ_PANEL; i++)
            r[i] = rows[i] ? _mm512_xor_si512(_mm512_loadu_si512(rows[i] + j), flipv) : _mm512_setzero_si512();
        transpose16x16_epi32(r);
#pragma GCC unroll 16
        for (int q = 0; q < 16; q++)
            _mm512_storeu_si512(out + 64 * q, r[q]);
    }
    eq_panel_pack_scalar(rows, j, k, flip, out);
}

/* The panel kernel (eq_panel_fn) of panel_group 2: nr <= 2 * EQ_PANEL rows, p[0] holding
 * rows 0..15 and, when nr > EQ_PANEL, p[1] rows 16..nr-1 (see panel_tile for why pairs). */
static void x86_panel(const eq_panel *p, const int8_t *x, int64_t m, const int32_t *xsum,
                      const float *xs, float *y, int64_t ystride, int nr, int32_t *raw)
{
    (void)raw;  /* the combine runs from registers (panel_tile) */
    const int64_t k = p->k, nsub = p->nsub;
    const int np = nr > EQ_PANEL ? 2 : 1, rows = PANEL_ROWS(np);
    const int simple = p->mult == 1 && !p->off;
    const __mmask16 lanes[2] = {(__mmask16)((1u << (nr < EQ_PANEL ? nr : EQ_PANEL)) - 1),
                                (__mmask16)((1u << (nr - EQ_PANEL > 0 ? nr - EQ_PANEL : 0)) - 1)};
    for (int64_t i0 = 0; i0 < m; i0 += rows) {
        int mt = (int)(m - i0 < rows ? m - i0 : rows);
        const int8_t *xt = x + i0 * k;
        const int32_t *qt = xsum + i0 * nsub;
        const float *ft = xs + i0 * nsub;
        __m512 tot[2 * EQ_PANEL_TILE];
#define PANEL_CASE(LABEL, NP, MT)                                                            \
    LABEL:                                                                                   \
        if (simple)                                                                          \
            panel_tile(p, NP, xt, MT, qt, ft, tot, 1, i0 == 0);                              \
        else                                                                                 \
            panel_tile(p, NP, xt, MT, qt, ft, tot, 0, i0 == 0);                              \
        break;
        /* each panel count, tile height and offset form specialised by inlining */
        if (np == 1) {
            switch (mt) {
            PANEL_CASE(case 1, 1, 1) PANEL_CASE(case 2, 1, 2) PANEL_CASE(case 3, 1, 3)
            PANEL_CASE(case 4, 1, 4) PANEL_CASE(case 5, 1, 5) PANEL_CASE(case 6, 1, 6)
            PANEL_CASE(case 7, 1, 7) PANEL_CASE(default, 1, 8)
            }
        } else {
            switch (mt) {
            PANEL_CASE(case 1, 2, 1) PANEL_CASE(case 2, 2, 2) PANEL_CASE(case 3, 2, 3)
            PANEL_CASE(default, 2, 4)
            }
        }
#undef PANEL_CASE
        for (int c = 0; c < np; c++)
            for (int i = 0; i < mt; i++) {
                /* the mins' partials are added after the scales' (+0 without mins, as the rule) */
                __m512 mins = p[c].wm ? panel_mins(&p[c], qt + i * nsub, ft + i * nsub) : _mm512_setzero_ps();
                _mm512_mask_storeu_ps(y + (i0 + i) * ystride + c * EQ_PANEL, lanes[c],
                                      _mm512_add_ps(tot[c * EQ_PANEL_TILE + i], mins));
            }
    }
}
#endif

/* ---- plan ---------------------------------------------------------------------------------- */

static int x86_plan(const eq_qmatrix *w, int64_t m, eq_plan *plan)
{
    const int64_t k = w->k, group = w->pack_group;
    if (k % EQ_SLOT)
        return 0;
#if EQ_VNNI
    eq_prep_fn prep = prep_quad16;
    int64_t (*prep_bytes)(int64_t, int64_t) = prep_quad16_bytes;
#else
    eq_prep_fn prep = prep_pair16;
    int64_t (*prep_bytes)(int64_t, int64_t) = prep_pair16_bytes;
#endif
    *plan = (eq_plan){.decoded = 1};
    switch (w->kind) {
    case EQ_INT8:
        *plan = (eq_plan){.flip = 1, .wide = 1};  /* u = c ^ 0x80 = c + 128 */
        return 1;
    case EQ_INT8_ASYM:
        *plan = (eq_plan){.wide = 1};             /* u = the stored byte */
        return 1;
    case EQ_INT4:
    case EQ_INT4_ASYM:
    case EQ_POW2:
        if (m == 1 && group == 32) {
            plan->gemv = w->kind == EQ_POW2 ? gemv_pow2_32 : gemv_nib32;
            plan->prep = prep;
            plan->prep_bytes = prep_bytes(k, group);
        }
        return 1;
    case EQ_TERNARY_2BIT:
    case EQ_INT2:       /* the same crumbs (u up to 3): the unpacking is layout, not value */
    case EQ_INT2_ASYM:
        if (m == 1 && group == 64) {
            plan->gemv = gemv_crumb64;
            plan->prep = prep;
            plan->prep_bytes = prep_bytes(k, group);
        } else if (m == 1 && group % 128 == 0) {
            plan->gemv = gemv_crumb_planar;
        } else if (m == 1 && group % EQ_SLOT == 0 && group >= 128) {
            plan->gemv = gemv_crumb_slots;
        }
        return 1;
    default:  /* base-3, binary, int3: decoded into scratch */
        return 1;
    }
}
