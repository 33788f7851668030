/* The SDOT build of kernels_neon.c (compiled with -march=armv8.2-a+dotprod). */
#define EQ_NEON_DOTPROD 1
#include "kernels_neon.c"
