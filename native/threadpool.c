/* A persistent pool of worker threads for eq_parallel_for.
 *
 * Workers are started the first time a call wants them and then live as long as the process.
 * A task is published in one 64-bit word, generation << 40 | next chunk: a thread takes a
 * chunk with a compare-and-swap on that word, so a worker that wakes up late for a finished
 * task can never take a chunk of the next one. The caller works on the task too and returns
 * once every chunk is done (counted, not waited for per worker), so a worker descheduled by
 * another process on this shared machine never holds the caller up unless it holds a chunk.
 * Idle workers spin for EQ_SPIN_NS (back-to-back kernel calls find them awake), then sleep on
 * a condition variable. After fork() the child starts with no workers.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#include "edgeq_native.h"

#define MAX_WORKERS 63
#define INDEX_BITS 40
#define INDEX_MASK ((UINT64_C(1) << INDEX_BITS) - 1)
#ifndef EQ_SPIN_NS
#define EQ_SPIN_NS 100000 /* 100 us */
#endif

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

static struct {
    _Atomic uint64_t word;            /* generation << INDEX_BITS | next chunk */
    _Atomic int64_t done;             /* chunks finished in this generation */
    /* the task of the current generation; atomics because late workers may read them */
    _Atomic(eq_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n, chunk, nchunks;
    _Atomic int32_t allowed;          /* workers with an index below this may join */
    atomic_flag busy;                 /* a caller owns the pool */
    atomic_int sleeping;
    _Atomic int32_t nworkers;         /* grown only by the owner of busy */
    pthread_mutex_t lock;
    pthread_cond_t wake;
} pool = {.busy = ATOMIC_FLAG_INIT, .lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER};

static uint64_t generation_of(uint64_t word) { return word >> INDEX_BITS; }

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Take and run chunks of generation gen until none is left. */
static void work_on(uint64_t gen)
{
    for (;;) {
        uint64_t word = atomic_load(&pool.word);
        if (generation_of(word) != gen)
            return;
        int64_t idx = (int64_t)(word & INDEX_MASK);
        /* read the task before claiming: a successful claim proves it was still current */
        eq_task_fn fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
        int64_t n = atomic_load_explicit(&pool.n, memory_order_relaxed);
        int64_t chunk = atomic_load_explicit(&pool.chunk, memory_order_relaxed);
        int64_t nchunks = atomic_load_explicit(&pool.nchunks, memory_order_relaxed);
        if (idx >= nchunks)
            return;
        if (!atomic_compare_exchange_weak(&pool.word, &word, word + 1))
            continue;
        int64_t begin = idx * chunk, end = begin + chunk < n ? begin + chunk : n;
        fn(ctx, begin, end);
        atomic_fetch_add(&pool.done, 1);
    }
}

static void *worker_main(void *arg)
{
    int32_t index = (int32_t)(intptr_t)arg;
    uint64_t seen = generation_of(atomic_load(&pool.word));
    for (;;) {
        /* spin briefly: the next kernel call usually comes within microseconds */
        int64_t deadline = now_ns() + EQ_SPIN_NS;
        uint64_t gen = generation_of(atomic_load(&pool.word));
        for (int spins = 0; gen == seen; spins++) {
            cpu_relax();
            if ((spins & 255) == 255 && now_ns() > deadline)
                break;
            gen = generation_of(atomic_load(&pool.word));
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleeping, 1);
            while ((gen = generation_of(atomic_load(&pool.word))) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleeping, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = gen;
        if (index < atomic_load(&pool.allowed))
            work_on(gen);
    }
    return NULL;
}

/* Start workers up to `wanted` (the owner of busy calls this). */
static void grow(int32_t wanted)
{
    while (pool.nworkers < wanted && pool.nworkers < MAX_WORKERS) {
        pthread_t tid;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&tid, &attr, worker_main, (void *)(intptr_t)pool.nworkers);
        pthread_attr_destroy(&attr);
        if (failed)
            return;  /* fewer threads, same results */
        pool.nworkers++;
    }
}

static void reset_after_fork(void)
{
    /* the child has only the forking thread: no workers, nobody owning the pool */
    pool.nworkers = 0;
    atomic_store(&pool.sleeping, 0);
    atomic_flag_clear(&pool.busy);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
}

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
static void install_fork_handler(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

static void run_alone(eq_task_fn fn, void *ctx, int64_t n, int64_t chunk)
{
    for (int64_t begin = 0; begin < n; begin += chunk)
        fn(ctx, begin, begin + chunk < n ? begin + chunk : n);
}

void eq_parallel_for(eq_task_fn fn, void *ctx, int64_t n, int64_t chunk, int32_t threads)
{
    if (n <= 0)
        return;
    if (chunk < 1)
        chunk = 1;
    int64_t nchunks = (n + chunk - 1) / chunk;
    if (threads > nchunks)
        threads = (int32_t)nchunks;
    if (threads <= 1 || atomic_flag_test_and_set(&pool.busy)) {
        run_alone(fn, ctx, n, chunk);
        return;
    }
    pthread_once(&fork_handler_once, install_fork_handler);
    grow(threads - 1);
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.n, n, memory_order_relaxed);
    atomic_store_explicit(&pool.chunk, chunk, memory_order_relaxed);
    atomic_store_explicit(&pool.nchunks, nchunks, memory_order_relaxed);
    atomic_store(&pool.allowed, threads - 1);
    atomic_store(&pool.done, 0);
    uint64_t gen = generation_of(atomic_load(&pool.word)) + 1;
    atomic_store(&pool.word, gen << INDEX_BITS);  /* publishes the fields above */
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    work_on(gen);
    /* a chunk still running belongs to a worker: wait for it, yielding if it takes long */
    for (int spins = 0; atomic_load(&pool.done) < nchunks; spins++) {
        cpu_relax();
        if (spins > 1000)
            sched_yield();
    }
    atomic_flag_clear(&pool.busy);
}

int32_t eq_pool_workers(void) { return pool.nworkers; }
