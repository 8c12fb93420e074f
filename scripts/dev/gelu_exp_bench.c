/* Dev benchmark (not built by the package): hv's exponential (hv_exp_shift_sum, as softmax and
 * attention use it) and in-place GELU (hv_gelu_inplace) against the forms they replaced on
 * 2026-11-28, copied here: the Cody-Waite exponential with a degree-6 Taylor polynomial and a
 * final select, and GELU as 0.5 v (1 + tanh(u)) with tanh(u) = 1 - 2 / (e^(2u) + 1). One
 * thread; data in L1 (6 rows of 1056 scores; 4096 activations, restored before each pass).
 *
 *   clang -O3 -fno-math-errno -I Sources/CHVKernels/include scripts/dev/gelu_exp_bench.c \
 *     Sources/CHVKernels/kernels.c Sources/CHVKernels/conv.c -lm -o /tmp/gelu_exp_bench && /tmp/gelu_exp_bench
 *
 * Prints ns per element and cycles per 8-lane vector at a nominal 2.9 GHz (this host's clock is
 * not exposed; the figure is for comparing the rows, not an absolute). */
#include "hv_kernels.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

#define OLD __attribute__((target("avx2,fma")))
OLD static inline float old_exp(float x0) {
    float x = x0 > -87.0f ? x0 : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    float t = x * 1.44269504088896341f + 12582912.0f, n = t - 12582912.0f;
    int32_t ni;
    memcpy(&ni, &t, 4);
    ni -= 0x4B400000;
    float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120; p = p * r + 1.0f / 24; p = p * r + 1.0f / 6; p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    uint32_t bits = (uint32_t)(ni + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return x0 <= -87.0f ? 0.0f : p * s;
}
OLD float old_exp_shift_sum(float *row, size_t n, float shift) {
    float sum = 0;
#pragma clang loop vectorize(enable) interleave(enable)
    for (size_t j = 0; j < n; j++) { float e = old_exp(row[j] - shift); row[j] = e; sum += e; }
    return sum;
}
OLD void old_gelu_inplace(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i], u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        float e = old_exp(2.0f * (u < 15.0f ? (u > -15.0f ? u : -15.0f) : 15.0f));
        x[i] = 0.5f * v * (1.0f + (1.0f - 2.0f / (e + 1.0f)));
    }
}

int main(void) {
    enum { N = 1056, ROWS = 6, G = 4096 };
    float *src = malloc(4 * N * ROWS), *x = malloc(4 * N * ROWS), *gs = malloc(4 * G), *g = malloc(4 * G);
    srand(1);
    for (int i = 0; i < N * ROWS; i++) src[i] = (rand() / (float)RAND_MAX) * 8 - 8;
    for (int i = 0; i < G; i++) gs[i] = (rand() / (float)RAND_MAX) * 8 - 4;
    for (int round = 0; round < 3; round++) {
        for (int v = 0; v < 2; v++) {
            double best = 1e9, sink = 0;
            for (int rep = 0; rep < 300; rep++) {
                memcpy(x, src, 4 * N * ROWS);
                double t0 = now();
                for (int r = 0; r < ROWS; r++) sink += v ? hv_exp_shift_sum(x + r * N, N, 0.5f) : old_exp_shift_sum(x + r * N, N, 0.5f);
                double t = (now() - t0) / (ROWS * N);
                if (t < best) best = t;
            }
            printf("exp  %-22s %.3f ns/element, %4.1f cycles/vector (sum %.4g)\n", v ? "hv (2^f, degree 5)" : "old (Cody-Waite, deg 6)", best * 1e9, best * 1e9 * 2.9 * 8, sink);
        }
        for (int v = 0; v < 2; v++) {
            double best = 1e9;
            for (int rep = 0; rep < 300; rep++) {
                memcpy(g, gs, 4 * G);
                double t0 = now();
                if (v) hv_gelu_inplace(g, G); else old_gelu_inplace(g, G);
                double t = (now() - t0) / G;
                if (t < best) best = t;
            }
            printf("gelu %-22s %.3f ns/element, %4.1f cycles/vector (g[7] = %.6g)\n", v ? "hv (v sigmoid(2u))" : "old (tanh form)", best * 1e9, best * 1e9 * 2.9 * 8, g[7]);
        }
    }
    return 0;
}
