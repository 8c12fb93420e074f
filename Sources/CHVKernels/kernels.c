#include "hv_kernels.h"
#include <math.h>
#include <stdlib.h>
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

#include <malloc.h>

// tanh(u) = 1 - 2 / (exp(2u) + 1); exact enough (~1e-7) and vectorisable with hv_exp_approx.
static inline float hv_tanh_approx(float u) {
    float e = hv_exp_approx(2.0f * (u < 15.0f ? (u > -15.0f ? u : -15.0f) : 15.0f));
    return 1.0f - 2.0f / (e + 1.0f);
}

#define GELU_C 0.7978845608028654f

HV_CLONES void hv_gelu_forward(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float t = hv_tanh_approx(GELU_C * (v + 0.044715f * v * v * v));
        y[i] = 0.5f * v * (1.0f + t);
    }
}

HV_CLONES void hv_gelu_backward(const float *x, const float *g, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float t = hv_tanh_approx(GELU_C * (v + 0.044715f * v * v * v));
        float du = GELU_C * (1.0f + 3.0f * 0.044715f * v * v);
        dx[i] = g[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}

HV_CLONES void hv_silu_forward(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = v / (1.0f + hv_exp_approx(-v));
    }
}

HV_CLONES void hv_silu_backward(const float *x, const float *g, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float s = 1.0f / (1.0f + hv_exp_approx(-v));
        dx[i] = g[i] * s * (1.0f + v * (1.0f - s));
    }
}

int hv_malloc_trim(void) { return malloc_trim(0); }

// glibc's own environment variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
// MALLOC_ARENA_MAX) win over these defaults.
void hv_tune_malloc(void) {
    if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 1 << 30);
    if (!getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, 1 << 30);
    if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 2);
}

void hv_tune_malloc_resident(void) {
    if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 256 << 10);
    if (!getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, 4 << 20);
}

// Checkpoint checksum: Fletcher-style sums over little-endian 32-bit words in 8 independent
// lanes (word i goes to lane i % 8): a[k] += w, b[k] += a[k] (mod 2^64). The lanes make the
// loop vectorise (AVX2: 2+2 ymm accumulators); b makes it order-sensitive within a lane, the
// final mix across lanes. Any single-bit change moves a (and b), so it is always detected.
HV_CLONES uint64_t hv_checksum64(const void *data, size_t nbytes) {
    const unsigned char *p = (const unsigned char *)data;
    uint64_t a[8] = {0}, b[8] = {0};
    size_t blocks = nbytes / 32;
    for (size_t i = 0; i < blocks; i++) {
        uint32_t w[8];
        memcpy(w, p + 32 * i, 32);
#pragma clang loop vectorize(enable)
        for (int k = 0; k < 8; k++) {
            a[k] += w[k];
            b[k] += a[k];
        }
    }
    size_t rest = nbytes - 32 * blocks;
    if (rest) {
        uint32_t w[8] = {0};
        memcpy(w, p + 32 * blocks, rest);
        for (int k = 0; k < 8; k++) {
            a[k] += w[k];
            b[k] += a[k];
        }
    }
    const uint64_t prime = 0x100000001b3ULL;  // FNV-1a 64-bit prime, for the final mix
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)nbytes;
    for (int k = 0; k < 8; k++) {
        h = (h ^ a[k]) * prime;
        h = (h ^ (a[k] >> 32)) * prime;
        h = (h ^ b[k]) * prime;
        h = (h ^ (b[k] >> 32)) * prime;
    }
    h ^= h >> 33;  // murmur3 finaliser
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

HV_CLONES void hv_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
                        float eps, float weight_decay, float bc1, float bc2) {
    const float step_size = lr / bc1, decay = 1.0f - lr * weight_decay, inv_bc2_sqrt = 1.0f / sqrtf(bc2);
    const float a1 = 1.0f - beta1, a2 = 1.0f - beta2;
#pragma clang loop vectorize(enable) interleave(enable)
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = beta1 * m[i] + a1 * gi;
        float vi = beta2 * v[i] + a2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
    }
}
