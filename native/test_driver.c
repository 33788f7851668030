/* Replays tests/golden/native_kernels.bin (written by tests/golden/make_native_golden.py from
 * the NumPy reference) against every SIMD variant this CPU supports, or the ones named.
 *
 *   test_driver GOLDEN [variant ...]
 *
 * Integer results (quantized activations, scales, block sums, XNOR dots) must equal the
 * reference exactly; matmul floats must be within 1e-4 of the case's largest |value| of the
 * reference (numpy sums in another order) and bit-identical across variants.
 * Prints one line per variant and a closing "N passed, N failed"; exits 1 on any failure.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq_native.h"

enum { OP_QUANTIZE, OP_BLOCK_SUMS, OP_MATMUL, OP_XNOR };
#define MAX_ARRAYS 8
#define THREADS 2 /* exercise the thread split too */

typedef struct {
    int64_t h[12];  /* op kind rows k m pack_group row_bytes scale_block scale_rows f16 block 0 */
    uint32_t narrays;
    int64_t size[MAX_ARRAYS];
    uint8_t *data[MAX_ARRAYS];
} golden_case;

static int read_exact(FILE *f, void *dst, size_t n) { return fread(dst, 1, n, f) == n; }

/* Reads every case; returns the count, or -1 on a malformed file. */
static int load(const char *path, golden_case **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    char magic[4];
    uint32_t version, count;
    if (!read_exact(f, magic, 4) || memcmp(magic, "EQNG", 4) || !read_exact(f, &version, 4) ||
        version != 1 || !read_exact(f, &count, 4) || count > 100000) {
        fprintf(stderr, "%s: not a version-1 golden file\n", path);
        fclose(f);
        return -1;
    }
    golden_case *cases = calloc(count, sizeof(golden_case));
    for (uint32_t c = 0; cases && c < count; c++) {
        golden_case *g = &cases[c];
        if (!read_exact(f, g->h, sizeof g->h) || !read_exact(f, &g->narrays, 4) ||
            g->narrays > MAX_ARRAYS)
            goto bad;
        for (uint32_t a = 0; a < g->narrays; a++) {
            if (!read_exact(f, &g->size[a], 8) || g->size[a] < 0 || g->size[a] > (1 << 26))
                goto bad;
            g->data[a] = malloc((size_t)g->size[a] + 1);
            if (!g->data[a] || !read_exact(f, g->data[a], (size_t)g->size[a]))
                goto bad;
        }
    }
    fclose(f);
    *out = cases;
    return (int)count;
bad:
    fprintf(stderr, "%s: truncated or corrupt case\n", path);
    fclose(f);
    return -1;
}

/* Array sizes must agree with the header before any kernel reads them. */
static int consistent(const golden_case *g)
{
    int64_t op = g->h[0], n = g->h[2], k = g->h[3], m = g->h[4], block = g->h[10];
    if (k <= 0 || m <= 0 || (op != OP_XNOR && (block <= 0 || k % block)))
        return 0;
    if (op == OP_QUANTIZE)
        return g->narrays == 3 && g->size[0] == m * k * 4 && g->size[1] == m * k &&
               g->size[2] == m * (k / block) * 4;
    if (op == OP_XNOR)
        return g->narrays == 3 && g->h[6] == (k + 7) / 8 && g->size[0] == n * g->h[6] &&
               g->size[1] == m * g->h[6] && g->size[2] == m * n * 4;
    int64_t sb = g->h[7], groups = sb > 0 ? k / sb : 0;
    int64_t scale_bytes = g->h[8] * groups * (g->h[9] ? 2 : 4);
    int ok = n > 0 && groups > 0 && g->size[0] == n * g->h[6] && g->size[1] == scale_bytes &&
             g->size[4] == m * k && (g->size[2] == 0 || g->size[2] == n * groups * 2) &&
             (g->size[3] == 0 || g->size[3] == g->h[8] * groups);
    if (op == OP_BLOCK_SUMS)
        return ok && g->narrays == 6 && g->size[5] == m * n * (k / block) * 4;
    return ok && g->narrays == 7 && g->size[5] == m * (k / block) * 4 && g->size[6] == m * n * 4;
}

static int same_bytes(const void *a, const void *b, int64_t n) { return memcmp(a, b, (size_t)n) == 0; }

/* Runs one case; 1 if it matches. first_y: matmul bits of the first variant (NULL to store). */
static int run_case(const golden_case *g, float **first_y, char *why, size_t why_len)
{
    int64_t op = g->h[0], n = g->h[2], k = g->h[3], m = g->h[4], block = g->h[10];
    int status = 0, ok = 0;
    if (!consistent(g)) {
        snprintf(why, why_len, "malformed case");
        return 0;
    }
    if (op == OP_QUANTIZE) {
        int8_t *q = malloc((size_t)(m * k));
        float *s = malloc((size_t)(m * (k / block)) * sizeof(float));
        status = eq_quantize_q8((const float *)g->data[0], m, k, block, q, s);
        ok = !status && same_bytes(q, g->data[1], g->size[1]) && same_bytes(s, g->data[2], g->size[2]);
        free(q);
        free(s);
    } else if (op == OP_XNOR) {
        int32_t *out = malloc((size_t)(m * n) * sizeof(int32_t));
        status = eq_xnor_gemm_binary(g->data[0], n, g->data[1], m, g->h[6], k, out, THREADS);
        ok = !status && same_bytes(out, g->data[2], g->size[2]);
        free(out);
    } else {
        eq_qmatrix w = {.kind = (int32_t)g->h[1], .scale_f16 = (int32_t)g->h[9], .rows = n, .k = k,
                        .pack_group = g->h[5], .row_bytes = g->h[6], .scale_block = g->h[7],
                        .scale_rows = g->h[8], .codes = g->data[0], .scales = g->data[1],
                        .mins = g->size[2] ? (const uint16_t *)g->data[2] : NULL,
                        .zeros = g->size[3] ? g->data[3] : NULL};
        const int8_t *xq = (const int8_t *)g->data[4];
        if (op == OP_BLOCK_SUMS) {
            int32_t *out = malloc((size_t)g->size[5]);
            typedef int (*sums_fn)(const eq_qmatrix *, const int8_t *, int64_t, int64_t, int32_t *, int32_t);
            static const sums_fn fns[EQ_NKINDS] = {
                eq_block_sums_int8_q8, eq_block_sums_int8_asym_q8, eq_block_sums_int4_q8,
                eq_block_sums_int4_asym_q8, eq_block_sums_ternary_2bit_q8,
                eq_block_sums_ternary_base3_q8, eq_block_sums_binary_q8, eq_block_sums_pow2_q8,
                eq_block_sums_int3_q8, eq_block_sums_int3_asym_q8, eq_block_sums_int2_q8,
                eq_block_sums_int2_asym_q8};
            status = fns[w.kind](&w, xq, m, block, out, THREADS);
            ok = !status && same_bytes(out, g->data[5], g->size[5]);
            free(out);
        } else {
            float *y = malloc((size_t)g->size[6]);
            typedef int (*gemm_fn)(const eq_qmatrix *, const int8_t *, const float *, int64_t, int64_t, float *, int32_t);
            static const gemm_fn fns[EQ_NKINDS] = {
                eq_gemm_int8_q8, eq_gemm_int8_asym_q8, eq_gemm_int4_q8, eq_gemm_int4_asym_q8,
                eq_gemm_ternary_2bit_q8, eq_gemm_ternary_base3_q8, eq_gemm_binary_q8, eq_gemm_pow2_q8,
                eq_gemm_int3_q8, eq_gemm_int3_asym_q8, eq_gemm_int2_q8, eq_gemm_int2_asym_q8};
            status = fns[w.kind](&w, xq, (const float *)g->data[5], m, block, y, THREADS);
            const float *expect = (const float *)g->data[6];
            float scale = 0.0f, worst = 0.0f;
            for (int64_t i = 0; i < m * n; i++) {
                float a = expect[i] < 0 ? -expect[i] : expect[i];
                scale = a > scale ? a : scale;
            }
            for (int64_t i = 0; i < m * n; i++) {
                float d = y[i] - expect[i];
                d = d < 0 ? -d : d;
                worst = d > worst ? d : worst;
            }
            ok = !status && worst <= 1e-4f * scale;
            if (ok && *first_y && !same_bytes(*first_y, y, g->size[6])) {
                snprintf(why, why_len, "differs in bits from the first variant");
                ok = 0;
            } else if (!ok && !status) {
                snprintf(why, why_len, "max error %g vs scale %g", worst, scale);
            }
            if (!*first_y)
                *first_y = y;
            else
                free(y);
        }
    }
    if (status)
        snprintf(why, why_len, "returned status %d", status);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s GOLDEN [variant ...]\n", argv[0]);
        return 2;
    }
    golden_case *cases;
    int ncases = load(argv[1], &cases);
    if (ncases < 0)
        return 2;
    char buf[64];
    const char *wanted[16];
    int nwanted = 0;
    if (argc > 2) {
        for (int i = 2; i < argc && nwanted < 16; i++)
            wanted[nwanted++] = argv[i];
    } else {
        snprintf(buf, sizeof buf, "%s", eq_variants());
        for (char *tok = strtok(buf, " "); tok && nwanted < 16; tok = strtok(NULL, " "))
            wanted[nwanted++] = tok;
    }
    printf("cpu supports: %s\n", eq_variants());
    float **first_y = calloc((size_t)ncases, sizeof(float *));
    int passed = 0, failed = 0;
    for (int v = 0; v < nwanted; v++) {
        int sel = eq_select_variant(wanted[v]);
        if (sel) {
            printf("variant %s: %s\n", wanted[v], sel == -1 ? "unknown" : "not supported by this CPU");
            failed++;
            continue;
        }
        int vpass = 0, vfail = 0;
        for (int c = 0; c < ncases; c++) {
            char why[128] = "result differs from the reference";
            if (run_case(&cases[c], &first_y[c], why, sizeof why)) {
                vpass++;
            } else {
                vfail++;
                printf("  FAIL %s case %d (op %lld kind %lld n %lld k %lld m %lld block %lld): %s\n",
                       eq_variant(), c, (long long)cases[c].h[0], (long long)cases[c].h[1],
                       (long long)cases[c].h[2], (long long)cases[c].h[3], (long long)cases[c].h[4],
                       (long long)cases[c].h[10], why);
            }
        }
        printf("variant %s: %d cases passed, %d failed\n", eq_variant(), vpass, vfail);
        passed += vpass;
        failed += vfail;
    }
    printf("%d passed, %d failed\n", passed, failed);
    for (int c = 0; c < ncases; c++) {
        for (uint32_t a = 0; a < cases[c].narrays; a++)
            free(cases[c].data[a]);
        free(first_y[c]);
    }
    free(first_y);
    free(cases);
    return failed ? 1 : 0;
}
