/* The decoders of the crumb layout (ternary 2-bit, int2) and of int3 (edgeq/qtypes/lowbit.py),
 * written once over a variant's plane_bytes: a template by inclusion, like kernels_x86_fused.h
 * (kernels_avx2.c, kernels_neon.c). Include after a definition of
 *
 *   static inline void plane_bytes(const uint8_t *in, int64_t n, int right, int left,
 *                                  uint8_t mask, int merge, uint8_t *out);
 *       out[j] = ((in[j] >> right) << left) & mask for j < n, OR-ed into out[j] when merge
 *
 * and of PLANE_DECODER(name), the declaration of the decoder `name` (2bit, int3), e.g.
 * `void eq_avx2_decode_##name` or `static void decode_##name`. A variant may also define
 * PLANE_GROUP32(crumbs, bits, out): one group of 32 codes from its 8 crumb bytes and, for
 * int3, its 4 bit-plane bytes (bits NULL for crumbs alone); such small groups are otherwise
 * a dozen plane_bytes calls of 4 to 8 bytes each. */

/* Crumb planes of one group of 4 * quarter codes: code l * quarter + j is bits 2l.. of byte j. */
static inline void crumb_group(const uint8_t *row, int64_t quarter, uint8_t *out)
{
    for (int l = 0; l < 4; l++)
        plane_bytes(row, quarter, 2 * l, 0, 3, 0, out + l * quarter);
}

PLANE_DECODER(2bit)(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    int64_t quarter = group / 4;
#ifdef PLANE_GROUP32
    if (group == 32) {
        for (int64_t g = 0; g < k; g += 32, row += 8, out += 32)
            PLANE_GROUP32(row, NULL, out);
        return;
    }
#endif
    for (int64_t g = 0; g < k; g += group, row += quarter, out += group)
        crumb_group(row, quarter, out);
}

/* int3: per group the int2 crumbs, then bit l of byte j of the next group/8 bytes is bit 2 of
 * code j + l * group/8. */
PLANE_DECODER(int3)(const uint8_t *row, int64_t k, int64_t group, uint8_t *out)
{
    int64_t quarter = group / 4, eighth = group / 8;
#ifdef PLANE_GROUP32
    if (group == 32) {
        for (int64_t g = 0; g < k; g += 32, row += 12, out += 32)
            PLANE_GROUP32(row, row + 8, out);
        return;
    }
#endif
    for (int64_t g = 0; g < k; g += group, row += quarter + eighth, out += group) {
        crumb_group(row, quarter, out);
        for (int l = 0; l < 8; l++)
            plane_bytes(row + quarter, eighth, l, 2, 4, 1, out + l * eighth);
    }
}
