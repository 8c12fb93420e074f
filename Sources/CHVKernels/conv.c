/* Direct stride-1 3D convolution on AVX2 + FMA (16 ymm registers): the same contracts as
 * hv_conv3d_direct and hv_conv3d_direct_wgrad (hv_kernels.h). Those keep 16-32 accumulators of
 * 16 floats, which fit AVX-512's 32 zmm registers but spill on AVX2 (two ymm each); here the
 * register tiles are sized for 16 ymm registers:
 * - forward: 6 output pixels of a row (fewer at its end) x 16 output channels (12 accumulators), a weight row of
 *   16 channels loaded per tap and each input pixel broadcast (8 loads per 12 FMAs);
 * - weight gradient: 3 horizontal taps x 16 output channels per (ci, dt, dh), even and odd
 *   positions in separate accumulators (12), over output positions one frame at a time so the
 *   frame's transposed gradient stays in L2. */
#include "hv_kernels.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CV_TARGET __attribute__((target("avx2,fma")))

/* -1: decide from the CPU (AVX2 + FMA without AVX-512F); 0: never; 1: whenever AVX2 + FMA.
 * The environment variable HV_CONV_AVX2 (0 or 1) replaces -1 at the first call. */
static int hv_conv3d_avx2_mode = -1;
void hv_conv3d_set_avx2_mode(int mode) { hv_conv3d_avx2_mode = mode; }

int hv_conv3d_avx2_active(void) {
    static int cpu = -1;
    if (cpu < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        cpu = avx2 ? (__builtin_cpu_supports("avx512f") ? 1 : 2) : 0;
        /* HV_CONV_AVX2=0 or 1 sets the default mode (A/B timings of whole runs). */
        const char *env = getenv("HV_CONV_AVX2");
        if (env && hv_conv3d_avx2_mode == -1 && (env[0] == '0' || env[0] == '1')) hv_conv3d_avx2_mode = env[0] - '0';
    }
    if (hv_conv3d_avx2_mode == 0 || cpu == 0) return 0;
    return hv_conv3d_avx2_mode == 1 || cpu == 2;
}

/* acc[p][v] (p < np <= 6 pixels, v < 2 vectors of 8 channels) = sum over (ci, dt, dh, dw) of
 * x[ci][dt][dh][p + dw] * w[((ci * kt + dt) * kh + dh) * kw + dw][v * 8 ..]. np and kw are
 * constants at every call (cv_tile), so the pixels past np drop out and the dw loop unrolls. */
static inline __attribute__((always_inline)) CV_TARGET void cv_tile_k(
        const int np, const float *x, long sci, long st, long sh, int Ci, int kt, int kh, const int kw,
        const float *w, long ldw, __m256 out[12]) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    /* The pixel offsets are hidden from the optimiser: with them known it re-uses broadcasts
     * across taps (x[p + dw] is x[(p + 1) + (dw - 1)]), keeps them live, and spills accumulators. */
    long o1 = 1, o2 = 2, o3 = 3, o4 = 4, o5 = 5;
    __asm__("" : "+r"(o1), "+r"(o2), "+r"(o3), "+r"(o4), "+r"(o5));
    for (int ci = 0; ci < Ci; ci++) {
        for (int dt = 0; dt < kt; dt++) {
            for (int dh = 0; dh < kh; dh++) {
                const float *xr = x + ci * sci + dt * st + dh * sh;
                const float *wr = w + (long)(((ci * kt + dt) * kh + dh) * kw) * ldw;
#pragma clang loop unroll(full)
                for (int dw = 0; dw < kw; dw++, xr++, wr += ldw) {
                    const __m256 b0 = _mm256_loadu_ps(wr), b1 = _mm256_loadu_ps(wr + 8);
                    __m256 t = _mm256_broadcast_ss(xr);
                    c00 = _mm256_fmadd_ps(t, b0, c00); c01 = _mm256_fmadd_ps(t, b1, c01);
                    if (np > 1) { t = _mm256_broadcast_ss(xr + o1); c10 = _mm256_fmadd_ps(t, b0, c10); c11 = _mm256_fmadd_ps(t, b1, c11); }
                    if (np > 2) { t = _mm256_broadcast_ss(xr + o2); c20 = _mm256_fmadd_ps(t, b0, c20); c21 = _mm256_fmadd_ps(t, b1, c21); }
                    if (np > 3) { t = _mm256_broadcast_ss(xr + o3); c30 = _mm256_fmadd_ps(t, b0, c30); c31 = _mm256_fmadd_ps(t, b1, c31); }
                    if (np > 4) { t = _mm256_broadcast_ss(xr + o4); c40 = _mm256_fmadd_ps(t, b0, c40); c41 = _mm256_fmadd_ps(t, b1, c41); }
                    if (np > 5) { t = _mm256_broadcast_ss(xr + o5); c50 = _mm256_fmadd_ps(t, b0, c50); c51 = _mm256_fmadd_ps(t, b1, c51); }
                }
            }
        }
    }
    out[0] = c00; out[1] = c01; out[2] = c10; out[3] = c11; out[4] = c20; out[5] = c21;
    out[6] = c30; out[7] = c31; out[8] = c40; out[9] = c41; out[10] = c50; out[11] = c51;
}

/* One copy per (np, kw): np pixels (1-6) with the horizontal kernel size kw (3 or 1), each its own
 * function so the compiler keeps every copy unrolled and in registers. */
#define CV_TILE_FN(NP, KW) \
    static __attribute__((noinline)) CV_TARGET void cv_tile_##NP##_##KW( \
            const float *x, long sci, long st, long sh, int Ci, int kt, int kh, const float *w, long ldw, __m256 out[12]) { \
        cv_tile_k(NP, x, sci, st, sh, Ci, kt, kh, KW, w, ldw, out); \
    }
CV_TILE_FN(1, 1) CV_TILE_FN(2, 1) CV_TILE_FN(3, 1) CV_TILE_FN(4, 1) CV_TILE_FN(5, 1) CV_TILE_FN(6, 1)
CV_TILE_FN(1, 3) CV_TILE_FN(2, 3) CV_TILE_FN(3, 3) CV_TILE_FN(4, 3) CV_TILE_FN(5, 3) CV_TILE_FN(6, 3)

typedef void (*cv_tile_fn)(const float *, long, long, long, int, int, int, const float *, long, __m256 *);

/* The tile function for np pixels (1-6) and kw 3 or 1, so a row's last, narrower tile costs only
 * its own pixels. */
static cv_tile_fn cv_tile_for(int np, int kw) {
    static const cv_tile_fn k1[6] = {cv_tile_1_1, cv_tile_2_1, cv_tile_3_1, cv_tile_4_1, cv_tile_5_1, cv_tile_6_1};
    static const cv_tile_fn k3[6] = {cv_tile_1_3, cv_tile_2_3, cv_tile_3_3, cv_tile_4_3, cv_tile_5_3, cv_tile_6_3};
    return kw == 3 ? k3[np - 1] : k1[np - 1];
}

/* The widths of a row's tiles: 6 pixels, except that a remainder of 1-3 is balanced with the
 * previous tile (Wo 32 = 6+6+6+6+4+4, Wo 16 = 6+6+4, Wo 8 = 4+4), keeping 8+ FMA chains. */
static inline int cv_tile_width(int w0, int Wo) {
    const int left = Wo - w0;
    if (left <= 6) return left;
    if (left < 10) return left - left / 2;
    return 6;
}

CV_TARGET void hv_conv3d_direct_avx2(const float *x, int Ci, int Tp, int Hp, int Wp,
                                     const float *wt, int Co, int kt, int kh, int kw,
                                     float *out, int row0, int row1) {
    const int Ho = Hp - kh + 1, Wo = Wp - kw + 1, To = Tp - kt + 1;
    const long CoP = (Co + 15) / 16 * 16, plane = (long)To * Ho * Wo;
    const long sci = (long)Tp * Hp * Wp, st = (long)Hp * Wp, sh = Wp;
    for (int r = row0; r < row1; r++) {
        const int t = r / Ho, h = r % Ho;
        for (int c0 = 0; c0 < Co; c0 += 16) {
            const int cl = Co - c0 < 16 ? Co - c0 : 16;
            for (int w0 = 0, np; w0 < Wo; w0 += np) {
                np = cv_tile_width(w0, Wo);
                __m256 acc[12];
                cv_tile_for(np, kw)(x + ((long)t * Hp + h) * Wp + w0, sci, st, sh, Ci, kt, kh, wt + c0, CoP, acc);
                float lanes[6][16];
                for (int p = 0; p < np; p++) { _mm256_storeu_ps(lanes[p], acc[2 * p]); _mm256_storeu_ps(lanes[p] + 8, acc[2 * p + 1]); }
                float *o = out + (long)c0 * plane + (long)r * Wo + w0;
                for (int c = 0; c < cl; c++, o += plane)
                    for (int p = 0; p < np; p++) o[p] = lanes[p][c];
            }
        }
    }
}

/* acc[k][v] += sum over output positions of one frame of x[.. + k] * g[pos][v * 8 ..] for the
 * horizontal taps k < KW (constant at each call) and 16 output channels: 2 gradient loads and
 * KW broadcasts per 2 x KW FMAs. Even and odd positions go to separate accumulators (2 x 2 x KW
 * + 3 registers), so up to 12 independent FMA chains hide the FMA latency. */
static inline __attribute__((always_inline)) CV_TARGET void cv_wgrad_frame(
        const float *x, long sh, const float *g, long ldg, int Ho, int Wo, const int KW, __m256 acc[3][2]) {
    __m256 odd[3][2];
    for (int k = 0; k < 3; k++) odd[k][0] = odd[k][1] = _mm256_setzero_ps();
    for (int h = 0; h < Ho; h++) {
        const float *xr = x + h * sh;
        const float *gr = g + (long)h * Wo * ldg;
        int w = 0;
        for (; w + 2 <= Wo; w += 2, gr += 2 * ldg) {
            __m256 g0 = _mm256_loadu_ps(gr), g1 = _mm256_loadu_ps(gr + 8);
#pragma clang loop unroll(full)
            for (int k = 0; k < KW; k++) {
                const __m256 xs = _mm256_broadcast_ss(xr + w + k);
                acc[k][0] = _mm256_fmadd_ps(xs, g0, acc[k][0]);
                acc[k][1] = _mm256_fmadd_ps(xs, g1, acc[k][1]);
            }
            g0 = _mm256_loadu_ps(gr + ldg); g1 = _mm256_loadu_ps(gr + ldg + 8);
#pragma clang loop unroll(full)
            for (int k = 0; k < KW; k++) {
                const __m256 xs = _mm256_broadcast_ss(xr + w + 1 + k);
                odd[k][0] = _mm256_fmadd_ps(xs, g0, odd[k][0]);
                odd[k][1] = _mm256_fmadd_ps(xs, g1, odd[k][1]);
            }
        }
        if (w < Wo) {
            const __m256 g0 = _mm256_loadu_ps(gr), g1 = _mm256_loadu_ps(gr + 8);
#pragma clang loop unroll(full)
            for (int k = 0; k < KW; k++) {
                const __m256 xs = _mm256_broadcast_ss(xr + w + k);
                acc[k][0] = _mm256_fmadd_ps(xs, g0, acc[k][0]);
                acc[k][1] = _mm256_fmadd_ps(xs, g1, acc[k][1]);
            }
        }
    }
#pragma clang loop unroll(full)
    for (int k = 0; k < KW; k++) {
        acc[k][0] = _mm256_add_ps(acc[k][0], odd[k][0]);
        acc[k][1] = _mm256_add_ps(acc[k][1], odd[k][1]);
    }
}

CV_TARGET void hv_conv3d_direct_wgrad_avx2(const float *x, int Ci, int Tp, int Hp, int Wp,
                                           const float *gT, int Co, int kt, int kh, int kw,
                                           float *dw, int ci0, int ci1) {
    const int To = Tp - kt + 1, Ho = Hp - kh + 1, Wo = Wp - kw + 1;
    const long CoP = (Co + 31) / 32 * 32, frame = (long)Ho * Wo;
    for (int t = 0; t < To; t++) {
        const float *g = gT + (long)t * frame * CoP;
        for (int ci = ci0; ci < ci1; ci++) {
            for (int dt = 0; dt < kt; dt++) {
                for (int dh = 0; dh < kh; dh++) {
                    const float *xf = x + (((long)ci * Tp + t + dt) * Hp + dh) * Wp;
                    for (int c0 = 0; c0 < Co; c0 += 16) {
                        __m256 acc[3][2];
                        for (int k = 0; k < 3; k++) acc[k][0] = acc[k][1] = _mm256_setzero_ps();
                        if (kw == 3) cv_wgrad_frame(xf, Wp, g + c0, CoP, Ho, Wo, 3, acc);
                        else cv_wgrad_frame(xf, Wp, g + c0, CoP, Ho, Wo, 1, acc);
                        for (int k = 0; k < kw; k++) {
                            float lanes[16];
                            _mm256_storeu_ps(lanes, acc[k][0]);
                            _mm256_storeu_ps(lanes + 8, acc[k][1]);
                            for (int c = 0; c < 16 && c0 + c < Co; c++)
                                dw[((((long)(c0 + c) * Ci + ci) * kt + dt) * kh + dh) * kw + k] += lanes[c];
                        }
                    }
                }
            }
        }
    }
}
#else
void hv_conv3d_set_avx2_mode(int mode) {}
int hv_conv3d_avx2_active(void) { return 0; }
void hv_conv3d_direct_avx2(const float *x, int Ci, int Tp, int Hp, int Wp, const float *wt, int Co, int kt, int kh,
                           int kw, float *out, int row0, int row1) {}
void hv_conv3d_direct_wgrad_avx2(const float *x, int Ci, int Tp, int Hp, int Wp, const float *gT, int Co, int kt,
                                 int kh, int kw, float *dw, int ci0, int ci1) {}
#endif
