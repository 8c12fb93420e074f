/* Fused attention of one head on AVX2 + FMA: scores, softmax and the products with V (and, in
 * backward, dP, dS, dQ, dK, dV) in one pass per strip of 6 query rows, through one 6 x 16
 * register-tile micro-kernel over operands packed once per call. Replaces blocked attention
 * over small OpenBLAS calls (K = 64 GEMMs run at ~60% of one core's peak there, and every
 * call re-packs its operands).
 *
 * Layout: q [sq, d], k/v [sk, d], out/dout/dq [sq, d], dk/dv [sk, d], all row-major and
 * contiguous; d a multiple of 16. Keys are padded to kp (a multiple of 48) with zero rows that
 * the mask bias sets to -inf. */
#include "hv_kernels.h"
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define AT_TARGET __attribute__((target("avx2,fma")))

int hv_attention_available(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    }
    return cached;
}

/* C[r][0..16) (+)= sum_p A(r, p) * B[p][0..16) for r < mr (rows >= mr are computed on row 0's
 * data and dropped). A(r, p) = A[r * rsa + p * csa]; B rows at stride ldb. */
#define MK_BODY(RSA, CSA)                                                                       \
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,    \
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                     \
    const float *a0 = A, *a1 = mr > 1 ? A + (RSA) : A, *a2 = mr > 2 ? A + 2 * (RSA) : A,         \
                *a3 = mr > 3 ? A + 3 * (RSA) : A, *a4 = mr > 4 ? A + 4 * (RSA) : A,              \
                *a5 = mr > 5 ? A + 5 * (RSA) : A;                                                \
    for (int p = 0; p < kc; p++) {                                                              \
        const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);                      \
        B += ldb;                                                                               \
        const long o = (long)p * (CSA);                                                         \
        __m256 t = _mm256_broadcast_ss(a0 + o);                                                 \
        c00 = _mm256_fmadd_ps(t, b0, c00); c01 = _mm256_fmadd_ps(t, b1, c01);                   \
        t = _mm256_broadcast_ss(a1 + o);                                                        \
        c10 = _mm256_fmadd_ps(t, b0, c10); c11 = _mm256_fmadd_ps(t, b1, c11);                   \
        t = _mm256_broadcast_ss(a2 + o);                                                        \
        c20 = _mm256_fmadd_ps(t, b0, c20); c21 = _mm256_fmadd_ps(t, b1, c21);                   \
        t = _mm256_broadcast_ss(a3 + o);                                                        \
        c30 = _mm256_fmadd_ps(t, b0, c30); c31 = _mm256_fmadd_ps(t, b1, c31);                   \
        t = _mm256_broadcast_ss(a4 + o);                                                        \
        c40 = _mm256_fmadd_ps(t, b0, c40); c41 = _mm256_fmadd_ps(t, b1, c41);                   \
        t = _mm256_broadcast_ss(a5 + o);                                                        \
        c50 = _mm256_fmadd_ps(t, b0, c50); c51 = _mm256_fmadd_ps(t, b1, c51);                   \
    }                                                                                           \
    if (mr == 6 && !accumulate) {                                                               \
        _mm256_storeu_ps(C, c00); _mm256_storeu_ps(C + 8, c01);                                 \
        _mm256_storeu_ps(C + ldc, c10); _mm256_storeu_ps(C + ldc + 8, c11);                     \
        _mm256_storeu_ps(C + 2 * ldc, c20); _mm256_storeu_ps(C + 2 * ldc + 8, c21);             \
        _mm256_storeu_ps(C + 3 * ldc, c30); _mm256_storeu_ps(C + 3 * ldc + 8, c31);             \
        _mm256_storeu_ps(C + 4 * ldc, c40); _mm256_storeu_ps(C + 4 * ldc + 8, c41);             \
        _mm256_storeu_ps(C + 5 * ldc, c50); _mm256_storeu_ps(C + 5 * ldc + 8, c51);             \
        return;                                                                                 \
    }                                                                                           \
    __m256 rows[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};             \
    for (int r = 0; r < mr; r++) {                                                              \
        float *cr = C + (long)r * ldc;                                                          \
        if (accumulate) {                                                                       \
            _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), rows[2 * r]));              \
            _mm256_storeu_ps(cr + 8, _mm256_add_ps(_mm256_loadu_ps(cr + 8), rows[2 * r + 1]));  \
        } else {                                                                                \
            _mm256_storeu_ps(cr, rows[2 * r]);                                                  \
            _mm256_storeu_ps(cr + 8, rows[2 * r + 1]);                                          \
        }                                                                                       \
    }

/* A row-major: A(r, p) = A[r * lda + p]. */
AT_TARGET static void mk_rows(int mr, int kc, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                              int accumulate) {
    MK_BODY(lda, 1)
}

/* A column-major (the transpose of a row-major block): A(r, p) = A[r + p * lda]. */
AT_TARGET static void mk_cols(int mr, int kc, const float *A, long lda, const float *B, long ldb, float *C, long ldc,
                              int accumulate) {
    MK_BODY(1, lda)
}

/* dst[(j / 16) * d * 16 + c * 16 + j % 16] = alpha * src[j * ld + c]: 16-key panels, d-major
 * (the B operand of a contraction over d). Rows j >= n are zero. */
static void pack_panels_t(const float *src, long ld, int n, int np, int d, float alpha, float *dst) {
    for (int j0 = 0; j0 < np; j0 += 16) {
        float *panel = dst + (long)j0 * d;
        for (int c = 0; c < d; c++)
            for (int j = 0; j < 16; j++)
                panel[c * 16 + j] = j0 + j < n ? alpha * src[(long)(j0 + j) * ld + c] : 0.0f;
    }
}

/* dst[(c / 16) * np * 16 + j * 16 + c % 16] = alpha * src[j * ld + c]: 16-column panels of the
 * key rows (the B operand of a contraction over keys). Rows j >= n are zero. */
static void pack_panels_n(const float *src, long ld, int n, int np, int d, float alpha, float *dst) {
    for (int c0 = 0; c0 < d; c0 += 16) {
        float *panel = dst + (long)c0 * np;
        for (int j = 0; j < np; j++)
            for (int c = 0; c < 16; c++)
                panel[j * 16 + c] = j < n ? alpha * src[(long)j * ld + c0 + c] : 0.0f;
    }
}

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

/* Frame-causal limit: global row R sees global columns < (R / cb + 1) * cb. */
static long causal_limit(int cb, long row, long colOffset) { return (row / cb + 1) * (long)cb - colOffset; }

/* 16-key panels that a strip of mr rows from global row row0 sees (all kp / 16 unless causal). */
static int strip_panels(int mr, int kp, int cb, long row0, long colOffset) {
    if (cb <= 0) return kp / 16;
    long lim = causal_limit(cb, row0 + mr - 1, colOffset);
    if (lim >= (long)kp) return kp / 16;
    return lim <= 0 ? 0 : (int)((lim + 15) / 16);
}

/* Scores of one strip: rows (strip + r * kp) get scale * q k^T + bias, then -inf past the causal
 * limit; returns the number of 16-key panels computed (the rest of each row is untouched).
 * bias is zero before biasFrom (a multiple of 8), where it is not added. */
AT_TARGET static int strip_scores(int mr, const float *q, long ldq, int d, const float *ktp, const float *bias, int biasFrom,
                                  int kp, float *strip, int cb, long row0, long colOffset) {
    const int np = strip_panels(mr, kp, cb, row0, colOffset);
    for (int pj = 0; pj < np; pj++) mk_rows(mr, d, q, ldq, ktp + (long)pj * d * 16, 16, strip + pj * 16, kp, 0);
    for (int r = 0; r < mr; r++) {
        float *row = strip + (long)r * kp;
        for (int j = biasFrom; j < np * 16; j += 8)
            _mm256_storeu_ps(row + j, _mm256_add_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(bias + j)));
        if (cb > 0) {
            long lim = causal_limit(cb, row0 + r, colOffset);
            for (long j = lim < 0 ? 0 : lim; j < np * 16; j++) row[j] = -INFINITY;
        }
    }
    return np;
}

/* Bias per padded key: 0 where attended, -inf for masked keys and padding. Returns the first
 * key of the first 8 with a bias (kp when none: every key attended, no padding). */
static int key_bias(const float *keyMask, int sk, int kp, float *bias) {
    int first = kp;
    for (int j = kp - 1; j >= 0; j--) {
        bias[j] = j < sk && (!keyMask || keyMask[j] != 0) ? 0.0f : -INFINITY;
        if (bias[j] != 0.0f) first = j;
    }
    return first / 8 * 8;
}

int hv_attention_probs_stride(int sk) { return round_up(sk, 48); }

/* probs, when not NULL: row r of the softmax (the attention probabilities) at probs[r * kp ..],
 * kp = hv_attention_probs_stride(sk), zero past the keys the row sees. */
AT_TARGET static int forward_head(const float *q, long ldq, const float *k, long ldk, const float *v, long ldv,
                                  const float *keyMask, int sq, int sk, int d, float scale, float *out, long ldo,
                                  float *lse, int causalBlock, long rowOffset, long colOffset, float *probs) {
    if (!hv_attention_available() || d % 16 != 0 || d <= 0 || sq <= 0 || sk <= 0) return 0;
    const int kp = round_up(sk, 48);
    float *ktp = malloc(sizeof(float) * ((size_t)kp * d * 2 + (size_t)kp * 7));
    if (!ktp) return 0;
    float *vp = ktp + (size_t)kp * d, *bias = vp + (size_t)kp * d, *strip = bias + kp;
    pack_panels_t(k, ldk, sk, kp, d, scale, ktp);
    pack_panels_n(v, ldv, sk, kp, d, 1.0f, vp);
    const int biasFrom = key_bias(keyMask, sk, kp, bias);
    for (int r0 = 0; r0 < sq; r0 += 6) {
        const int mr = sq - r0 < 6 ? sq - r0 : 6;
        const int np = strip_scores(mr, q + (long)r0 * ldq, ldq, d, ktp, bias, biasFrom, kp, strip, causalBlock, rowOffset + r0, colOffset);
        const int n = np * 16;
        float inv[6];
        for (int r = 0; r < mr; r++) {
            float *row = strip + (long)r * kp;
            float mx = hv_row_max(row, (size_t)n);
            if (mx == -INFINITY) {
                memset(row, 0, sizeof(float) * (size_t)n);
                inv[r] = 0;
                lse[r0 + r] = -INFINITY;
            } else {
                float l = hv_exp_shift_sum(row, (size_t)n, mx);
                inv[r] = 1.0f / l;
                lse[r0 + r] = mx + logf(l);
            }
        }
        if (probs)  // kept for the backward, long after: streamed past the caches when aligned
            for (int r = 0; r < mr; r++) {
                const float *row = strip + (long)r * kp;
                float *pr = probs + (long)(r0 + r) * kp;
                const __m256 s = _mm256_set1_ps(inv[r]), z = _mm256_setzero_ps();
                if (((uintptr_t)pr & 31) == 0) {
                    for (int j = 0; j < n; j += 8) _mm256_stream_ps(pr + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), s));
                    for (int j = n; j < kp; j += 8) _mm256_stream_ps(pr + j, z);
                } else {
                    for (int j = 0; j < n; j += 8) _mm256_storeu_ps(pr + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), s));
                    for (int j = n; j < kp; j += 8) _mm256_storeu_ps(pr + j, z);
                }
            }
        float *o = out + (long)r0 * ldo;
        for (int c0 = 0; c0 < d; c0 += 16) {
            if (n > 0) mk_rows(mr, n, strip, kp, vp + (long)c0 * kp, 16, o + c0, ldo, 0);
            else for (int r = 0; r < mr; r++) memset(o + (long)r * ldo + c0, 0, sizeof(float) * 16);
        }
        for (int r = 0; r < mr; r++) {
            const __m256 s = _mm256_set1_ps(inv[r]);
            float *orow = o + (long)r * ldo;
            for (int c = 0; c < d; c += 8) _mm256_storeu_ps(orow + c, _mm256_mul_ps(_mm256_loadu_ps(orow + c), s));
        }
    }
    if (probs) _mm_sfence();  // the streamed stores are visible before another thread reads them
    free(ktp);
    return 1;
}

int hv_attention_forward_head_ld(const float *q, long ldq, const float *k, long ldk, const float *v, long ldv,
                                 const float *keyMask, int sq, int sk, int d, float scale, float *out, long ldo,
                                 float *lse, int causalBlock, long rowOffset, long colOffset) {
    return forward_head(q, ldq, k, ldk, v, ldv, keyMask, sq, sk, d, scale, out, ldo, lse, causalBlock, rowOffset, colOffset, NULL);
}

int hv_attention_forward_head(const float *q, const float *k, const float *v, const float *keyMask, int sq, int sk, int d,
                              float scale, float *out, float *lse, int causalBlock, long rowOffset, long colOffset) {
    return forward_head(q, d, k, d, v, d, keyMask, sq, sk, d, scale, out, d, lse, causalBlock, rowOffset, colOffset, NULL);
}

int hv_attention_forward_head_probs(const float *q, const float *k, const float *v, const float *keyMask, int sq, int sk,
                                    int d, float scale, float *out, float *lse, int causalBlock, float *probs) {
    return forward_head(q, d, k, d, v, d, keyMask, sq, sk, d, scale, out, d, lse, causalBlock, 0, 0, probs);
}

#define AT_BQ 48

/* probs, when not NULL: the forward's probabilities (hv_attention_forward_head_probs), read
 * instead of recomputing scores and exponentials (a fifth of the backward's products). */
AT_TARGET static int backward_head(const float *q, const float *k, const float *v, const float *keyMask,
                                   const float *out, const float *lse, const float *dout, int sq, int sk, int d,
                                   float scale, float *dq, float *dk, float *dv, int causalBlock, long colOffset,
                                   int accumulateDQ, int accumulateDKV, const float *probs) {
    if (!hv_attention_available() || d % 16 != 0 || d <= 0 || sq <= 0 || sk <= 0) return 0;
    const int kp = round_up(sk, 48);
    const size_t kd = (size_t)kp * d;
    float *buf = malloc(sizeof(float) * (kd * 5 + (size_t)kp * (1 + 2 * AT_BQ) + (size_t)sq));
    if (!buf) return 0;
    float *ktp = buf, *vtp = ktp + kd, *kn = vtp + kd, *dkacc = kn + kd, *dvacc = dkacc + kd;
    float *bias = dvacc + kd, *pblk = bias + kp, *dsblk = pblk + (size_t)AT_BQ * kp, *delta = dsblk + (size_t)AT_BQ * kp;
    if (!probs) pack_panels_t(k, d, sk, kp, d, scale, ktp);   // scores = q (scale k)^T
    pack_panels_t(v, d, sk, kp, d, 1.0f, vtp);    // dP = dO v^T
    pack_panels_n(k, d, sk, kp, d, scale, kn);    // dQ = dS (scale k)
    memset(dkacc, 0, sizeof(float) * kd * 2);
    const int biasFrom = key_bias(keyMask, sk, kp, bias);
    for (int r = 0; r < sq; r++) {
        const float *g = dout + (long)r * d, *o = out + (long)r * d;
        __m256 s = _mm256_setzero_ps();
        for (int c = 0; c < d; c += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(g + c), _mm256_loadu_ps(o + c), s);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        delta[r] = _mm_cvtss_f32(h);
    }
    for (int qb = 0; qb < sq; qb += AT_BQ) {
        const int nb = sq - qb < AT_BQ ? sq - qb : AT_BQ;
        int nmax = 0;  // keys (a multiple of 16) that any row of this block can see
        // The block's probabilities: the forward's rows (zero past each row's keys), or pblk.
        const float *pb = probs ? probs + (long)qb * kp : pblk;
        for (int r0 = qb; r0 < qb + nb; r0 += 6) {
            const int mr = qb + nb - r0 < 6 ? qb + nb - r0 : 6;
            float *ds = dsblk + (long)(r0 - qb) * kp;
            const float *p = pb + (long)(r0 - qb) * kp;
            const int np = probs ? strip_panels(mr, kp, causalBlock, r0, colOffset)
                                 : strip_scores(mr, q + (long)r0 * d, d, d, ktp, bias, biasFrom, kp, pblk + (long)(r0 - qb) * kp, causalBlock, r0, colOffset);
            const int n = np * 16;
            if (n > nmax) {  // rows of earlier strips are zero over the newly reached keys
                for (int i = 0; i < r0 - qb; i++) {
                    if (!probs) memset(pblk + (long)i * kp + nmax, 0, sizeof(float) * (size_t)(n - nmax));
                    memset(dsblk + (long)i * kp + nmax, 0, sizeof(float) * (size_t)(n - nmax));
                }
                nmax = n;
            }
            if (!probs)
                for (int r = 0; r < mr; r++) {
                    float *row = pblk + (long)(r0 - qb + r) * kp;
                    const float L = lse[r0 + r];
                    if (L == -INFINITY) memset(row, 0, sizeof(float) * (size_t)n);
                    else hv_exp_shift_sum(row, (size_t)n, L);
                    if (n < nmax) memset(row + n, 0, sizeof(float) * (size_t)(nmax - n));
                }
            for (int pj = 0; pj < np; pj++) mk_rows(mr, d, dout + (long)r0 * d, d, vtp + (long)pj * d * 16, 16, ds + pj * 16, kp, 0);
            for (int r = 0; r < mr; r++) {
                hv_softmax_grad_row(p + (long)r * kp, ds + (long)r * kp, (size_t)n, delta[r0 + r]);
                if (n < nmax) memset(ds + (long)r * kp + n, 0, sizeof(float) * (size_t)(nmax - n));
            }
            for (int c0 = 0; c0 < d; c0 += 16) {
                float *dqr = dq + (long)r0 * d + c0;
                if (n > 0) mk_rows(mr, n, ds, kp, kn + (long)c0 * kp, 16, dqr, d, accumulateDQ);
                else if (!accumulateDQ) for (int r = 0; r < mr; r++) memset(dqr + (long)r * d, 0, sizeof(float) * 16);
            }
        }
        // dV[j] += sum_i P[i][j] dO[i]; dK[j] += sum_i dS[i][j] q[i] (scale applied at the end).
        // One after the other: together their blocks and accumulators (~1 MB at 1,056 keys) would
        // crowd a 1 MB L2 (8% slower in a harness).
        for (int j0 = 0; j0 < nmax; j0 += 6)
            for (int c0 = 0; c0 < d; c0 += 16)
                mk_cols(nmax - j0 < 6 ? nmax - j0 : 6, nb, pb + j0, kp, dout + (long)qb * d + c0, d, dvacc + (long)j0 * d + c0, d, 1);
        for (int j0 = 0; j0 < nmax; j0 += 6)
            for (int c0 = 0; c0 < d; c0 += 16)
                mk_cols(nmax - j0 < 6 ? nmax - j0 : 6, nb, dsblk + j0, kp, q + (long)qb * d + c0, d, dkacc + (long)j0 * d + c0, d, 1);
    }
    for (int j = 0; j < sk; j++) {
        float *dkr = dk + (long)j * d, *dvr = dv + (long)j * d;
        const float *ka = dkacc + (long)j * d, *va = dvacc + (long)j * d;
        for (int c = 0; c < d; c++) {
            if (accumulateDKV) { dkr[c] += scale * ka[c]; dvr[c] += va[c]; }
            else { dkr[c] = scale * ka[c]; dvr[c] = va[c]; }
        }
    }
    free(buf);
    return 1;
}

int hv_attention_backward_head(const float *q, const float *k, const float *v, const float *keyMask, const float *out,
                               const float *lse, const float *dout, int sq, int sk, int d, float scale, float *dq,
                               float *dk, float *dv, int causalBlock, long colOffset, int accumulateDQ,
                               int accumulateDKV) {
    return backward_head(q, k, v, keyMask, out, lse, dout, sq, sk, d, scale, dq, dk, dv, causalBlock, colOffset, accumulateDQ,
                         accumulateDKV, NULL);
}

int hv_attention_backward_head_probs(const float *q, const float *k, const float *v, const float *keyMask,
                                     const float *out, const float *probs, const float *dout, int sq, int sk, int d,
                                     float scale, float *dq, float *dk, float *dv, int causalBlock) {
    return backward_head(q, k, v, keyMask, out, NULL, dout, sq, sk, d, scale, dq, dk, dv, causalBlock, 0, 0, 0, probs);
}

#else
int hv_attention_available(void) { return 0; }
int hv_attention_forward_head_ld(const float *q, long ldq, const float *k, long ldk, const float *v, long ldv,
                                 const float *keyMask, int sq, int sk, int d, float scale, float *out, long ldo,
                                 float *lse, int causalBlock, long rowOffset, long colOffset) {
    return 0;
}
int hv_attention_forward_head(const float *q, const float *k, const float *v, const float *keyMask, int sq, int sk, int d,
                              float scale, float *out, float *lse, int causalBlock, long rowOffset, long colOffset) {
    return 0;
}
int hv_attention_backward_head(const float *q, const float *k, const float *v, const float *keyMask, const float *out,
                               const float *lse, const float *dout, int sq, int sk, int d, float scale, float *dq,
                               float *dk, float *dv, int causalBlock, long colOffset, int accumulateDQ,
                               int accumulateDKV) {
    return 0;
}
int hv_attention_probs_stride(int sk) { return (sk + 47) / 48 * 48; }
int hv_attention_forward_head_probs(const float *q, const float *k, const float *v, const float *keyMask, int sq, int sk,
                                    int d, float scale, float *out, float *lse, int causalBlock, float *probs) {
    return 0;
}
int hv_attention_backward_head_probs(const float *q, const float *k, const float *v, const float *keyMask,
                                     const float *out, const float *probs, const float *dout, int sq, int sk, int d,
                                     float scale, float *dq, float *dk, float *dv, int causalBlock) {
    return 0;
}
#endif
