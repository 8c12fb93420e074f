// Worker threads that persist between GEMM calls (woken through a condition variable) instead
// of being created per call, and the barrier the GEMM drivers use between packing and use.
#include "gemm_pool.h"
#include "hv_kernels.h"
#include <pthread.h>
#include <sched.h>
#include <stddef.h>

#define POOL_MAX 64

void hv_barrier_wait(hv_barrier *b) {
    if (b->threads <= 1) return;
    int ph = __atomic_load_n(&b->phase, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->threads) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->phase, ph + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&b->phase, __ATOMIC_ACQUIRE) == ph; spins++) {
        if (spins > 4000) sched_yield(); else __builtin_ia32_pause();
    }
}

// One call at a time uses the pool (pool_busy); a concurrent call runs on one thread.
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static int pool_workers;
static long pool_generation;
static int pool_running;
static int pool_threads;
static void (*pool_body)(void *, int);
static void *pool_arg;
static long pool_start[POOL_MAX];  // the generation current when worker i was created

static void *pool_main(void *arg) {
    int id = (int)(long)arg;
    long seen = pool_start[id];  // written before pthread_create; later generations are new work
    for (;;) {
        // Spin briefly first: GEMMs often come back to back, and a futex wake costs more.
        for (int i = 0; i < 1000 && __atomic_load_n(&pool_generation, __ATOMIC_ACQUIRE) == seen; i++) __builtin_ia32_pause();
        pthread_mutex_lock(&pool_mu);
        while (pool_generation == seen) pthread_cond_wait(&pool_wake, &pool_mu);
        seen = pool_generation;
        void (*body)(void *, int) = pool_body;
        void *a = pool_arg;
        int threads = pool_threads;
        pthread_mutex_unlock(&pool_mu);
        if (id >= threads) continue;  // not part of this call (the caller waits for threads - 1)
        body(a, id);
        pthread_mutex_lock(&pool_mu);
        if (--pool_running == 0) pthread_cond_signal(&pool_done);
        pthread_mutex_unlock(&pool_mu);
    }
    return NULL;
}

static int pool_ensure(int workers) {
    while (pool_workers < workers) {
        pthread_t tid;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        // Generations advance only under pool_busy, which the caller holds: a worker added
        // by a later call must not take the previous call's (finished) generation as new.
        pool_start[pool_workers + 1] = pool_generation;
        int rc = pthread_create(&tid, &attr, pool_main, (void *)(long)(pool_workers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool_workers++;
    }
    return pool_workers;
}

int hv_pool_acquire(int threads) {
    if (threads > POOL_MAX) threads = POOL_MAX;
    if (threads <= 1 || hv_parallel_depth() > 0) return 1;
    if (pthread_mutex_trylock(&pool_busy) != 0) return 1;
    int have = pool_ensure(threads - 1);
    if (have < threads - 1) threads = have + 1;
    if (threads <= 1) pthread_mutex_unlock(&pool_busy);
    return threads;
}

void hv_pool_run(int threads, void (*body)(void *, int), void *arg) {
    if (threads > 1) {
        pthread_mutex_lock(&pool_mu);
        pool_body = body;
        pool_arg = arg;
        pool_threads = threads;
        pool_running = threads - 1;
        __atomic_store_n(&pool_generation, pool_generation + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&pool_wake);
        pthread_mutex_unlock(&pool_mu);
    }
    body(arg, 0);
    if (threads > 1) {
        pthread_mutex_lock(&pool_mu);
        while (pool_running > 0) pthread_cond_wait(&pool_done, &pool_mu);
        pthread_mutex_unlock(&pool_mu);
    }
}

void hv_pool_release(int threads) {
    if (threads > 1) pthread_mutex_unlock(&pool_busy);
}

int hv_gemm_split(int M, int N, int mr, int nr, int threads, int *splitN, int *lo, int *hi) {
    *splitN = N >= M ? 1 : 0;
    const int unit = *splitN ? nr : mr, total = *splitN ? N : M;
    const int units = (total + unit - 1) / unit;
    if (units < threads) threads = units;
    threads = hv_pool_acquire(threads);
    int start = 0;
    for (int t = 0; t < threads; t++) {
        int cnt = units / threads + (t < units % threads ? 1 : 0);
        lo[t] = start * unit;
        hi[t] = (start + cnt) * unit < total ? (start + cnt) * unit : total;
        start += cnt;
    }
    return threads;
}
