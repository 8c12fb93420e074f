/* Dev benchmark (not built by the package): this machine's ceilings, for reading the GEMM and
 * attention figures in BENCHMARKS.md. One core's fp32 FMA peak (12 independent 8-lane
 * vfmadd231ps chains) and the streaming read bandwidth of one and two threads over 256 MB.
 *
 *   clang -O2 scripts/dev/machine_peaks.c -lpthread -o /tmp/machine_peaks && /tmp/machine_peaks
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

__attribute__((target("avx2,fma"))) static double fma_peak(void) {
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(i * 0.001f);
    const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.00001f);
    const long n = 200000000;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
        __asm__ volatile("" ::"x"(a[0]), "x"(a[1]), "x"(a[2]), "x"(a[3]), "x"(a[4]), "x"(a[5]), "x"(a[6]), "x"(a[7]),
                         "x"(a[8]), "x"(a[9]), "x"(a[10]), "x"(a[11]));
    }
    double t = now() - t0;
    volatile float sink = a[0][0];
    (void)sink;
    return n * 12 * 16.0 / t / 1e9;
}

static float *buf;
static const long N = 1L << 26;  // floats
static volatile float sink;

__attribute__((target("avx2"))) static void *read_range(void *arg) {
    const long t = (long)arg, lo = t * N / 2, hi = (t + 1) * N / 2;
    __m256 s = _mm256_setzero_ps();
    for (long i = lo; i < hi; i += 8) s = _mm256_add_ps(s, _mm256_load_ps(buf + i));
    sink = s[0];
    return NULL;
}

int main(void) {
    buf = aligned_alloc(64, 4 * N);
    for (long i = 0; i < N; i++) buf[i] = 1;
    for (int r = 0; r < 3; r++) {
        printf("FMA peak, one core: %.1f GFLOP/s\n", fma_peak());
        double t0 = now();
        pthread_t th;
        pthread_create(&th, NULL, read_range, (void *)1);
        read_range((void *)0);
        pthread_join(th, NULL);
        double t2 = now() - t0;
        t0 = now();
        read_range((void *)0);
        double t1 = now() - t0;
        printf("streaming read: %.1f GB/s on two threads, %.1f GB/s on one\n", 4.0 * N / t2 / 1e9, 2.0 * N / t1 / 1e9);
    }
    return 0;
}
