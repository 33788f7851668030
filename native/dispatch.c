/* CPU feature detection: picks the dispatch table once, at first use.
 *
 * Variants, worst to best: scalar (always), avx2 (AVX2 + F16C + POPCNT), avx512
 * (AVX-512 F/BW/VL + VNNI; VPOPCNTQ when the CPU has it), neon (aarch64 ASIMD),
 * neon_dotprod (ASIMD + SDOT, from getauxval(AT_HWCAP)).
 * EDGEQ_SIMD=<variant> forces one (tests); an unknown or unsupported name falls back to the
 * best variant and eq_select_variant() reports why to the caller.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq_native.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1 << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

#define MAX_VARIANTS 4

static const eq_simd_table *supported[MAX_VARIANTS];
static int nsupported;
static char names[64];
static const eq_simd_table *_Atomic current;

#if defined(__x86_64__) || defined(_M_X64)
int eq_has_vpopcntq;  /* read by kernels_avx512.c */
#endif

static pthread_once_t detected = PTHREAD_ONCE_INIT;

static void detect_once(void)
{
    int n = 0;
    supported[n++] = &eq_table_scalar;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("popcnt")) {
        supported[n++] = &eq_table_avx2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
            supported[n++] = &eq_table_avx512;
            eq_has_vpopcntq = __builtin_cpu_supports("avx512vpopcntdq");
        }
    }
#elif defined(__aarch64__)
    unsigned long hwcap = HWCAP_ASIMD;  /* ASIMD is mandatory in ARMv8-A */
#if defined(__linux__)
    hwcap = getauxval(AT_HWCAP);
#endif
    if (hwcap & HWCAP_ASIMD) {
        supported[n++] = &eq_table_neon;
        if (hwcap & HWCAP_ASIMDDP)
            supported[n++] = &eq_table_neon_dotprod;
    }
#endif
    names[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (i) strcat(names, " ");
        strcat(names, supported[i]->name);
    }
    nsupported = n;
}

static void detect(void) { pthread_once(&detected, detect_once); }

int eq_select_variant(const char *name)
{
    detect();
    for (int i = 0; i < nsupported; i++)
        if (strcmp(supported[i]->name, name) == 0) {
            current = supported[i];
            return 0;
        }
    static const char *known[] = {"scalar", "avx2", "avx512", "neon", "neon_dotprod"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(known[i], name) == 0)
            return -2;
    return -1;
}

const eq_simd_table *eq_simd(void)
{
    const eq_simd_table *t = current;
    if (t)
        return t;
    detect();
    const char *forced = getenv("EDGEQ_SIMD");
    if (!(forced && *forced && eq_select_variant(forced) == 0))
        current = supported[nsupported - 1];
    return current;
}

const char *eq_variant(void) { return eq_simd()->name; }

const char *eq_variants(void)
{
    eq_simd();
    return names;
}
