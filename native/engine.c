/* The portable driver: row loops, scales, the split over threads and the public kernels.
 *
 * matmul has two paths, both ending in the variant's combine (the float rule, one order):
 *   fused    when k and the sub-block are multiples of EQ_SLOT and the variant's plan takes
 *            the layout: per weight row, the slot sums come from a gemv kernel that unpacks
 *            the packed row in registers (m = 1), or from the slots kernel over the codes or
 *            the row decoded once into scratch, EQ_MAX_TILE activation rows per pass (m > 1);
 *   panel    the fused case with m >= EQ_PANEL_MIN_M where the variant has a panel kernel
 *            (AVX-512 VNNI): 16 weight rows packed once into a panel interleaved by four
 *            codes, then every activation row against it (see eq_panel; AVX-512 takes them
 *            in pairs, see panel_group); a prepared matrix (eq_prepare_q8) holds its panels
 *            packed once, and takes this path at every m;
 *   generic  otherwise: decode the row into scratch, dot per sub-block.
 * block_sums (integer sums only) always takes the generic decode + dot route.
 * Rows are split over the persistent thread pool in chunks; results never depend on the split.
 */
#include <stdlib.h>
#include <string.h>

#include "edgeq_native.h"

/* Multiply-adds one thread should get before a second one pays off (the test driver builds
 * with 1, so even its tiny cases exercise the thread split). */
#ifndef EQ_WORK_PER_THREAD
#define EQ_WORK_PER_THREAD (1 << 16)
#endif
#define MAX_THREADS 64
#define CHUNKS_PER_THREAD 8    /* load balance on a machine shared with other processes */
#define MIN_CHUNK_WORK (1 << 14)

/* ---- scratch --------------------------------------------------------------------------- */

/* Per-thread buffers, grown on demand and kept: pool workers live as long as the process. */
enum { SCRATCH_ROW, SCRATCH_CALL, SCRATCH_SLOTS };
static _Thread_local struct {
    void *p;
    size_t n;
} scratch[SCRATCH_SLOTS];

static void *scratch_get(int which, size_t bytes)
{
    if (scratch[which].n < bytes) {
        free(scratch[which].p);
        scratch[which].p = malloc(bytes);
        scratch[which].n = scratch[which].p ? bytes : 0;
    }
    return scratch[which].p;
}

/* ---- small rules ------------------------------------------------------------------------- */

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

static int32_t kind_mult(int kind) { return kind == EQ_BINARY ? 2 : 1; }

static int32_t kind_offset(int kind)
{
    switch (kind) {
    case EQ_INT8: return EQ_OFFSET_INT8;
    case EQ_INT4: return EQ_OFFSET_INT4;
    case EQ_TERNARY_2BIT:
    case EQ_TERNARY_BASE3: return EQ_OFFSET_TERNARY;
    case EQ_BINARY: return EQ_OFFSET_BINARY;
    case EQ_POW2: return EQ_OFFSET_POW2;
    case EQ_INT3: return EQ_OFFSET_INT3;
    case EQ_INT2: return EQ_OFFSET_INT2;
    default: return 0;  /* int4/int3/int2_asym (mins); int8_asym uses its zero points */
    }
}

/* Decoded bytes above 128 need the exact widening path on ISAs whose byte product saturates. */
static int kind_wide(int kind) { return kind == EQ_INT8 || kind == EQ_INT8_ASYM; }

static int64_t ngroups(const eq_qmatrix *w) { return w->k / w->scale_block; }

static int32_t thread_count(int32_t requested, int64_t rows, int64_t work)
{
    int64_t n = work / EQ_WORK_PER_THREAD;
    if (n > requested) n = requested;
    if (n > MAX_THREADS) n = MAX_THREADS;
    if (n > rows) n = rows;
    return n < 1 ? 1 : (int32_t)n;
}

/* Rows per chunk: about CHUNKS_PER_THREAD chunks per thread, none below MIN_CHUNK_WORK. */
static int64_t chunk_rows(int64_t rows, int64_t work_per_row, int32_t threads)
{
    if (threads <= 1)
        return rows;
    int64_t per = (rows + threads * CHUNKS_PER_THREAD - 1) / (threads * CHUNKS_PER_THREAD);
    int64_t floor_rows = (MIN_CHUNK_WORK + work_per_row - 1) / work_per_row;
    return per > floor_rows ? per : floor_rows;
}

/* Argument checks: the Python side validates first; these keep the C entry points safe. */
static int valid_matrix(const eq_qmatrix *w)
{
    if (!w || w->kind < 0 || w->kind >= EQ_NKINDS || w->rows <= 0 || w->k <= 0 || !w->codes ||
        w->scale_block <= 0 || w->k % w->scale_block || w->pack_group <= 0 ||
        w->k % w->pack_group || (w->scale_rows != 1 && w->scale_rows != w->rows))
        return 0;
    if ((w->kind == EQ_INT4_ASYM || w->kind == EQ_INT3_ASYM || w->kind == EQ_INT2_ASYM) &&
        !w->mins)
        return 0;
    if (w->kind == EQ_INT8_ASYM && !w->zeros) return 0;
    return 1;
}

/* sum(q) per block of `block` codes, for each of m rows of k: out (m, k / block). */
static void act_sums(const int8_t *xq, int64_t m, int64_t k, int64_t block, int32_t *out)
{
    for (int64_t b = 0; b < m * (k / block); b++) {
        const int8_t *x = xq + b * block;
        /* 16 lanes of a constant count, which -O2's cheap vectorizer takes (a byte at a time
         * this was ~10% of a batch-1 BERT matmul); sums wrap like the reference's int32 */
        uint32_t lanes[16] = {0}, acc = 0;
        int64_t j = 0;
        for (; j + 16 <= block; j += 16)
            for (int l = 0; l < 16; l++)
                lanes[l] += (uint32_t)(int32_t)x[j + l];
        for (int l = 0; l < 16; l++)
            acc += lanes[l];
        for (; j < block; j++)
            acc += (uint32_t)(int32_t)x[j];
        out[b] = (int32_t)acc;
    }
}

/* ---- block sums (integers only) ---------------------------------------------------------- */

typedef struct {
    const eq_qmatrix *w;
    const eq_simd_table *t;
    const int8_t *xq;      /* (m, k) */
    int64_t m;
    int64_t fine;          /* granularity of the dot products: sub, or gcd(sub, zero group) */
    int64_t sub, nfine, nsub;
    const int32_t *xsum;   /* (m, nfine) sum of q per fine block */
    int32_t *isums;        /* (m, rows, nsub) */
    _Atomic int status;
} sums_job;

/* Bytes of scratch for one decoded row of k codes: padded (then rounded to a cache line) so
 * that SIMD decoders may write whole vectors past k. */
static size_t decoded_row_bytes(int64_t k)
{
    return ((size_t)k + 64 + 63) & ~(size_t)63;
}

static void sums_rows(void *arg, int64_t begin, int64_t end)
{
    sums_job *job = arg;
    const eq_qmatrix *w = job->w;
    int64_t k = w->k, nfine = job->nfine, nsub = job->nsub, per_sub = job->sub / job->fine;
    int32_t mult = kind_mult(w->kind);
    size_t u_bytes = decoded_row_bytes(k);
    uint8_t *u = scratch_get(SCRATCH_ROW, u_bytes + 2 * (size_t)nfine * sizeof(int32_t));
    if (!u) {
        job->status = EQ_ENOMEM;
        return;
    }
    int32_t *raw = (int32_t *)(u + u_bytes), *off = raw + nfine;
    const uint8_t *zeros = NULL;
    int64_t zero_per = 1;
    if (w->kind == EQ_INT8_ASYM)
        zero_per = w->scale_block / job->fine;
    for (int64_t r = begin; r < end; r++) {
        job->t->decode[w->kind](w->codes + r * w->row_bytes, k, w->pack_group, u);
        if (w->kind == EQ_INT8_ASYM)
            zeros = w->zeros + (w->scale_rows == 1 ? 0 : r) * ngroups(w);
        for (int64_t f = 0; f < nfine; f++)
            off[f] = zeros ? zeros[f / zero_per] : kind_offset(w->kind);
        for (int64_t i = 0; i < job->m; i++) {
            const int32_t *xsum = job->xsum + i * nfine;
            job->t->dot(u, job->xq + i * k, k, job->fine, xsum, kind_wide(w->kind), raw);
            int32_t *dst = job->isums + (i * w->rows + r) * nsub;
            for (int64_t s = 0; s < nsub; s++) {
                /* isum = mult * raw - offset * sum(q), wrapping like int32 */
                uint32_t acc = 0;
                for (int64_t f = s * per_sub; f < (s + 1) * per_sub; f++)
                    acc += (uint32_t)mult * (uint32_t)raw[f] - (uint32_t)off[f] * (uint32_t)xsum[f];
                dst[s] = (int32_t)acc;
            }
        }
    }
}

static int run_block_sums(const eq_qmatrix *w, const int8_t *xq, int64_t m, int64_t sub,
                          int32_t *isums, int32_t threads)
{
    if (!valid_matrix(w) || !xq || !isums || m <= 0 || sub <= 0 || w->k % sub)
        return EQ_EINVAL;
    int64_t k = w->k;
    int64_t fine = w->kind == EQ_INT8_ASYM ? gcd64(sub, w->scale_block) : sub;
    int32_t *xsum = malloc((size_t)(m * (k / fine)) * sizeof(int32_t));
    if (!xsum)
        return EQ_ENOMEM;
    act_sums(xq, m, k, fine, xsum);
    sums_job job = {.w = w, .t = eq_simd(), .xq = xq, .m = m, .fine = fine, .sub = sub,
                    .nfine = k / fine, .nsub = k / sub, .xsum = xsum, .isums = isums,
                    .status = EQ_OK};
    int32_t nthreads = thread_count(threads, w->rows, w->rows * k * m);
    eq_parallel_for(sums_rows, &job, w->rows, chunk_rows(w->rows, k * m, nthreads), nthreads);
    free(xsum);
    return job.status;
}

/* ---- matmul -------------------------------------------------------------------------------- */

typedef struct {
    const eq_qmatrix *w;
    const eq_simd_table *t;
    eq_plan plan;
    int fused;
    int panel;             /* fused, m >= EQ_PANEL_MIN_M and the variant has a panel kernel */
    const int8_t *xq;      /* (m, k) */
    const int8_t *xp;      /* m == 1 with plan.prep: the prepared activation row */
    const eq_prepared *prepared;  /* panel with the panels packed beforehand, else NULL */
    int64_t m, sub, nsub;
    const int32_t *xsum;   /* (m, nsub) sum of q per sub-block */
    const float *xs;       /* (m, nsub) activation scale per sub-block */
    float *y;              /* (m, rows) */
    _Atomic int status;
} matmul_job;

/* Per-group scales (or mins) of rows r0.. r0+nr-1 as per-sub-block values: read in place
 * when a group is a sub-block or a whole row, else expanded into spill (nr * nsub floats). */
static eq_rowvals block_floats(const eq_qmatrix *w, const eq_simd_table *t, const void *base,
                               int f16, int64_t r0, int nr, int64_t sub, float *spill)
{
    int64_t g = ngroups(w), per = w->scale_block / sub, nsub = w->k / sub;
    int64_t rows = w->scale_rows == 1 ? 0 : 1;  /* tensor granularity: every row reads row 0 */
    const char *at = (const char *)base + r0 * rows * g * (f16 ? 2 : 4);
    if (g == 1)
        return (eq_rowvals){.p = at, .row = rows, .sub = 0, .f16 = f16};
    if (per == 1)
        return (eq_rowvals){.p = at, .row = rows * g, .sub = 1, .f16 = f16};
    float grp[64];
    for (int j = 0; j < nr; j++) {
        const char *row = at + j * rows * g * (f16 ? 2 : 4);
        for (int64_t g0 = 0; g0 < g; g0 += 64) {
            int64_t cnt = g - g0 < 64 ? g - g0 : 64;
            if (f16)
                t->halves_to_float((const uint16_t *)row + g0, cnt, grp);
            else
                memcpy(grp, (const float *)row + g0, (size_t)cnt * sizeof(float));
            for (int64_t i = 0; i < cnt; i++)
                for (int64_t q = 0; q < per; q++)
                    spill[j * nsub + (g0 + i) * per + q] = grp[i];
        }
    }
    return (eq_rowvals){.p = spill, .row = nsub, .sub = 1, .f16 = 0};
}

/* The weight side of the float sum for rows r0.. r0+nr-1; spill holds 2 * nr * nsub values:
 * expanded scales, then expanded mins or (int8_asym, which has no mins) offsets. */
static void block_setup(const matmul_job *job, int64_t r0, int nr, int32_t adjust, float *spill,
                        eq_rowscale *rs)
{
    const eq_qmatrix *w = job->w;
    int64_t nsub = job->nsub;
    *rs = (eq_rowscale){.nsub = nsub, .mult = kind_mult(w->kind),
                        .off = kind_offset(w->kind) - adjust};
    rs->ws = block_floats(w, job->t, w->scales, w->scale_f16, r0, nr, job->sub, spill);
    float *spill2 = spill + nr * nsub;
    if (w->mins)  /* always float16 */
        rs->wm = block_floats(w, job->t, w->mins, 1, r0, nr, job->sub, spill2);
    if (w->kind == EQ_INT8_ASYM) {
        int64_t g = ngroups(w), per = w->scale_block / job->sub;
        int64_t rows = w->scale_rows == 1 ? 0 : 1;
        const uint8_t *z = w->zeros + r0 * rows * g;
        if (g == 1 || per == 1) {
            rs->zeros = z;
            rs->zrow = rows * g;
            rs->zsub = g == 1 ? 0 : 1;
            rs->zero_bias = adjust;
        } else {
            int32_t *offs = (int32_t *)spill2;
            for (int j = 0; j < nr; j++)
                for (int64_t s = 0; s < nsub; s++)
                    offs[j * nsub + s] = (int32_t)z[j * rows * g + s / per] - adjust;
            rs->offs = offs;
        }
    }
}

/* Slot sums -> sub-block sums, in place (per slots per sub-block). */
static void fold_slots(int32_t *raw, int64_t nsub, int64_t per)
{
    if (per == 1)
        return;
    for (int64_t s = 0; s < nsub; s++) {
        uint32_t acc = 0;
        for (int64_t j = 0; j < per; j++)
            acc += (uint32_t)raw[s * per + j];
        raw[s] = (int32_t)acc;
    }
}

/* ---- the packed-panel path ---------------------------------------------------------------- */

/* Column j of the panel's weight side (see eq_panel) from row r, or zeros when r < 0: each
 * group's scale, min and offset converted once and repeated over its sub-blocks. */
static void panel_side(const eq_qmatrix *w, int64_t r, int j, int64_t sub, int32_t adjust,
                       float *ws, float *wm, int32_t *off)
{
    int64_t g = ngroups(w), per = w->scale_block / sub;
    int64_t base = (w->scale_rows == 1 ? 0 : r) * g;
    for (int64_t gi = 0; gi < g; gi++) {
        float vs = 0.0f, vm = 0.0f;
        int32_t vo = 0;
        if (r >= 0) {
            vs = w->scale_f16 ? eq_half_to_float(((const uint16_t *)w->scales)[base + gi])
                              : ((const float *)w->scales)[base + gi];
            if (w->mins)
                vm = eq_half_to_float(w->mins[base + gi]);
            if (w->zeros)
                vo = (int32_t)w->zeros[base + gi] - adjust;
        }
        for (int64_t s = gi * per; s < (gi + 1) * per; s++) {
            ws[s * EQ_PANEL + j] = vs;
            if (w->mins)
                wm[s * EQ_PANEL + j] = vm;
            if (w->zeros)
                off[s * EQ_PANEL + j] = vo;
        }
    }
}

/* ---- prepared matrices: the panels packed once --------------------------------------------- */

struct eq_prepared {
    eq_qmatrix w;              /* the caller's matrix (its arrays must outlive this) */
    const eq_simd_table *t;    /* the variant the panels were packed for */
    eq_plan plan;
    int64_t act_block, sub, nsub;
    size_t block_bytes;        /* one panel: k * EQ_PANEL bytes v, then ws, wm, off per [nsub][EQ_PANEL] */
    size_t bytes;              /* all panels */
    uint8_t *data;             /* ceil(rows / EQ_PANEL) panels, 64-byte aligned */
};

/* The eq_panel of panel block `at` (see struct eq_prepared) for w and sub. */
static eq_panel panel_view(const eq_qmatrix *w, const eq_plan *plan, int64_t sub, uint8_t *at)
{
    int64_t nsub = w->k / sub;
    size_t side = (size_t)nsub * EQ_PANEL;
    float *ws = (float *)(at + (size_t)w->k * EQ_PANEL), *wm = ws + side;
    int32_t *off = (int32_t *)(wm + (w->mins ? side : 0));
    return (eq_panel){.w = at, .k = w->k, .sub = sub, .nsub = nsub, .mult = kind_mult(w->kind),
                      .off_c = kind_offset(w->kind) - plan->adjust, .off = w->zeros ? off : NULL,
                      .ws = ws, .wm = w->mins ? wm : NULL};
}

/* Bytes of one panel block (64-byte multiple: k and nsub * EQ_PANEL * 4 are). */
static size_t panel_block_bytes(const eq_qmatrix *w, int64_t sub)
{
    size_t side = (size_t)(w->k / sub) * EQ_PANEL * 4;
    return (size_t)w->k * EQ_PANEL + side * (1 + (w->mins != NULL) + (w->zeros != NULL));
}

/* Packs rows r0.. r0+nr-1 (nr <= EQ_PANEL; missing rows are zeros, their outputs never stored)
 * and their weight side into the panel block at `at`; u is scratch for EQ_PANEL decoded rows
 * of u_stride bytes when the plan decodes. */
static void pack_panel(const eq_qmatrix *w, const eq_simd_table *t, const eq_plan *plan,
                       int64_t sub, int64_t r0, int nr, uint8_t *u, size_t u_stride, uint8_t *at)
{
    eq_panel p = panel_view(w, plan, sub, at);
    const uint8_t *rows[EQ_PANEL] = {NULL};
    for (int j = 0; j < nr; j++) {
        rows[j] = w->codes + (r0 + j) * w->row_bytes;
        if (plan->decoded) {
            t->decode[w->kind](rows[j], w->k, w->pack_group, u + j * u_stride);
            rows[j] = u + j * u_stride;
        }
    }
    t->panel_pack(rows, w->k, plan->flip ? 0x80808080u : 0, at);
    for (int j = 0; j < EQ_PANEL; j++)
        panel_side(w, j < nr ? r0 + j : -1, j, sub, plan->adjust, (float *)p.ws, (float *)p.wm,
                   (int32_t *)p.off);
}

/* Panels per call of the variant's panel kernel (eq_simd_table.panel_group). */
static int panel_group(const eq_simd_table *t)
{
    return t->panel_group > 1 ? t->panel_group : 1;   /* at most EQ_PANEL_GROUP_MAX */
}

/* Rows [begin, end) panel_group panels at a time: pack the panels (and their weight side)
 * once, or take them from the prepared matrix, then the variant's panel kernel runs every
 * activation row against them. */
static void panel_rows(matmul_job *job, int64_t begin, int64_t end)
{
    const eq_qmatrix *w = job->w;
    const eq_simd_table *t = job->t;
    const eq_prepared *prep = job->prepared;
    const int group = panel_group(t);
    int64_t k = w->k, nsub = job->nsub;
    size_t u_stride = decoded_row_bytes(k);
    size_t u_bytes = !prep && job->plan.decoded ? (size_t)EQ_PANEL * u_stride : 0;
    size_t block = prep ? 0 : panel_block_bytes(w, job->sub);
    size_t raw_n = (size_t)EQ_PANEL_TILE * (size_t)nsub * EQ_PANEL;
    uint8_t *u = scratch_get(SCRATCH_ROW, u_bytes + group * block + raw_n * 4);
    if (!u) {
        job->status = EQ_ENOMEM;
        return;
    }
    uint8_t *packed = u + u_bytes;
    int32_t *raw = (int32_t *)(packed + group * block);
    for (int64_t r0 = begin; r0 < end; r0 += group * EQ_PANEL) {
        int nr = (int)(end - r0 < group * EQ_PANEL ? end - r0 : group * EQ_PANEL);
        eq_panel p[EQ_PANEL_GROUP_MAX];
        for (int c = 0; c * EQ_PANEL < nr; c++) {
            int64_t rc = r0 + c * EQ_PANEL;
            uint8_t *at = packed + c * block;
            if (prep)
                at = prep->data + (size_t)(rc / EQ_PANEL) * prep->block_bytes;
            else
                pack_panel(w, t, &job->plan, job->sub, rc, nr - c * EQ_PANEL < EQ_PANEL ? nr - c * EQ_PANEL : EQ_PANEL,
                           u, u_stride, at);
            p[c] = panel_view(w, &job->plan, job->sub, at);
        }
        t->panel(p, job->xq, job->m, job->xsum, job->xs, job->y + r0, w->rows, nr, raw);
    }
}

/* Rows are taken EQ_PARTIALS at a time: the combine sums eight rows' partials together. */
#define ROW_BLOCK EQ_PARTIALS

static void matmul_rows(void *arg, int64_t begin, int64_t end)
{
    matmul_job *job = arg;
    const eq_qmatrix *w = job->w;
    const eq_simd_table *t = job->t;
    const eq_plan *plan = &job->plan;
    int64_t k = w->k, m = job->m, nsub = job->nsub, n = w->rows;
    int fused = job->fused, gemv = fused && m == 1 && plan->gemv;
    if (job->panel) {
        panel_rows(job, begin, end);
        return;
    }
    int decode = !fused || (plan->decoded && !gemv);
    int64_t rstride = (fused ? k / EQ_SLOT : nsub) + EQ_RAW_PAD;
    int64_t tile = gemv || !fused ? 1 : EQ_MAX_TILE;  /* activation rows per raw block */
    int64_t per = fused ? job->sub / EQ_SLOT : 1;
    size_t u_bytes = decode ? decoded_row_bytes(k) : 0;
    size_t raw_bytes = (size_t)(ROW_BLOCK * tile * rstride) * sizeof(int32_t);
    size_t spill_bytes = (size_t)(ROW_BLOCK * 2 * nsub) * sizeof(float);
    uint8_t *u = scratch_get(SCRATCH_ROW, ROW_BLOCK * u_bytes + raw_bytes + spill_bytes);
    if (!u) {
        job->status = EQ_ENOMEM;
        return;
    }
    int32_t *raw = (int32_t *)(u + ROW_BLOCK * u_bytes);
    float *spill = (float *)(raw + ROW_BLOCK * tile * rstride);
    int32_t adjust = fused ? plan->adjust : 0;
    eq_rowscale rs;
    for (int64_t r0 = begin; r0 < end; r0 += ROW_BLOCK) {
        int nr = (int)(end - r0 < ROW_BLOCK ? end - r0 : ROW_BLOCK);
        const uint8_t *src[ROW_BLOCK];
        block_setup(job, r0, nr, adjust, spill, &rs);
        for (int j = 0; j < nr; j++) {
            const uint8_t *row = w->codes + (r0 + j) * w->row_bytes;
            src[j] = row;
            if (decode) {
                t->decode[w->kind](row, k, w->pack_group, u + j * u_bytes);
                src[j] = u + j * u_bytes;
            }
        }
        if (gemv) {
            for (int j = 0; j < nr; j++) {
                plan->gemv(src[j], job->xp, k, w->pack_group, raw + j * rstride);
                fold_slots(raw + j * rstride, nsub, per);
            }
            t->combine(&rs, nr, raw, rstride, job->xsum, job->xs, job->y + r0);
            continue;
        }
        if (!fused) {
            for (int64_t i = 0; i < m; i++) {
                for (int j = 0; j < nr; j++)
                    t->dot(src[j], job->xq + i * k, k, job->sub, job->xsum + i * nsub,
                           kind_wide(w->kind), raw + j * rstride);
                t->combine(&rs, nr, raw, rstride, job->xsum + i * nsub, job->xs + i * nsub,
                           job->y + i * n + r0);
            }
            continue;
        }
        /* hot loop: each weight row is read once per EQ_MAX_TILE activation rows */
        for (int64_t i0 = 0; i0 < m; i0 += EQ_MAX_TILE) {
            int mt = (int)(m - i0 < EQ_MAX_TILE ? m - i0 : EQ_MAX_TILE);
            for (int j = 0; j < nr; j++) {
                int32_t *rj = raw + j * tile * rstride;
                t->slots(src[j], plan->flip, plan->wide, job->xq + i0 * k, k, mt, k, rj, rstride);
                for (int i = 0; i < mt; i++)
                    fold_slots(rj + i * rstride, nsub, per);
            }
            for (int i = 0; i < mt; i++)
                t->combine(&rs, nr, raw + i * rstride, tile * rstride, job->xsum + (i0 + i) * nsub,
                           job->xs + (i0 + i) * nsub, job->y + (i0 + i) * n + r0);
        }
    }
}

/* prep: the matrix's panels packed beforehand for this act_block and variant, or NULL. */
static int run_matmul(const eq_qmatrix *w, const eq_prepared *prep, const int8_t *xq,
                      const float *xs, int64_t m, int64_t act_block, float *y, int32_t threads)
{
    if (!valid_matrix(w) || !xq || !xs || !y || !w->scales || m <= 0 || act_block <= 0 ||
        w->k % act_block)
        return EQ_EINVAL;
    int64_t k = w->k, sub = gcd64(w->scale_block, act_block), nsub = k / sub;
    matmul_job job = {.w = w, .t = eq_simd(), .xq = xq, .m = m, .sub = sub, .nsub = nsub,
                      .y = y, .prepared = prep, .status = EQ_OK};
    if (prep) {
        job.fused = job.panel = 1;
        job.plan = prep->plan;
    } else {
        job.fused = sub % EQ_SLOT == 0 && job.t->plan && job.t->plan(w, m, &job.plan);
        job.panel = job.fused && m >= EQ_PANEL_MIN_M && job.t->panel;
    }
    int need_xp = job.fused && m == 1 && job.plan.gemv && job.plan.prep;
    int need_xs = act_block != sub;
    /* per call: sums of q and scales per sub-block, the prepared activations */
    size_t xsum_bytes = (size_t)(m * nsub) * sizeof(int32_t);
    size_t xs_bytes = need_xs ? (size_t)(m * nsub) * sizeof(float) : 0;
    size_t xp_bytes = need_xp ? (size_t)job.plan.prep_bytes + 64 : 0;
    uint8_t *call = scratch_get(SCRATCH_CALL, xsum_bytes + xs_bytes + xp_bytes);
    if (!call)
        return EQ_ENOMEM;
    int32_t *xsum = (int32_t *)call;
    act_sums(xq, m, k, sub, xsum);
    job.xsum = xsum;
    job.xs = xs;
    if (need_xs) {
        float *xs_sub = (float *)(call + xsum_bytes);
        int64_t per = act_block / sub, nblocks = k / act_block;
        for (int64_t b = 0; b < m * nblocks; b++)
            for (int64_t j = 0; j < per; j++)
                xs_sub[b * per + j] = xs[b];
        job.xs = xs_sub;
    }
    if (need_xp) {
        int8_t *xp = (int8_t *)(call + xsum_bytes + xs_bytes);
        job.plan.prep(xq, k, w->pack_group, xp);
        job.xp = xp;
    } else {
        job.xp = xq;
    }
    int32_t nthreads = thread_count(threads, w->rows, w->rows * k * m);
    int64_t chunk = chunk_rows(w->rows, k * m, nthreads);
    if (job.panel) {  /* whole groups of panels per chunk */
        int64_t span = panel_group(job.t) * EQ_PANEL;
        chunk = (chunk + span - 1) / span * span;
    }
    eq_parallel_for(matmul_rows, &job, w->rows, chunk, nthreads);
    return job.status;
}

/* ---- public kernels ------------------------------------------------------------------------ */

int eq_quantize_q8(const float *x, int64_t m, int64_t k, int64_t block, int8_t *q, float *scales)
{
    if (!x || !q || !scales || m <= 0 || k <= 0 || block <= 0 || k % block)
        return EQ_EINVAL;
    /* exponent all ones: inf or NaN; one pass, in blocks of a constant 16 values so that
     * -O2's cheap vectorizer takes it (a loop of unknown length it leaves scalar) */
    uint32_t bad = 0;
    int64_t i = 0, n = m * k;
    for (; i + 16 <= n; i += 16) {
        uint32_t bits[16];
        memcpy(bits, x + i, sizeof bits);
        for (int j = 0; j < 16; j++)
            bad |= (bits[j] & 0x7F800000u) == 0x7F800000u;
    }
    for (; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        bad |= (bits & 0x7F800000u) == 0x7F800000u;
    }
    if (bad)
        return EQ_ENOTFINITE;
    const eq_simd_table *t = eq_simd();
    for (int64_t b = 0; b < m * (k / block); b++)
        t->quantize_block(x + b * block, block, q + b * block, scales + b);
    return EQ_OK;
}

#define EQ_DEFINE_KIND(name, KIND)                                                             \
    int eq_block_sums_##name##_q8(const eq_qmatrix *w, const int8_t *xq, int64_t m,           \
                                  int64_t sub, int32_t *out, int32_t threads)                  \
    {                                                                                          \
        if (!w || w->kind != KIND) return EQ_EINVAL;                                           \
        return run_block_sums(w, xq, m, sub, out, threads);                                    \
    }                                                                                          \
    int eq_gemm_##name##_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs, int64_t m, \
                            int64_t act_block, float *out, int32_t threads)                    \
    {                                                                                          \
        if (!w || w->kind != KIND) return EQ_EINVAL;                                           \
        return run_matmul(w, NULL, xq, xs, m, act_block, out, threads);                        \
    }                                                                                          \
    int eq_vec_dot_##name##_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs,        \
                               int64_t act_block, float *out, int32_t threads)                \
    {                                                                                          \
        return eq_gemm_##name##_q8(w, xq, xs, 1, act_block, out, threads);                     \
    }
EQ_DEFINE_KIND(int8, EQ_INT8)
EQ_DEFINE_KIND(int8_asym, EQ_INT8_ASYM)
EQ_DEFINE_KIND(int4, EQ_INT4)
EQ_DEFINE_KIND(int4_asym, EQ_INT4_ASYM)
EQ_DEFINE_KIND(ternary_2bit, EQ_TERNARY_2BIT)
EQ_DEFINE_KIND(ternary_base3, EQ_TERNARY_BASE3)
EQ_DEFINE_KIND(binary, EQ_BINARY)
EQ_DEFINE_KIND(pow2, EQ_POW2)
EQ_DEFINE_KIND(int3, EQ_INT3)
EQ_DEFINE_KIND(int3_asym, EQ_INT3_ASYM)
EQ_DEFINE_KIND(int2, EQ_INT2)
EQ_DEFINE_KIND(int2_asym, EQ_INT2_ASYM)

eq_prepared *eq_prepare_q8(const eq_qmatrix *w, int64_t act_block)
{
    if (!valid_matrix(w) || !w->scales || act_block <= 0 || w->k % act_block)
        return NULL;
    const eq_simd_table *t = eq_simd();
    int64_t sub = gcd64(w->scale_block, act_block);
    eq_plan plan;
    /* the plan the panel path takes (m >= EQ_PANEL_MIN_M) */
    if (sub % EQ_SLOT || !t->plan || !t->panel || !t->plan(w, EQ_PANEL_MIN_M, &plan))
        return NULL;
    eq_prepared *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    *p = (eq_prepared){.w = *w, .t = t, .plan = plan, .act_block = act_block, .sub = sub,
                       .nsub = w->k / sub, .block_bytes = panel_block_bytes(w, sub)};
    int64_t npanels = (w->rows + EQ_PANEL - 1) / EQ_PANEL;
    p->bytes = (size_t)npanels * p->block_bytes;
    size_t u_stride = decoded_row_bytes(w->k);
    uint8_t *u = plan.decoded ? malloc(EQ_PANEL * u_stride) : NULL;
    p->data = aligned_alloc(64, p->bytes);
    if (!p->data || (plan.decoded && !u)) {
        free(u);
        eq_prepared_free(p);
        return NULL;
    }
    for (int64_t i = 0; i < npanels; i++) {
        int64_t r0 = i * EQ_PANEL;
        int nr = (int)(w->rows - r0 < EQ_PANEL ? w->rows - r0 : EQ_PANEL);
        pack_panel(w, t, &plan, sub, r0, nr, u, u_stride, p->data + (size_t)i * p->block_bytes);
    }
    free(u);
    return p;
}

size_t eq_prepared_bytes(const eq_prepared *p) { return p ? sizeof *p + p->bytes : 0; }
int64_t eq_prepared_block(const eq_prepared *p) { return p ? p->act_block : 0; }
const eq_qmatrix *eq_prepared_matrix(const eq_prepared *p) { return p ? &p->w : NULL; }

void eq_prepared_free(eq_prepared *p)
{
    if (p)
        free(p->data);
    free(p);
}

int eq_gemm_prepared_q8(const eq_prepared *p, const int8_t *xq, const float *xs, int64_t m,
                        float *out, int32_t threads)
{
    if (!p)
        return EQ_EINVAL;
    /* another variant selected since: its own path (every variant gives the same results) */
    return run_matmul(&p->w, eq_simd() == p->t ? p : NULL, xq, xs, m, p->act_block, out, threads);
}

typedef struct {
    const uint8_t *w, *x;
    int64_t n, m, kb, k;
    int32_t *out;
    const eq_simd_table *t;
} xnor_job;

static void xnor_store(const xnor_job *job, int64_t r, int64_t i, uint64_t pop)
{
    job->out[i * job->n + r] = (int32_t)(uint32_t)((uint64_t)job->k - 2 * pop);
}

static void xnor_rows(void *arg, int64_t begin, int64_t end)
{
    xnor_job *job = arg;
    const eq_simd_table *t = job->t;
    const int64_t kb = job->kb, m = job->m;
    int64_t r0 = begin;
    if (t->popcount_xor_tile) {
        /* 4 x 4 register tiles; the last activation rows (m % 4) pair by pair */
        for (; r0 + 4 <= end; r0 += 4)
            for (int64_t i0 = 0; i0 < m; i0 += 4) {
                uint64_t pop[16];
                int64_t ni = m - i0 < 4 ? m - i0 : 4;
                const uint8_t *x = job->x + i0 * kb;
                if (ni == 4) {
                    t->popcount_xor_tile(job->w + r0 * kb, kb, x, kb, kb, pop);
                } else {
                    for (int64_t i = 0; i < ni; i++)
                        for (int a = 0; a < 4; a++)
                            pop[4 * a + i] = t->popcount_xor(job->w + (r0 + a) * kb, x + i * kb, kb);
                }
                for (int a = 0; a < 4; a++)
                    for (int64_t i = 0; i < ni; i++)
                        xnor_store(job, r0 + a, i0 + i, pop[4 * a + i]);
            }
    }
    for (int64_t r = r0; r < end; r++)
        for (int64_t i = 0; i < m; i++)
            xnor_store(job, r, i, t->popcount_xor(job->w + r * kb, job->x + i * kb, kb));
}

int eq_xnor_gemm_binary(const uint8_t *w, int64_t n, const uint8_t *x, int64_t m, int64_t kb,
                        int64_t k, int32_t *out, int32_t threads)
{
    if (!w || !x || !out || n <= 0 || m <= 0 || kb <= 0 || k < 0)
        return EQ_EINVAL;
    xnor_job job = {.w = w, .x = x, .n = n, .m = m, .kb = kb, .k = k, .out = out, .t = eq_simd()};
    int32_t nthreads = thread_count(threads, n, n * m * kb);
    int64_t chunk = (chunk_rows(n, m * kb, nthreads) + 3) / 4 * 4;  /* whole tiles */
    eq_parallel_for(xnor_rows, &job, n, chunk, nthreads);
    return EQ_OK;
}

int eq_gemm_q8(const eq_qmatrix *w, const int8_t *xq, const float *xs, int64_t m,
               int64_t act_block, float *out, int32_t threads)
{
    return run_matmul(w, NULL, xq, xs, m, act_block, out, threads);
}

eq_qmatrix eq_qmatrix_rows(const eq_qmatrix *w, int64_t r0, int64_t n)
{
    eq_qmatrix v = *w;
    int64_t per_row = w->scale_rows == 1 ? 0 : ngroups(w);   /* tensor scale: shared */
    v.rows = n;
    v.codes = w->codes + r0 * w->row_bytes;
    v.scale_rows = w->scale_rows == 1 ? 1 : n;
    v.scales = (const char *)w->scales + r0 * per_row * (w->scale_f16 ? 2 : 4);
    if (w->mins)
        v.mins = w->mins + r0 * per_row;
    if (w->zeros)
        v.zeros = w->zeros + r0 * per_row;
    return v;
}

size_t eq_qmatrix_size(void) { return sizeof(eq_qmatrix); }
