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
    // e^x = 2^n 2^f with n = round(x log2 e) (the 1.5 * 2^23 trick) and f = x log2 e - n in one
    // fused multiply-add, |f| <= 1/2; 2^f by a degree-5 polynomial fitted for relative error
    // (Lawson's iteration, constant term exactly 1 so that e^0 = 1): within 2e-7 relative, plus
    // |x| * 1.3e-8 from log2 e's rounding (which only matters where e^x is far below 1 in a
    // softmax). Five multiply-adds for the polynomial and two for the reduction, where the
    // Cody-Waite form with a degree-6 polynomial took nine: about a fifth less time per element
    // (scripts/dev/gelu_exp_bench.c). x is clamped to [-88, 88]: at -88 (and
    // so for -inf) n = -127, whose scale 2^n has all bits zero, so the result is an exact 0.
    float x = x0 > -88.0f ? x0 : -88.0f;
    x = x < 88.0f ? x : 88.0f;
    const float log2e = 1.44269504088896341f;
    // Written as a * b + c, which clang contracts into a fused multiply-add (llvm.fmuladd) in
    // the AVX2 and AVX-512 clones; the baseline clone keeps a vectorisable multiply and add
    // (f then carries the product's rounding, up to 2^-17 for |x| near 88) where an explicit
    // fmaf would be a scalar library call.
    float t = x * log2e + 12582912.0f;
    float n = t - 12582912.0f;
    float f = x * log2e - n;
    int32_t ni;
    memcpy(&ni, &t, 4);
    ni -= 0x4B400000;
    float p = 1.330882078e-03f;
    p = p * f + 9.671517648e-03f;
    p = p * f + 5.550582334e-02f;
    p = p * f + 2.402224243e-01f;
    p = p * f + 6.931470633e-01f;
    p = p * f + 1.0f;
    uint32_t bits = (uint32_t)(ni + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
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

HV_CLONES float hv_row_sum(const float *row, size_t n) {
    // 32 independent lanes (two or four vector registers): the adds of one lane form a chain, so
    // several chains hide the add latency. Summation order: lane-wise, then lanes in order.
    float lanes[32];
    for (int i = 0; i < 32; i++) lanes[i] = 0.0f;
    size_t j = 0;
    for (; j + 32 <= n; j += 32)
        for (int i = 0; i < 32; i++) lanes[i] += row[j + i];
    float s = 0.0f;
    for (int i = 0; i < 32; i++) s += lanes[i];
    for (; j < n; j++) s += row[j];
    return s;
}

HV_CLONES void hv_column_sums(const float *src, size_t rows, size_t cols, size_t ld, float *dst) {
    // 64 columns at a time, their sums held in registers (8 x 8 lanes) while the rows stream past.
    size_t c0 = 0;
    for (; c0 + 64 <= cols; c0 += 64) {
        float acc[64];
        for (int k = 0; k < 64; k++) acc[k] = 0.0f;
        for (size_t r = 0; r < rows; r++) {
            const float *s = src + r * ld + c0;
            for (int k = 0; k < 64; k++) acc[k] += s[k];
        }
        for (int k = 0; k < 64; k++) dst[c0 + k] = acc[k];
    }
    for (; c0 < cols; c0++) {
        float a = 0.0f;
        for (size_t r = 0; r < rows; r++) a += src[r * ld + c0];
        dst[c0] = a;
    }
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

// 0.5 v (1 + tanh(u)) written as v * sigmoid(2u) = v / (1 + e^(-2u)), u = c (v + 0.044715 v^3):
// one exponential and one division, no cancellation for large negative v; with the exponential
// above, about twice as fast as the tanh form (scripts/dev/gelu_exp_bench.c).
static inline float hv_gelu1(float v) {
    return v / (1.0f + hv_exp_approx(v * (-2.0f * GELU_C + (-2.0f * GELU_C * 0.044715f) * (v * v))));
}

HV_CLONES void hv_gelu_forward(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = hv_gelu1(x[i]);
}

// hv_gelu_forward with x == y would take the compiler's scalar fallback (the vectorised loop is
// guarded by a no-overlap check); this form vectorises in place.
HV_CLONES void hv_gelu_inplace(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = hv_gelu1(x[i]);
}

HV_CLONES void hv_gelu_backward(const float *x, const float *g, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float t = hv_tanh_approx(GELU_C * (v + 0.044715f * v * v * v));
        float du = GELU_C * (1.0f + 3.0f * 0.044715f * v * v);
        dx[i] = g[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}

static inline float hv_silu1(float v) { return v / (1.0f + hv_exp_approx(-v)); }

HV_CLONES void hv_silu_forward(const float *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = hv_silu1(x[i]);
}

// In place, for the same reason as hv_gelu_inplace.
HV_CLONES void hv_silu_inplace(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = hv_silu1(x[i]);
}

HV_CLONES void hv_silu_backward(const float *x, const float *g, float *dx, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        float s = 1.0f / (1.0f + hv_exp_approx(-v));
        dx[i] = g[i] * s * (1.0f + v * (1.0f - s));
    }
}

int hv_malloc_trim(void) { return malloc_trim(0); }

void hv_heap_stats(size_t *arena_bytes, size_t *in_use_bytes, size_t *mmapped_bytes) {
    struct mallinfo2 m = mallinfo2();
    *arena_bytes = m.arena;
    *in_use_bytes = m.uordblks;
    *mmapped_bytes = m.hblkhd;
}

// The thresholds last set here (glibc's initial 128 KiB until then); mallopt has no getter.
static size_t hv_mmap_threshold = 128 << 10, hv_trim_threshold = 128 << 10;

// glibc's own environment variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
// MALLOC_ARENA_MAX) win over these settings.
void hv_malloc_set_thresholds(size_t mmap_threshold, size_t trim_threshold) {
    if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
    if (!getenv("MALLOC_TRIM_THRESHOLD_")) mallopt(M_TRIM_THRESHOLD, (int)trim_threshold);
    hv_mmap_threshold = mmap_threshold;
    hv_trim_threshold = trim_threshold;
}

void hv_malloc_thresholds(size_t *mmap_threshold, size_t *trim_threshold) {
    *mmap_threshold = hv_mmap_threshold;
    *trim_threshold = hv_trim_threshold;
}

void hv_tune_malloc(void) {
    hv_malloc_set_thresholds(1 << 30, 1 << 30);
    if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 2);
}

void hv_tune_malloc_resident(void) { hv_malloc_set_thresholds(256 << 10, 4 << 20); }

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

/* ---- Direct 3D convolution (stride 1) for narrow layers ----
 * im2col + sgemm spends most of its time copying when channels are few (a 16-channel layer
 * reuses each column element only 16 times), so narrow convolutions run here instead: each
 * output row segment of 16 pixels for 16 output channels is accumulated in registers over
 * (ci, dt, dh, dw), reading the padded input in place. Lanes past a row's end read the next
 * row (or zeros at the end of the buffer) and are never stored. */
typedef float hv_v16 __attribute__((vector_size(64), aligned(4)));
/* Full zmm registers in the AVX-512 clone (clang otherwise prefers 256-bit halves there, and
 * 24-32 accumulators no longer fit in registers). */
#if defined(__clang__)
#define HV_WIDE __attribute__((min_vector_width(512)))
#else
#define HV_WIDE
#endif
#define HV_CV_C 16

/* *v = 16 floats from p, or the `avail` that remain before the buffer's end followed by zeros.
 * (Out-parameter, not a return value: a 64-byte vector return would depend on the clone's ISA.) */
static inline __attribute__((always_inline)) void hv_v16_load_tail(hv_v16 *v, const float *p, ptrdiff_t avail) {
    if (avail >= 16) { memcpy(v, p, sizeof *v); return; }
    float tmp[16] = {0};
    memcpy(tmp, p, sizeof(float) * (size_t)(avail > 0 ? avail : 0));
    memcpy(v, tmp, sizeof *v);
}

HV_CLONES HV_WIDE void hv_conv3d_direct(const float *x, int Ci, int Tp, int Hp, int Wp,
                                const float *wt, int Co, int kt, int kh, int kw,
                                float *out, int row0, int row1) {
    if (hv_conv3d_avx2_active()) { hv_conv3d_direct_avx2(x, Ci, Tp, Hp, Wp, wt, Co, kt, kh, kw, out, row0, row1); return; }
    const int To = Tp - kt + 1, Ho = Hp - kh + 1, Wo = Wp - kw + 1;
    const int CoP = (Co + HV_CV_C - 1) / HV_CV_C * HV_CV_C;
    const size_t plane = (size_t)To * Ho * Wo;
    const float *xend = x + (size_t)Ci * Tp * Hp * Wp;
    for (int r = row0; r < row1; r++) {
        const int t = r / Ho, h = r % Ho;
        for (int w0 = 0; w0 < Wo; w0 += 16) {
            const int wl = Wo - w0 < 16 ? Wo - w0 : 16;
            for (int c0 = 0; c0 < Co; c0 += HV_CV_C) {
                hv_v16 acc[HV_CV_C];
                for (int c = 0; c < HV_CV_C; c++) acc[c] = (hv_v16){0};
                for (int ci = 0; ci < Ci; ci++) {
                    for (int dt = 0; dt < kt; dt++) {
                        for (int dh = 0; dh < kh; dh++) {
                            const float *xr = x + (((size_t)ci * Tp + t + dt) * Hp + h + dh) * Wp + w0;
                            const float *wr = wt + (size_t)(((ci * kt + dt) * kh + dh) * kw) * CoP + c0;
                            for (int dw = 0; dw < kw; dw++) {
                                hv_v16 xv;
                                hv_v16_load_tail(&xv, xr + dw, xend - (xr + dw));
                                const float *wv = wr + (size_t)dw * CoP;
#pragma clang loop unroll(full)
                                for (int c = 0; c < HV_CV_C; c++) acc[c] += wv[c] * xv;
                            }
                        }
                    }
                }
                const int cl = Co - c0 < HV_CV_C ? Co - c0 : HV_CV_C;
                for (int c = 0; c < cl; c++) {
                    float lanes[16];
                    memcpy(lanes, &acc[c], sizeof lanes);
                    memcpy(out + (size_t)(c0 + c) * plane + (size_t)r * Wo + w0, lanes, sizeof(float) * (size_t)wl);
                }
            }
        }
    }
}

/* One (ci, dt) slice of the weight gradient for output channels [c0, c0 + 32):
 * acc[dh][dw][v] = sum over (t, h, w) of x[ci][t + dt][h + dh][w + dw] * gT[(t, h, w)][c0 + 16v ..].
 * KH and KW are constants at each call, so the 2 x KH x KW accumulators stay in registers. */
static inline __attribute__((always_inline)) void hv_wgrad_slice(
        const float *x, int Tp, int Hp, int Wp, const float *gT, int CoP, int To, int Ho, int Wo,
        int ci, int dt, int c0, const int KH, const int KW, const int NV, hv_v16 acc[3][3][2]) {
    for (int t = 0; t < To; t++) {
        for (int h = 0; h < Ho; h++) {
            const float *xr = x + (((size_t)ci * Tp + t + dt) * Hp + h) * Wp;
            const float *gr = gT + ((size_t)t * Ho + h) * Wo * CoP + c0;
            for (int w = 0; w < Wo; w++) {
                hv_v16 g0, g1 = {0};
                memcpy(&g0, gr + (size_t)w * CoP, sizeof g0);
                if (NV == 2) memcpy(&g1, gr + (size_t)w * CoP + 16, sizeof g1);
#pragma clang loop unroll(full)
                for (int dh = 0; dh < KH; dh++) {
#pragma clang loop unroll(full)
                    for (int dw = 0; dw < KW; dw++) {
                        const float xs = xr[(size_t)dh * Wp + w + dw];
                        acc[dh][dw][0] += xs * g0;
                        if (NV == 2) acc[dh][dw][1] += xs * g1;
                    }
                }
            }
        }
    }
}

/* dW[co][ci][dt][dh][dw] += sum over output positions p of g[co][p] * x[ci][p + offset], for
 * input channels [ci0, ci1), from gT [P][CoP] (the gradient transposed, output channels
 * innermost, CoP = Co rounded up to 32 with zero columns). (kh, kw) must be (3, 3) or (1, 1). */
HV_CLONES HV_WIDE void hv_conv3d_direct_wgrad(const float *x, int Ci, int Tp, int Hp, int Wp,
                                              const float *gT, int Co, int kt, int kh, int kw,
                                              float *dw, int ci0, int ci1) {
    if (hv_conv3d_avx2_active()) { hv_conv3d_direct_wgrad_avx2(x, Ci, Tp, Hp, Wp, gT, Co, kt, kh, kw, dw, ci0, ci1); return; }
    const int To = Tp - kt + 1, Ho = Hp - kh + 1, Wo = Wp - kw + 1;
    const int CoP = (Co + 31) / 32 * 32;
    for (int ci = ci0; ci < ci1; ci++) {
        for (int dt = 0; dt < kt; dt++) {
            for (int c0 = 0; c0 < Co; c0 += 32) {
                hv_v16 acc[3][3][2];
                memset(acc, 0, sizeof acc);
                /* 16 output channels left: one vector per tap (the other would be zeros). */
                const int wide = Co - c0 > 16;
                if (kh == 3 && kw == 3) {
                    if (wide) hv_wgrad_slice(x, Tp, Hp, Wp, gT, CoP, To, Ho, Wo, ci, dt, c0, 3, 3, 2, acc);
                    else hv_wgrad_slice(x, Tp, Hp, Wp, gT, CoP, To, Ho, Wo, ci, dt, c0, 3, 3, 1, acc);
                } else {
                    if (wide) hv_wgrad_slice(x, Tp, Hp, Wp, gT, CoP, To, Ho, Wo, ci, dt, c0, 1, 1, 2, acc);
                    else hv_wgrad_slice(x, Tp, Hp, Wp, gT, CoP, To, Ho, Wo, ci, dt, c0, 1, 1, 1, acc);
                }
                for (int dh = 0; dh < kh; dh++) {
                    for (int k = 0; k < kw; k++) {
                        float lanes[32];
                        memcpy(lanes, &acc[dh][k][0], sizeof(float) * 16);
                        memcpy(lanes + 16, &acc[dh][k][1], sizeof(float) * 16);
                        for (int c = 0; c < 32 && c0 + c < Co; c++)
                            dw[((((size_t)(c0 + c) * Ci + ci) * kt + dt) * kh + dh) * kw + k] += lanes[c];
                    }
                }
            }
        }
    }
}

/* 1 / sqrt(mean((a - m)^2) + eps) over a row of n, the squares summed in 16 double lanes (lane l
 * takes the elements i = l mod 16, in order; then the lanes in order), so the loop vectorises.
 * Shared by hv_norm_rows and hv_rms_norm_rotary, which must agree bit for bit. */
static inline float hv_row_rstd(const float *a, size_t n, float m, float eps) {
#pragma clang fp contract(off)
    double lanes[16] = {0};
    size_t i = 0;
    for (; i + 16 <= n; i += 16) for (int l = 0; l < 16; l++) { double d = (double)(a[i + l] - m); lanes[l] += d * d; }
    for (; i < n; i++) { double d = (double)(a[i] - m); lanes[i & 15] += d * d; }
    double v = 0;
    for (int l = 0; l < 16; l++) v += lanes[l];
    return (float)(1.0 / sqrt(v / (double)n + (double)eps));
}

/* LayerNorm / RMSNorm over rows of n: xhat = (x - mean) * rstd (mean 0 when !centered),
 * out = xhat * w + b (w, b optional; out may be NULL), rstd per row. Sums in 16 double lanes per
 * row, so the loops vectorise. No fused multiply-adds (fp contract off): each product is rounded
 * as in the Swift loops these replaced; with contraction the VAE's 1-worker and 2-worker loss
 * curves drifted apart by 2e-5 relative in 3 steps (VAELaunchTests allows 1e-5). */
HV_CLONES void hv_norm_rows(const float *x, float *xhat, float *out, float *rstd, const float *w, const float *b,
                            size_t rows, size_t n, float eps, int centered) {
#pragma clang fp contract(off)
    for (size_t r = 0; r < rows; r++) {
        const float *a = x + r * n;
        float *h = xhat + r * n;
        float m = 0;
        if (centered) {
            double lanes[16] = {0};
            size_t i = 0;
            for (; i + 16 <= n; i += 16) for (int l = 0; l < 16; l++) lanes[l] += (double)a[i + l];
            for (; i < n; i++) lanes[i & 15] += (double)a[i];
            double s = 0;
            for (int l = 0; l < 16; l++) s += lanes[l];
            m = (float)(s / (double)n);
        }
        const float rs = hv_row_rstd(a, n, m, eps);
        rstd[r] = rs;
        for (size_t i = 0; i < n; i++) h[i] = (a[i] - m) * rs;
        if (out == xhat) {  // in place: one pointer, so the loops vectorise without an overlap check
            if (w && b) for (size_t i = 0; i < n; i++) h[i] = h[i] * w[i] + b[i];
            else if (w) for (size_t i = 0; i < n; i++) h[i] = h[i] * w[i];
            else if (b) for (size_t i = 0; i < n; i++) h[i] = h[i] + b[i];
        } else if (out) {
            float *o = out + r * n;
            if (w && b) for (size_t i = 0; i < n; i++) o[i] = h[i] * w[i] + b[i];
            else if (w) for (size_t i = 0; i < n; i++) o[i] = h[i] * w[i];
            else if (b) for (size_t i = 0; i < n; i++) o[i] = h[i] + b[i];
            else for (size_t i = 0; i < n; i++) o[i] = h[i];
        }
    }
}

/* hv_norm_rows (RMS, out = xhat * w) of each head of each token, followed by the rotary rotation
 * of its pairs (o0 = y0 c0 - y1 s0, o1 = y1 c1 + y0 s1) for the first `rotated` tokens: the same
 * arithmetic as the two ops apart, in one pass. Head h of token i at x + i * token_stride +
 * h * head_stride, written to out + (i * heads + h) * n; token i's tables at c, s + i * n. The
 * input is usually a strided view of a GEMM output that has left the L2, so the token two ahead
 * is prefetched. */
HV_CLONES void hv_rms_norm_rotary(const float *x, long token_stride, long head_stride, size_t tokens, float *out,
                                  const float *w, float eps, const float *c, const float *s, size_t rotated,
                                  size_t heads, size_t n) {
#pragma clang fp contract(off)
    for (size_t t = 0; t < tokens; t++) {
        if (t + 2 < tokens)
            for (size_t h = 0; h < heads; h++)
                for (size_t i = 0; i < n; i += 16) __builtin_prefetch(x + (long)(t + 2) * token_stride + (long)h * head_stride + i);
        for (size_t h = 0; h < heads; h++) {
            const float *a = x + (long)t * token_stride + (long)h * head_stride;
            float *o = out + (t * heads + h) * n;
            const float rs = hv_row_rstd(a, n, 0.0f, eps);
            size_t i;
            if (t < rotated) {
                const float *cr = c + t * n, *sr = s + t * n;
                for (i = 0; i + 1 < n; i += 2) {
                    const float y0 = (a[i] * rs) * w[i], y1 = (a[i + 1] * rs) * w[i + 1];
                    o[i] = y0 * cr[i] - y1 * sr[i];
                    o[i + 1] = y1 * cr[i + 1] + y0 * sr[i + 1];
                }
            } else {
                for (i = 0; i < n; i++) o[i] = (a[i] * rs) * w[i];
            }
        }
    }
}

/* The input gradient of hv_norm_rows: d = g * w (w optional), then per row
 * dx = rstd * (d - mean(d) - xhat * mean(d * xhat)) (mean(d) term only when centered). */
HV_CLONES void hv_norm_rows_backward(const float *g, const float *w, const float *xhat, const float *rstd, float *dx,
                                     size_t rows, size_t n, int centered) {
#pragma clang fp contract(off)
    for (size_t r = 0; r < rows; r++) {
        const float *gr = g + r * n, *h = xhat + r * n;
        float *d = dx + r * n;
        if (w) for (size_t i = 0; i < n; i++) d[i] = gr[i] * w[i];
        else for (size_t i = 0; i < n; i++) d[i] = gr[i];
        double l1[16] = {0}, l2[16] = {0};
        size_t i = 0;
        for (; i + 16 <= n; i += 16) for (int l = 0; l < 16; l++) { l1[l] += (double)d[i + l]; l2[l] += (double)(d[i + l] * h[i + l]); }
        for (; i < n; i++) { l1[i & 15] += (double)d[i]; l2[i & 15] += (double)(d[i] * h[i]); }
        double sd = 0, sdh = 0;
        for (int l = 0; l < 16; l++) { sd += l1[l]; sdh += l2[l]; }
        float md = centered ? (float)(sd / (double)n) : 0, mdh = (float)(sdh / (double)n), rs = rstd[r];
        for (i = 0; i < n; i++) d[i] = rs * (d[i] - md - h[i] * mdh);
    }
}

static _Thread_local int hv_parallel_nesting;
int hv_parallel_depth(void) { return hv_parallel_nesting; }
void hv_parallel_enter(void) { hv_parallel_nesting++; }
void hv_parallel_exit(void) { hv_parallel_nesting--; }
