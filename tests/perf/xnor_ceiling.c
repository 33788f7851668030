/* The instruction ceiling of the XNOR target: how many binary multiply-adds per second this CPU's
 * XOR + VPOPCNTQ + VPADDQ can do, against the int8 multiply-adds of VPDPBUSD (the int8 GEMM's
 * inner instruction), each in a loop of eight independent register-only chains (no memory, no
 * loop-carried dependency longer than the chains). Their ratio bounds what an XNOR GEMM can gain
 * over an int8 GEMM that runs near VPDPBUSD's peak, as edgeq's does at m = 128.
 *
 *   gcc -O2 -mavx512f -mavx512bw -mavx512vnni -mavx512vpopcntdq -o /tmp/xnor_ceiling \
 *       tests/perf/xnor_ceiling.c && /tmp/xnor_ceiling
 *
 * Needs AVX-512 VNNI and VPOPCNTDQ. One binary multiply-add is one bit of one XOR; one int8
 * multiply-add is one of VPDPBUSD's 64 byte products.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 8
#define STEPS 200000000L

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* keep every chain's register live, so that the compiler keeps every instruction */
#define KEEP(v) __asm__ volatile("" ::"v"(v[0]), "v"(v[1]), "v"(v[2]), "v"(v[3]), "v"(v[4]), \
                                 "v"(v[5]), "v"(v[6]), "v"(v[7]))

static double int8_macs_per_s(void)
{
    __m512i acc[CHAINS], u = _mm512_set1_epi32(0x01020304), x = _mm512_set1_epi32(0x05060708);
    for (int i = 0; i < CHAINS; i++)
        acc[i] = _mm512_set1_epi32(i);
    double start = seconds();
    for (long n = 0; n < STEPS; n++) {
#pragma GCC unroll 8
        for (int i = 0; i < CHAINS; i++)
            acc[i] = _mm512_dpbusd_epi32(acc[i], u, x);
        KEEP(acc);
    }
    return (double)STEPS * CHAINS * 64 / (seconds() - start);
}

static double binary_macs_per_s(void)
{
    __m512i bits[CHAINS], sum[CHAINS], flip = _mm512_set1_epi64(0x0123456789abcdefLL);
    for (int i = 0; i < CHAINS; i++) {
        bits[i] = _mm512_set1_epi64((long long)i * 0x9E3779B97F4A7C15LL);
        sum[i] = _mm512_setzero_si512();
    }
    double start = seconds();
    for (long n = 0; n < STEPS; n++) {
#pragma GCC unroll 8
        for (int i = 0; i < CHAINS; i++) {
            bits[i] = _mm512_xor_si512(bits[i], flip);   /* changes every step: not hoisted */
            sum[i] = _mm512_add_epi64(sum[i], _mm512_popcnt_epi64(bits[i]));
        }
        KEEP(sum);
    }
    return (double)STEPS * CHAINS * 512 / (seconds() - start);
}

int main(void)
{
    for (int round = 0; round < 3; round++) {
        double int8 = int8_macs_per_s(), binary = binary_macs_per_s();
        printf("VPDPBUSD: %.0f G int8 MAC/s   XOR+VPOPCNTQ+VPADDQ: %.0f G binary MAC/s   ratio %.2f\n",
               int8 / 1e9, binary / 1e9, binary / int8);
    }
    return 0;
}
