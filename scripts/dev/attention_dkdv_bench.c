/* Dev benchmark (not built by the package): the attention backward's dV/dK accumulation for one
 * block of nb query rows over 1,056 keys (D = 64) through the kernel's mk_cols, as
 * attention.c runs it (dV's loop, then dK's: "apart") against the two interleaved per key strip
 * ("interleaved"), and one of them alone. Each pair of blocks and accumulators is its own
 * memory, as P/dS and dvacc/dkacc are in the kernel. One thread; best of 5.
 *
 *   clang -O3 -fno-math-errno -I Sources/CHVKernels/include scripts/dev/attention_dkdv_bench.c \
 *     Sources/CHVKernels/kernels.c Sources/CHVKernels/conv.c -lm -o /tmp/attention_dkdv_bench \
 *     && /tmp/attention_dkdv_bench [nb]
 */
#include "../../Sources/CHVKernels/attention.c"
#include <stdio.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static float *fill(long n, int mod) {
    float *p = aligned_alloc(64, 4 * n);
    for (long i = 0; i < n; i++) p[i] = (float)(i % mod) * 0.1f;
    return p;
}

int main(int argc, char **argv) {
    const int kp = 1056, d = 64, nb = argc > 1 ? atoi(argv[1]) : 48, reps = 2000 * 48 / nb;
    float *P = fill((long)nb * kp, 7), *B = fill((long)nb * d, 5), *C = fill((long)kp * d, 1);
    float *P2 = fill((long)nb * kp, 3), *B2 = fill((long)nb * d, 5), *C2 = fill((long)kp * d, 1);
    const char *names[] = {"one alone", "interleaved", "apart"};
    for (int mode = 0; mode < 3; mode++) {
        double best = 1e9;
        for (int round = 0; round < 5; round++) {
            double t0 = now();
            for (int r = 0; r < reps / 5; r++) {
                if (mode == 1) {
                    for (int j0 = 0; j0 < kp; j0 += 6)
                        for (int c0 = 0; c0 < d; c0 += 16) {
                            mk_cols(6, nb, P + j0, kp, B + c0, d, C + (long)j0 * d + c0, d, 1);
                            mk_cols(6, nb, P2 + j0, kp, B2 + c0, d, C2 + (long)j0 * d + c0, d, 1);
                        }
                } else {
                    for (int j0 = 0; j0 < kp; j0 += 6)
                        for (int c0 = 0; c0 < d; c0 += 16) mk_cols(6, nb, P + j0, kp, B + c0, d, C + (long)j0 * d + c0, d, 1);
                    if (mode == 2)
                        for (int j0 = 0; j0 < kp; j0 += 6)
                            for (int c0 = 0; c0 < d; c0 += 16) mk_cols(6, nb, P2 + j0, kp, B2 + c0, d, C2 + (long)j0 * d + c0, d, 1);
                }
            }
            double t = now() - t0;
            if (t < best) best = t;
        }
        printf("nb %d, %-12s %.1f GFLOP/s\n", nb, names[mode], 2.0 * nb * kp * d * (reps / 5) * (mode == 0 ? 1 : 2) / best / 1e9);
    }
    return 0;
}
