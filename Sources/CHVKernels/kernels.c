#include "hv_kernels.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#define HV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HV_CLONES
#endif

static inline float hv_exp_approx(float x0) {
    // Cody-Waite reduction x = n ln2 + r with round-to-nearest via the 1.5*2^23 trick,
    // then a degree-6 Taylor polynomial for e^r on |r| <= ln2/2.
    float x = x0 > -87.0f ? x0 : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    float t = x * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    int32_t ni;
    memcpy(&ni, &t, 4);
    ni -= 0x4B400000;
    float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits = (uint32_t)(ni + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return x0 <= -87.0f ? 0.0f : p * s;
}

HV_CLONES float hv_exp_shift_sum(float *row, size_t n, float shift) {
    float sum = 0;
#pragma clang loop vectorize(enable) interleave(enable)
    for (size_t j = 0; j < n; j++) {
        float e = hv_exp_approx(row[j] - shift);
        row[j] = e;
        sum += e;
    }
    return sum;
}

HV_CLONES float hv_row_max(const float *row, size_t n) {
    // 16 independent lanes so the compiler can keep them in one vector register.
    float lanes[16];
    for (int i = 0; i < 16; i++) lanes[i] = -INFINITY;
    size_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int i = 0; i < 16; i++) lanes[i] = row[j + i] > lanes[i] ? row[j + i] : lanes[i];
    float m = -INFINITY;
    for (int i = 0; i < 16; i++) m = lanes[i] > m ? lanes[i] : m;
    for (; j < n; j++) m = row[j] > m ? row[j] : m;
    return m;
}

HV_CLONES void hv_softmax_grad_row(const float *p, float *dp, size_t n, float delta) {
    for (size_t j = 0; j < n; j++) dp[j] = p[j] * (dp[j] - delta);
}
