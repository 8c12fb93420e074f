// The GEMMs' persistent worker threads and barrier (shared by gemm_f32.c and gemm_bf16.c).
#ifndef HV_GEMM_POOL_H
#define HV_GEMM_POOL_H

/// A spinning barrier for `threads` threads (then sched_yield after a few thousand spins).
typedef struct {
    int threads;
    int arrived;  // threads arrived in the current phase (atomic access)
    int phase;
} hv_barrier;

void hv_barrier_wait(hv_barrier *b);

/// Takes the pool for one call and returns how many threads it may use (1 to min(`threads`, 64); 1 when
/// another call holds the pool or the caller is inside an hv parallel region). A result > 1 must
/// be handed back with hv_pool_release after hv_pool_run.
int hv_pool_acquire(int threads);
/// Runs body(arg, t) for t in 0..<threads: t = 0 on the calling thread, the others on the
/// pool's workers; returns when all are done. `threads` is what hv_pool_acquire granted.
void hv_pool_run(int threads, void (*body)(void *arg, int t), void *arg);
void hv_pool_release(int threads);

/// Plans a GEMM's threads: the larger of M and N (*splitN = 1: N) is split in whole tiles (mr rows
/// or nr columns) over at most `threads` threads as evenly as possible, thread t getting
/// [lo[t], hi[t]). Takes the pool (hv_pool_acquire) and returns the threads granted, which the
/// caller hands back with hv_pool_release after hv_pool_run.
int hv_gemm_split(int M, int N, int mr, int nr, int threads, int *splitN, int *lo, int *hi);

#endif
