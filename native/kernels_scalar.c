/* Portable C primitives: the scalar entry of the dispatch table, always present.
 *
 * Compiled with no -m flags. Every SIMD file falls back to these for tails and for shapes
 * its fast path does not cover, so these functions define the results bit for bit.
 */
#include <math.h>
#include <string.h>

#include "edgeq_native.h"

const int8_t EQ_POW2_VALUES[16] = {0, 1, 2, 4, 8, 16, 32, 64, 0, -1, -2, -4, -8, -16, -32, -64};

/* ---- decoders: one packed row -> u bytes (see the table in edgeq_native.h) ------------- */

static void decode_int8(const uint8_t *row, int64_t k, uint8_t *out)
{
    for (int64_t j = 0; j < k; j++)
        out[j] = row[j] ^ 0x80;  /* c + 128 */
}

static void decode_nibbles(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    int64_t half = group / 2;
    for (int64_t g = 0; g < k; g += group, row += half, out += group) {
        for (int64_t j = 0; j < half; j++) {
            out[j] = row[j] & 0x0F;
            out[half + j] = row[j] >> 4;
        }
    }
}

static void decode_pow2(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    decode_nibbles(row, k, group, out);
    for (int64_t j = 0; j < k; j++)
        out[j] = (uint8_t)(EQ_POW2_VALUES[out[j]] + EQ_OFFSET_POW2);
}

static void decode_2bit(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    int64_t quarter = group / 4;
    for (int64_t g = 0; g < k; g += group, row += quarter, out += group)
        for (int l = 0; l < 4; l++)
            for (int64_t j = 0; j < quarter; j++)
                out[l * quarter + j] = (row[j] >> (2 * l)) & 3;
}

/* int3: the low two bits as int2 crumbs (group/4 bytes), then the high bit as eight bit planes
 * (group/8 bytes: bit l of byte j belongs to code j + l*group/8). */
void eq_decode_int3_scalar(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    int64_t quarter = group / 4, eighth = group / 8;
    for (int64_t g = 0; g < k; g += group, row += quarter + eighth, out += group) {
        decode_2bit(row, group, group, out);
        const uint8_t *high = row + quarter;
        for (int l = 0; l < 8; l++)
            for (int64_t j = 0; j < eighth; j++)
                out[l * eighth + j] |= (uint8_t)(((high[j] >> l) & 1) << 2);
    }
}

/* Trit l of a base-3 byte: ((byte * 3^l) mod 256) * 3 >> 8, no division (ggml's TQ1_0). */
static inline uint8_t base3_trit(uint8_t byte, int l)
{
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    uint8_t shifted = (uint8_t)(byte * pow3[l]);
    return (uint8_t)(((uint16_t)shifted * 3) >> 8);
}

static void decode_base3(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    int64_t stride = EQ_BASE3_BYTES_PER_GROUP(group);
    for (int64_t g = 0; g < k; g += group, row += stride, out += group)
        for (int l = 0; l < 5; l++)
            for (int64_t j = 0; j < stride && l * stride + j < group; j++)
                out[l * stride + j] = base3_trit(row[j], l);
}

static void decode_bits(const uint8_t *row, int64_t k, uint8_t *out)
{
    for (int64_t j = 0; j < k; j++)
        out[j] = (row[j >> 3] >> (j & 7)) & 1;
}

void eq_decode_scalar(int kind, const uint8_t *row, int64_t k, int64_t pack_group, uint8_t *out)
{
    switch (kind) {
    case EQ_INT8: decode_int8(row, k, out); break;
    case EQ_INT8_ASYM: memcpy(out, row, (size_t)k); break;
    case EQ_INT4:
    case EQ_INT4_ASYM: decode_nibbles(row, k, pack_group, out); break;
    case EQ_TERNARY_2BIT:
    case EQ_INT2:
    case EQ_INT2_ASYM: decode_2bit(row, k, pack_group, out); break;
    case EQ_INT3:
    case EQ_INT3_ASYM: eq_decode_int3_scalar(row, k, pack_group, out); break;
    case EQ_TERNARY_BASE3: decode_base3(row, k, pack_group, out); break;
    case EQ_BINARY: decode_bits(row, k, out); break;
    case EQ_POW2: decode_pow2(row, k, pack_group, out); break;
    default: break;
    }
}

#define SCALAR_DECODER(fn, kind)                                                            \
    static void fn(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)               \
    {                                                                                        \
        eq_decode_scalar(kind, row, k, group, out);                                          \
    }
SCALAR_DECODER(dec_int8, EQ_INT8)
SCALAR_DECODER(dec_int8_asym, EQ_INT8_ASYM)
SCALAR_DECODER(dec_int4, EQ_INT4)
SCALAR_DECODER(dec_2bit, EQ_TERNARY_2BIT)
SCALAR_DECODER(dec_base3, EQ_TERNARY_BASE3)
SCALAR_DECODER(dec_bits, EQ_BINARY)
SCALAR_DECODER(dec_pow2, EQ_POW2)

/* ---- dot products ---------------------------------------------------------------------- */

void eq_dot_scalar(const uint8_t *u, const int8_t *x, int64_t k, int64_t sub,
                   const int32_t *xsum, int wide, int32_t *out)
{
    (void)xsum;
    (void)wide;
    for (int64_t s = 0; s * sub < k; s++) {
        /* uint32 so the sum wraps like the reference's int64 -> int32 cast (no UB) */
        uint32_t acc = 0;
        const uint8_t *us = u + s * sub;
        const int8_t *xs = x + s * sub;
        for (int64_t j = 0; j < sub; j++)
            acc += (uint32_t)((int32_t)us[j] * (int32_t)xs[j]);
        out[s] = (int32_t)acc;
    }
}

/* ---- the float sum (phase 2 of every matmul) ------------------------------------------- */

/* The value of row j, sub-block s (see eq_rowvals). */
static inline float rowval(const eq_rowvals *v, int64_t j, int64_t s)
{
    int64_t at = j * v->row + s * v->sub;
    return v->f16 ? eq_half_to_float(((const uint16_t *)v->p)[at]) : ((const float *)v->p)[at];
}

static inline int32_t rowoff(const eq_rowscale *rs, int64_t j, int64_t s)
{
    if (rs->zeros)
        return (int32_t)rs->zeros[j * rs->zrow + s * rs->zsub] - rs->zero_bias;
    return rs->offs ? rs->offs[j * rs->nsub + s] : rs->off;
}

void eq_combine_partials(const eq_rowscale *rs, int j, const int32_t *raw, const int32_t *xsum,
                         const float *xs, int64_t s, float *part, float *partm)
{
    for (int p = (int)(s % EQ_PARTIALS); s < rs->nsub; s++, p = (p + 1) % EQ_PARTIALS) {
        /* uint32: wraps like the reference's int32 cast, no UB */
        int32_t isum = (int32_t)((uint32_t)rs->mult * (uint32_t)raw[s] -
                                 (uint32_t)rowoff(rs, j, s) * (uint32_t)xsum[s]);
        part[p] += (float)isum * (xs[s] * rowval(&rs->ws, j, s));
        if (rs->wm.p)
            partm[p] += (float)xsum[s] * (xs[s] * rowval(&rs->wm, j, s));
    }
}

float eq_combine_finish(const eq_rowscale *rs, int j, const int32_t *raw, const int32_t *xsum,
                        const float *xs, int64_t s, float *part, float *partm)
{
    eq_combine_partials(rs, j, raw, xsum, xs, s, part, partm);
    /* partials added in a fixed order (no FMA: -ffp-contract=off): the same bits everywhere */
    float y = 0.0f, ym = 0.0f;
    for (int p = 0; p < EQ_PARTIALS; p++)
        y += part[p];
    for (int p = 0; p < EQ_PARTIALS; p++)
        ym += partm[p];
    return y + ym;
}

void eq_combine_scalar(const eq_rowscale *rs, int nr, const int32_t *raw, int64_t rstride,
                       const int32_t *xsum, const float *xs, float *y)
{
    for (int j = 0; j < nr; j++) {
        float part[EQ_PARTIALS] = {0}, partm[EQ_PARTIALS] = {0};
        y[j] = eq_combine_finish(rs, j, raw + j * rstride, xsum, xs, 0, part, partm);
    }
}

/* ---- activation quantization ------------------------------------------------------------ */

void eq_quantize_block_scalar(const float *x, int64_t n, int8_t *q, float *scale)
{
    float amax = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    /* float32 division, as numpy's absmax / float32(127) */
    float s = amax / 127.0f;
    *scale = s;
    for (int64_t j = 0; j < n; j++)
        q[j] = s > 0.0f ? eq_quantize_code(x[j], s) : 0;
}

/* ---- float16 ------------------------------------------------------------------------------ */

float eq_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);  /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);  /* normal: rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal: value man * 2^-24, exact in float32 */
        float f = (float)man * 5.9604644775390625e-08f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static void halves_scalar(const uint16_t *h, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = eq_half_to_float(h[i]);
}

/* ---- popcount ----------------------------------------------------------------------------- */

static inline uint64_t popcount64(uint64_t v)
{
    /* SWAR count: no dependence on the compiler's builtin needing a CPU flag */
    v = v - ((v >> 1) & 0x5555555555555555ull);
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (v * 0x0101010101010101ull) >> 56;
}

uint64_t eq_popcount_xor_scalar(const uint8_t *a, const uint8_t *b, int64_t nbytes)
{
    uint64_t total = 0;
    int64_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t wa, wb;
        memcpy(&wa, a + i, 8);
        memcpy(&wb, b + i, 8);
        total += popcount64(wa ^ wb);
    }
    for (; i < nbytes; i++)
        total += popcount64((uint64_t)(a[i] ^ b[i]));
    return total;
}

const eq_simd_table eq_table_scalar = {
    .name = "scalar",
    .decode = {dec_int8, dec_int8_asym, dec_int4, dec_int4, dec_2bit, dec_base3, dec_bits, dec_pow2,
               eq_decode_int3_scalar, eq_decode_int3_scalar, dec_2bit, dec_2bit},
    .dot = eq_dot_scalar,
    .quantize_block = eq_quantize_block_scalar,
    .halves_to_float = halves_scalar,
    .popcount_xor = eq_popcount_xor_scalar,
    .plan = NULL,  /* the generic decode + dot path defines the results */
    .combine = eq_combine_scalar,
};

void eq_panel_pack_scalar(const uint8_t *const *rows, int64_t j, int64_t k, uint32_t flip,
                          uint8_t *out)
{
    for (; j < k; j += 4, out += 4 * EQ_PANEL)
        for (int i = 0; i < EQ_PANEL; i++) {
            uint32_t v = 0;
            if (rows[i]) {
                memcpy(&v, rows[i] + j, 4);
                v ^= flip;
            }
            memcpy(out + 4 * i, &v, 4);
        }
}
