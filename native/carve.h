/* A pass's buffers carved one after another out of the caller's scratch, each starting on a
 * 64-byte line, so no two share a cache line. A layout is the offsets eq_carve hands out,
 * plus EQ_CARVE_SLACK bytes to align the caller's pointer (eq_carve_base). Shared by the
 * whole-pass files (llama_forward.c, bert_forward.c). */
#ifndef EDGEQ_CARVE_H
#define EDGEQ_CARVE_H

#include <stddef.h>
#include <stdint.h>

#define EQ_CARVE_SLACK 64

/* The offset of the next buffer of `bytes`; *at moves past it to the next line. */
static inline size_t eq_carve(size_t *at, int64_t bytes)
{
    size_t start = *at;
    *at += ((size_t)bytes + 63) & ~(size_t)63;
    return start;
}

/* The caller's scratch from its first 64-byte line on: where the offsets count from. */
static inline uint8_t *eq_carve_base(void *work)
{
    return (uint8_t *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
}

#endif
