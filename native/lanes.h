/* EQ_LANES(i, n, body): body for i in [0, n), as blocks of EQ_LANE_COUNT indices (a loop of
 * constant length, which compilers vectorize at -O2, where a loop of unknown length stays
 * scalar) and a scalar tail. Only for bodies whose elements are independent: each element
 * still sees the plain loop's float operations. Shared by the fused steps (steps.c,
 * bert_steps.c). */
#ifndef EDGEQ_LANES_H
#define EDGEQ_LANES_H

#include <stdint.h>

#define EQ_LANE_COUNT 8
#define EQ_LANES(i, n, body)                                                      \
    do {                                                                          \
        int64_t i##_base = 0;                                                     \
        for (; i##_base + EQ_LANE_COUNT <= (n); i##_base += EQ_LANE_COUNT)        \
            for (int i##_lane = 0; i##_lane < EQ_LANE_COUNT; i##_lane++) {        \
                int64_t i = i##_base + i##_lane;                                  \
                body;                                                             \
            }                                                                     \
        for (int64_t i = i##_base; i < (n); i++)                                  \
            body;                                                                 \
    } while (0)

#endif
