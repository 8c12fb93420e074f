// fp32 GEMM for CPUs with AVX2 + FMA: C = alpha A·B (+ C) (+ bias per column), operands with
// arbitrary strides. It matches OpenBLAS's sgemm on one core at the DiT's shapes and lets hv
// (1) add a linear layer's bias in the epilogue instead of copying it into C first, and (2) run
// on the GEMMs' own persistent threads, which hand over to hv's elementwise work without
// OpenBLAS's spinning and yielding.
//
// Layout (Goto/BLIS-style): a K block (KC) of B is packed into panels of NR = 16 columns,
// [k][column]; a block of MC rows of A into panels of MR = 6 rows, [k][row]. The micro-kernel
// keeps a 6 x 16 tile of C in 12 ymm registers and per k broadcasts one A value per row against
// two ymm of B (the BLIS Haswell/Zen shape: 12 accumulators, 2 B registers, 1 broadcast).
#include "gemm_pool.h"
#include "hv_kernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define MR 6
#define NR 16
#define KC 512      // K per block: an NR panel of B is 32 KiB (L1), an MR panel of A 12 KiB
#define MC 144      // rows of A per block: 288 KiB packed (L2)
#define NC 2048     // columns of B per block: 4 MiB packed (L3)

#define F32_TARGET __attribute__((target("avx2,fma")))

/// Packs a strided operand into a panel: out[k * w + j] = S(k, j) = src[k * sk + j * sj] for
/// k < kn, j < wn, and 0 for wn <= j < w (w <= 16). Fast paths: sj == 1 (a panel row is
/// contiguous: copies) and sk == 1 (a panel column is contiguous: 8 x 8 transposes).
F32_TARGET
static void pack_panel(float *out, const float *src, long sk, long sj, int kn, int wn, int w) {
    if (sj == 1) {
        if (wn == 16 && w == 16) {
            for (int k = 0; k < kn; k++) {
                _mm256_store_ps(out + k * 16, _mm256_loadu_ps(src + k * sk));
                _mm256_store_ps(out + k * 16 + 8, _mm256_loadu_ps(src + k * sk + 8));
            }
            return;
        }
        if (w <= 8) {
            // An MR panel of a transposed operand: one masked load and one full store per k.
            // Each store spills 8 - w lanes into the next k's row, which the next store then
            // overwrites; only the panel's last row needs a masked store (slow on AMD cores;
            // the change made no difference measurable through this host's noise).
            const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256i lm = _mm256_cmpgt_epi32(_mm256_set1_epi32(wn), lanes), sm = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lanes);
            for (int k = 0; k + 1 < kn; k++) _mm256_storeu_ps(out + k * w, _mm256_maskload_ps(src + k * sk, lm));
            if (kn > 0) _mm256_maskstore_ps(out + (kn - 1) * w, sm, _mm256_maskload_ps(src + (long)(kn - 1) * sk, lm));
            return;
        }
        for (int k = 0; k < kn; k++)
            for (int j = 0; j < w; j++) out[k * w + j] = j < wn ? src[k * sk + j] : 0;
        return;
    }
    if (sk == 1) {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        int k = 0;
        for (; k + 8 <= kn; k += 8) {
            for (int j0 = 0; j0 < w; j0 += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = j0 + i < wn ? _mm256_loadu_ps(src + (long)(j0 + i) * sj + k) : _mm256_setzero_ps();
                __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
                __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
                __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
                __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
                __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                __m256 c[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                               _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                               _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                               _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
                float *o = out + (long)k * w + j0;
                if (w - j0 >= 8) {
                    for (int q = 0; q < 8; q++) _mm256_storeu_ps(o + (long)q * w, c[q]);
                } else {
                    // A panel narrower than 8 (an MR panel): full stores in k order, each spilling
                    // into the next row, which the next store overwrites (lanes past wn are zero);
                    // a masked store only for the panel's last row, which has no next row.
                    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(w - j0), lanes);
                    for (int q = 0; q < 8; q++) {
                        if (w <= 8 && k + q + 1 < kn) _mm256_storeu_ps(o + (long)q * w, c[q]);
                        else _mm256_maskstore_ps(o + (long)q * w, mask, c[q]);
                    }
                }
            }
        }
        for (; k < kn; k++)
            for (int j = 0; j < w; j++) out[(long)k * w + j] = j < wn ? src[(long)j * sj + k] : 0;
        return;
    }
    for (int k = 0; k < kn; k++)
        for (int j = 0; j < w; j++) out[(long)k * w + j] = j < wn ? src[(long)k * sk + (long)j * sj] : 0;
}

#define ROW(m)                                                                                 \
    {                                                                                          \
        __m256 av = _mm256_broadcast_ss(a + (m));                                              \
        c##m##0 = _mm256_fmadd_ps(av, b0, c##m##0);                                            \
        c##m##1 = _mm256_fmadd_ps(av, b1, c##m##1);                                            \
    }

/// C tile [MR x NR] = alpha · (A panel · B panel over kc) (+ C when addC) (+ the bias row when
/// bias != NULL), of which mr x nr are valid.
F32_TARGET
static void micro_kernel(int kc, const float *a, const float *b, float *C, long ldc, int mr, int nr, float alpha,
                         int addC, const float *bias) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int m = 0; m < mr; m++) {
        _mm_prefetch((const char *)(C + (long)m * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + (long)m * ldc + NR - 1), _MM_HINT_T0);
    }
#pragma clang loop unroll_count(4)
    for (int k = 0; k < kc; k++) {
        _mm_prefetch((const char *)(b + 8 * NR), _MM_HINT_T0);
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
        a += MR;
        b += NR;
    }
    __m256 cs[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (alpha != 1.0f) {
        const __m256 s = _mm256_set1_ps(alpha);
        for (int m = 0; m < MR; m++) {
            cs[m][0] = _mm256_mul_ps(cs[m][0], s);
            cs[m][1] = _mm256_mul_ps(cs[m][1], s);
        }
    }
    if (mr == MR && nr == NR) {
        __m256 z0 = _mm256_setzero_ps(), z1 = z0;
        if (bias) { z0 = _mm256_loadu_ps(bias); z1 = _mm256_loadu_ps(bias + 8); }
        for (int m = 0; m < MR; m++) {
            float *row = C + (long)m * ldc;
            __m256 v0 = _mm256_add_ps(cs[m][0], addC ? _mm256_add_ps(_mm256_loadu_ps(row), z0) : z0);
            __m256 v1 = _mm256_add_ps(cs[m][1], addC ? _mm256_add_ps(_mm256_loadu_ps(row + 8), z1) : z1);
            _mm256_storeu_ps(row, v0);
            _mm256_storeu_ps(row + 8, v1);
        }
        return;
    }
    float t[MR * NR];
    for (int m = 0; m < MR; m++) {
        _mm256_storeu_ps(t + m * NR, cs[m][0]);
        _mm256_storeu_ps(t + m * NR + 8, cs[m][1]);
    }
    for (int m = 0; m < mr; m++)
        for (int n = 0; n < nr; n++) {
            float base = (addC ? C[(long)m * ldc + n] : 0) + (bias ? bias[n] : 0);
            C[(long)m * ldc + n] = t[m * NR + n] + base;
        }
}

/// C block [mc x nc] from packed A panels (mc rows) and packed B panels (nc columns) over kc.
F32_TARGET
static void macro_kernel(int kc, const float *a, const float *b, float *C, long ldc, int mc, int nc, float alpha,
                         int addC, const float *bias) {
    for (int jr = 0; jr < nc; jr += NR) {
        int nr = nc - jr < NR ? nc - jr : NR;
        for (int ir = 0; ir < mc; ir += MR) {
            int mr = mc - ir < MR ? mc - ir : MR;
            micro_kernel(kc, a + (long)(ir / MR) * kc * MR, b + (long)(jr / NR) * kc * NR, C + (long)ir * ldc + jr, ldc,
                         mr, nr, alpha, addC, bias ? bias + jr : NULL);
        }
    }
}

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

/// A 64-byte aligned packing buffer; out of memory is fatal (with a message, not a crash later).
static float *gemm_buffer(size_t bytes) {
    float *b = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!b) {
        fprintf(stderr, "hv: out of memory for a %zu-byte GEMM packing buffer\n", bytes);
        abort();
    }
    return b;
}

// Threads: the larger of M and N is cut into units (up to UNIT_ROWS rows of A, or UNIT_COLS
// columns of B) and the other operand is shared: each K block of the shared operand is packed
// once, cooperatively, with a barrier between packing and use and between use and the next
// block. Each thread starts with its own contiguous run of units and, when done, takes the
// unclaimed units of the others' runs (one atomic counter per run): on a shared host one core
// often stalls for a few milliseconds, and a static split made the other wait for it at the
// barrier (about 3% of a sampling step went to such waits).
#define UNIT_ROWS 48   // 8 MR panels: as fast as MC-row blocks on one core, within noise
#define UNIT_COLS 64   // 4 NR panels

typedef struct {
    int M, N, K;
    const float *A;
    long rsa, csa;
    const float *B;
    long rsb, csb;
    float *C;
    long ldc;
    float alpha;
    int accumulate;
    const float *bias;
    int gelu_from;       // columns from here on go through GELU after their last K block
    int threads, splitN;
    int kc;              // K per block: K split evenly into blocks of at most KC (multiples of 8)
    int unit;            // rows (splitN = 0) or columns (splitN = 1) per unit
    int lo[64], hi[64];  // each thread's run of units
    int next[2][64];     // per run, its next unclaimed unit, for even and odd K blocks (atomic)
    float *shared;       // the shared operand's packed K block
    hv_barrier barrier;
} gemm_plan;

/// GELU over columns [max(c0, gelu_from), c1) of `rows` rows of C (in place).
static void gelu_columns(float *C, long ldc, int rows, int c0, int c1, int gelu_from) {
    const int from = c0 > gelu_from ? c0 : gelu_from;
    if (from >= c1) return;
    for (int i = 0; i < rows; i++) hv_gelu_inplace(C + (long)i * ldc + from, (size_t)(c1 - from));
}

F32_TARGET
static void gemm_part(void *arg, int t) {
    gemm_plan *p = arg;
    const int M = p->M, N = p->N, K = p->K, T = p->threads, unit = p->unit;
    float *own = gemm_buffer(sizeof(float) * KC * (size_t)(p->splitN ? ceil_div(unit, NR) * NR : ceil_div(unit, MR) * MR));
    for (int pc = 0, blk = 0; pc < K; pc += p->kc, blk++) {
        int kc = K - pc < p->kc ? K - pc : p->kc;
        int addC = p->accumulate || pc > 0;
        const float *bias = pc == 0 ? p->bias : NULL;
        const int gelu_from = pc + kc >= K ? p->gelu_from : N;  // the last K block only
        if (p->splitN) {
            // Shared: all of A's rows for this K block, MR-row panels taken in turn.
            for (int i = t; i < ceil_div(M, MR); i += T) {
                int mr = M - i * MR < MR ? M - i * MR : MR;
                pack_panel(p->shared + (long)i * kc * MR, p->A + (long)i * MR * p->rsa + (long)pc * p->csa, p->csa, p->rsa, kc, mr, MR);
            }
        } else {
            // Shared: all of B's columns for this K block, NR-column panels taken in turn.
            for (int j = t; j < ceil_div(N, NR); j += T) {
                int nr = N - j * NR < NR ? N - j * NR : NR;
                pack_panel(p->shared + (long)j * kc * NR, p->B + (long)pc * p->rsb + (long)j * NR * p->csb, p->rsb, p->csb, kc, nr, NR);
            }
        }
        hv_barrier_wait(&p->barrier);
        // Every thread is past the previous block: its counters can be set for the next one.
        if (t == 0)
            for (int r = 0; r < T; r++) __atomic_store_n(&p->next[(blk + 1) & 1][r], p->lo[r], __ATOMIC_RELAXED);
        for (int v = 0; v < T; v++) {
            const int run = (t + v) % T;
            for (;;) {
                const int u = __atomic_fetch_add(&p->next[blk & 1][run], 1, __ATOMIC_RELAXED);
                if (u >= p->hi[run]) break;
                if (p->splitN) {
                    const int j0 = u * unit, nc = N - j0 < unit ? N - j0 : unit;
                    for (int jr = 0; jr < nc; jr += NR) {
                        int nr = nc - jr < NR ? nc - jr : NR;
                        pack_panel(own + (long)(jr / NR) * kc * NR, p->B + (long)pc * p->rsb + (long)(j0 + jr) * p->csb, p->rsb, p->csb, kc, nr, NR);
                    }
                    for (int ic = 0; ic < M; ic += MC) {
                        const int mc = M - ic < MC ? M - ic : MC;
                        macro_kernel(kc, p->shared + (long)(ic / MR) * kc * MR, own, p->C + (long)ic * p->ldc + j0, p->ldc,
                                     mc, nc, p->alpha, addC, bias ? bias + j0 : NULL);
                        gelu_columns(p->C + (long)ic * p->ldc, p->ldc, mc, j0, j0 + nc, gelu_from);
                    }
                } else {
                    const int i0 = u * unit, mc = M - i0 < unit ? M - i0 : unit;
                    for (int ir = 0; ir < mc; ir += MR) {
                        int mr = mc - ir < MR ? mc - ir : MR;
                        pack_panel(own + (long)(ir / MR) * kc * MR, p->A + (long)(i0 + ir) * p->rsa + (long)pc * p->csa, p->csa, p->rsa, kc, mr, MR);
                    }
                    for (int jc = 0; jc < N; jc += NC) {
                        const int nc = N - jc < NC ? N - jc : NC;
                        macro_kernel(kc, own, p->shared + (long)(jc / NR) * kc * NR, p->C + (long)i0 * p->ldc + jc, p->ldc, mc,
                                     nc, p->alpha, addC, bias ? bias + jc : NULL);
                        gelu_columns(p->C + (long)i0 * p->ldc, p->ldc, mc, jc, jc + nc, gelu_from);
                    }
                }
            }
        }
        hv_barrier_wait(&p->barrier);  // everyone is done with this block before the next one is packed
    }
    free(own);
}

// Few rows against a transposed B (a linear layer's weight, B(k, j) = B[j * csb + k]), with A's
// rows contiguous: M < THIN_MIN_M, or up to SMALL_M rows when K is too long for the thin path:
// the product is bound by streaming B from memory, which packing would read and write once
// more (at 3-8 GB/s against ~25 GB/s for a plain read). Instead each row of B is read once, in
// order, and dotted with the rows of A (which stay in cache): a 4 x 3 block of dot products in
// 12 ymm accumulators over k, reduced at the end. Threads split the columns of C.
#define SMALL_M 48
#define SMALL_NI 4     // rows of A per block: 4 x 3 accumulators + 3 B + 1 A = 16 ymm registers
#define SMALL_NJ 3     // rows of B per block
#define SMALL_AHEAD 12 // rows of B prefetched ahead

typedef struct {
    int M, N, K;
    const float *A;
    long rsa;
    const float *B;
    long csb;
    float *C;
    long ldc;
    float alpha;
    int accumulate;
    const float *bias;
    int gelu_from;
    int threads;
} small_plan;

F32_TARGET static inline float hsum8(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

F32_TARGET
static void small_part(void *arg, int t) {
    small_plan *p = arg;
    const int M = p->M, K = p->K, K8 = K / 8 * 8;
    const int per = (p->N + p->threads - 1) / p->threads;
    const int j0 = t * per, j1 = j0 + per < p->N ? j0 + per : p->N;
    for (int jb = j0; jb < j1; jb += SMALL_NJ) {
        const int nj = j1 - jb < SMALL_NJ ? j1 - jb : SMALL_NJ;
        // Rows of B are short (2 KiB for K = 512): the hardware prefetcher barely starts on one
        // before the next begins, so the rows SMALL_AHEAD ahead are prefetched (into L2) here.
        for (int q = 0; q < SMALL_NJ && jb + SMALL_AHEAD + q < j1; q++) {
            const char *row = (const char *)(p->B + (long)(jb + SMALL_AHEAD + q) * p->csb);
            for (long off = 0; off < (long)K * 4; off += 64) _mm_prefetch(row + off, _MM_HINT_T1);
        }
        const float *b[SMALL_NJ];
        for (int q = 0; q < SMALL_NJ; q++) b[q] = p->B + (long)(jb + (q < nj ? q : 0)) * p->csb;
        for (int ib = 0; ib < M; ib += SMALL_NI) {
            const int ni = M - ib < SMALL_NI ? M - ib : SMALL_NI;
            const float *a[SMALL_NI];
            for (int r = 0; r < SMALL_NI; r++) a[r] = p->A + (long)(ib + (r < ni ? r : 0)) * p->rsa;
            __m256 acc[SMALL_NI][SMALL_NJ];
            for (int r = 0; r < SMALL_NI; r++)
                for (int q = 0; q < SMALL_NJ; q++) acc[r][q] = _mm256_setzero_ps();
            for (int k = 0; k < K8; k += 8) {
                __m256 bv[SMALL_NJ];
                for (int q = 0; q < SMALL_NJ; q++) bv[q] = _mm256_loadu_ps(b[q] + k);
                for (int r = 0; r < SMALL_NI; r++) {
                    const __m256 av = _mm256_loadu_ps(a[r] + k);
                    for (int q = 0; q < SMALL_NJ; q++) acc[r][q] = _mm256_fmadd_ps(av, bv[q], acc[r][q]);
                }
            }
            for (int r = 0; r < ni; r++)
                for (int q = 0; q < nj; q++) {
                    float s = hsum8(acc[r][q]);
                    for (int k = K8; k < K; k++) s += a[r][k] * b[q][k];
                    float *c = p->C + (long)(ib + r) * p->ldc + jb + q;
                    *c = p->alpha * s + (p->accumulate ? *c : 0) + (p->bias ? p->bias[jb + q] : 0);
                }
        }
    }
    gelu_columns(p->C, p->ldc, M, j0, j1, p->gelu_from);
}

// 8 to SMALL_M rows of A against a transposed B, computed as C^T = B^T A^T: the rows of B^T (a
// linear layer's weight rows, contiguous in k) are the broadcast operand of a 6 x 16 register
// tile, read where they lie, each streamed from memory once; A^T is packed once per call into
// 16-row panels (64 KiB for 32 x 512), the tile's vector operand. The small path's dot products
// instead end every 4 x 3 block with 12 horizontal sums and re-read A for every 3 rows of B.
// Threads split B's rows in 6-row strips. K is not blocked, so a panel (64 * K bytes) is read again
// for every strip: up to THIN_MAX_K it stays in L2 (256 KiB).
#define THIN_MIN_M 8
#define THIN_MAX_K 4096

/// C[i][j0 + r] = alpha * sum_k W_r[k] * P[k][i] (+ C) (+ bias[j0 + r]) for r < nw, i < na: W_r
/// the rows of B^T at w + r * ldw, P a packed 16-row panel of A^T.
F32_TARGET
static void thin_tile(int K, const float *w, long ldw, int nw, const float *pnl, int na, float *C, long ldc, int j0,
                      float alpha, int accumulate, const float *bias, const float *next) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *w0 = w, *w1 = nw > 1 ? w + ldw : w, *w2 = nw > 2 ? w + 2 * ldw : w, *w3 = nw > 3 ? w + 3 * ldw : w,
                *w4 = nw > 4 ? w + 4 * ldw : w, *w5 = nw > 5 ? w + 5 * ldw : w;
    for (int k = 0; k < K; k++) {
        if (next && (k & 15) == 0)  // the next strip's rows, one line of each per 16 k
            for (int r = 0; r < 6; r++) _mm_prefetch((const char *)(next + r * ldw + k), _MM_HINT_T0);
        const __m256 b0 = _mm256_load_ps(pnl + (long)k * 16), b1 = _mm256_load_ps(pnl + (long)k * 16 + 8);
        __m256 t = _mm256_broadcast_ss(w0 + k);
        c00 = _mm256_fmadd_ps(t, b0, c00); c01 = _mm256_fmadd_ps(t, b1, c01);
        t = _mm256_broadcast_ss(w1 + k);
        c10 = _mm256_fmadd_ps(t, b0, c10); c11 = _mm256_fmadd_ps(t, b1, c11);
        t = _mm256_broadcast_ss(w2 + k);
        c20 = _mm256_fmadd_ps(t, b0, c20); c21 = _mm256_fmadd_ps(t, b1, c21);
        t = _mm256_broadcast_ss(w3 + k);
        c30 = _mm256_fmadd_ps(t, b0, c30); c31 = _mm256_fmadd_ps(t, b1, c31);
        t = _mm256_broadcast_ss(w4 + k);
        c40 = _mm256_fmadd_ps(t, b0, c40); c41 = _mm256_fmadd_ps(t, b1, c41);
        t = _mm256_broadcast_ss(w5 + k);
        c50 = _mm256_fmadd_ps(t, b0, c50); c51 = _mm256_fmadd_ps(t, b1, c51);
    }
    float tile[6][16];
    _mm256_storeu_ps(tile[0], c00); _mm256_storeu_ps(tile[0] + 8, c01);
    _mm256_storeu_ps(tile[1], c10); _mm256_storeu_ps(tile[1] + 8, c11);
    _mm256_storeu_ps(tile[2], c20); _mm256_storeu_ps(tile[2] + 8, c21);
    _mm256_storeu_ps(tile[3], c30); _mm256_storeu_ps(tile[3] + 8, c31);
    _mm256_storeu_ps(tile[4], c40); _mm256_storeu_ps(tile[4] + 8, c41);
    _mm256_storeu_ps(tile[5], c50); _mm256_storeu_ps(tile[5] + 8, c51);
    for (int i = 0; i < na; i++) {
        float *c = C + (long)i * ldc + j0;
        for (int r = 0; r < nw; r++) c[r] = alpha * tile[r][i] + (accumulate ? c[r] : 0.0f) + (bias ? bias[j0 + r] : 0.0f);
    }
}

F32_TARGET
static void thin_part(void *arg, int t) {
    small_plan *p = arg;  // A: A^T packed, panel q holding rows 16q.. at A[q * K * 16 + k * 16 + i]
    const int strips = ceil_div(p->N, 6), per = ceil_div(strips, p->threads);
    const int s0 = t * per < strips ? t * per : strips, s1 = s0 + per < strips ? s0 + per : strips;
    const int panels = ceil_div(p->M, 16);
    for (int s = s0; s < s1; s++) {
        const int j0 = s * 6, nw = p->N - j0 < 6 ? p->N - j0 : 6;
        const float *w = p->B + (long)j0 * p->csb;
        const float *next = s + 1 < s1 && (s + 1) * 6 + 6 <= p->N ? w + 6 * p->csb : NULL;
        for (int q = 0; q < panels; q++) {
            const int na = p->M - q * 16 < 16 ? p->M - q * 16 : 16;
            thin_tile(p->K, w, p->csb, nw, p->A + (long)q * p->K * 16, na, p->C + (long)q * 16 * p->ldc, p->ldc, j0,
                      p->alpha, p->accumulate, p->bias, q == 0 ? next : NULL);
        }
    }
    gelu_columns(p->C, p->ldc, p->M, s0 * 6, s1 * 6 < p->N ? s1 * 6 : p->N, p->gelu_from);
}

// One row of A against a B whose rows are contiguous (the input gradient of a one-row linear,
// dx = dy W: the adaLN modulation's): bound by streaming B, which packing would read and write
// once more. Threads split the columns of C; each streams its columns of B row by row with 64
// sums in 8 ymm accumulators.
typedef struct {
    int N, K;
    const float *A;
    long csa;
    const float *B;
    long rsb;
    float *C;
    float alpha;
    int accumulate;
    const float *bias;
    int gelu_from;
    int threads;
} gemv_plan;

F32_TARGET
static void gemv_part(void *arg, int t) {
    gemv_plan *p = arg;
    const int per = ceil_div(ceil_div(p->N, 64), p->threads) * 64;
    const int j0 = t * per < p->N ? t * per : p->N, j1 = j0 + per < p->N ? j0 + per : p->N;
    for (int c0 = j0; c0 < j1; c0 += 64) {
        const int w = j1 - c0 < 64 ? j1 - c0 : 64;
        float acc[64];
        if (w == 64) {
            __m256 s[8];
            for (int i = 0; i < 8; i++) s[i] = _mm256_setzero_ps();
            for (int k = 0; k < p->K; k++) {
                const __m256 a = _mm256_broadcast_ss(p->A + (long)k * p->csa);
                const float *b = p->B + (long)k * p->rsb + c0;
                for (int i = 0; i < 8; i++) s[i] = _mm256_fmadd_ps(a, _mm256_loadu_ps(b + 8 * i), s[i]);
            }
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(acc + 8 * i, s[i]);
        } else {
            for (int i = 0; i < w; i++) acc[i] = 0.0f;
            for (int k = 0; k < p->K; k++) {
                const float a = p->A[(long)k * p->csa], *b = p->B + (long)k * p->rsb + c0;
                for (int i = 0; i < w; i++) acc[i] += a * b[i];
            }
        }
        for (int i = 0; i < w; i++) {
            float *c = p->C + c0 + i;
            *c = p->alpha * acc[i] + (p->accumulate ? *c : 0.0f) + (p->bias ? p->bias[c0 + i] : 0.0f);
        }
    }
    gelu_columns(p->C, 0, 1, j0, j1, p->gelu_from);
}

// The same CPU features as the fused attention kernel.
int hv_f32_gemm_available(void) { return hv_attention_available(); }

void hv_gemm_f32(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                 float *C, long ldc, int accumulate, const float *bias, int gelu_from, int threads) {
    if (M <= 0 || N <= 0) return;
    if (gelu_from < 0) gelu_from = 0;
    if (K <= 0) {
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) C[(long)m * ldc + n] = (accumulate ? C[(long)m * ldc + n] : 0) + (bias ? bias[n] : 0);
        gelu_columns(C, ldc, M, 0, N, gelu_from);
        return;
    }
    long macs = (long)M * N * K;
    // One row: threads split 64-column blocks, so narrow products with long rows (N < 64 x
    // threads) keep the general path's finer split.
    if (M == 1 && csb == 1 && (macs < (1L << 18) || threads <= 1 || N >= 64 * threads)) {
        if (macs < (1L << 18)) threads = 1;  // B under 1 MiB: not worth waking a thread
        threads = hv_pool_acquire(threads);
        gemv_plan plan = {N, K, A, csa, B, rsb, C, alpha, accumulate, bias, gelu_from, threads};
        hv_pool_run(threads, gemv_part, &plan);
        hv_pool_release(threads);
        return;
    }
    if (macs < (1L << 21)) threads = 1;
    if (M >= THIN_MIN_M && M <= SMALL_M && rsb == 1 && K <= THIN_MAX_K) {
        const int panels = ceil_div(M, 16);
        float *ap = gemm_buffer(sizeof(float) * (size_t)panels * 16 * K);
        for (int q = 0; q < panels; q++)  // ap[q][k][i] = A(16q + i, k), zero past M
            pack_panel(ap + (long)q * K * 16, A + (long)q * 16 * rsa, csa, rsa, K, M - q * 16 < 16 ? M - q * 16 : 16, 16);
        if (ceil_div(N, 6) < threads) threads = ceil_div(N, 6);
        threads = hv_pool_acquire(threads);
        small_plan plan = {M, N, K, ap, 16, B, csb, C, ldc, alpha, accumulate, bias, gelu_from, threads};
        hv_pool_run(threads, thin_part, &plan);
        hv_pool_release(threads);
        free(ap);
        return;
    }
    if (M <= SMALL_M && csa == 1 && rsb == 1) {
        if (N < 64 * threads) threads = N / 64 > 1 ? N / 64 : 1;  // the threads share the memory bandwidth; one is enough for small N
        threads = hv_pool_acquire(threads);
        small_plan plan = {M, N, K, A, rsa, B, csb, C, ldc, alpha, accumulate, bias, gelu_from, threads};
        hv_pool_run(threads, small_part, &plan);
        hv_pool_release(threads);
        return;
    }
    gemm_plan plan = {M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, alpha, accumulate, bias, gelu_from, 1, 0};
    // Units: about 8 per thread, whole panels, at most UNIT_ROWS / UNIT_COLS.
    const int splitN = N >= M, panel = splitN ? NR : MR, cap = splitN ? UNIT_COLS : UNIT_ROWS;
    int unit = ceil_div(ceil_div(splitN ? N : M, 8 * (threads > 1 ? threads : 1)), panel) * panel;
    plan.unit = unit > cap ? cap : unit;
    plan.threads = plan.barrier.threads = hv_gemm_split(M, N, plan.unit, plan.unit, threads, &plan.splitN, plan.lo, plan.hi);
    for (int t = 0; t < plan.threads; t++) {  // element ranges -> unit ranges
        plan.lo[t] /= plan.unit;
        plan.hi[t] = ceil_div(plan.hi[t], plan.unit);
        plan.next[0][t] = plan.lo[t];
    }
    // K = 1056 as 3 x 352 rather than 512 + 512 + 32: a short last block costs a full pass over C.
    int blocks = ceil_div(K, KC);
    plan.kc = (ceil_div(K, blocks) + 7) / 8 * 8;
    if (plan.kc > KC) plan.kc = KC;
    int sharedPanels = plan.splitN ? ceil_div(M, MR) * MR : ceil_div(N, NR) * NR;
    plan.shared = gemm_buffer(sizeof(float) * KC * (size_t)sharedPanels);
    hv_pool_run(plan.threads, gemm_part, &plan);
    hv_pool_release(plan.threads);
    free(plan.shared);
}

#else
int hv_f32_gemm_available(void) { return 0; }
void hv_gemm_f32(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                 float *C, long ldc, int accumulate, const float *bias, int gelu_from, int threads) {
    (void)gelu_from;
    (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)rsa; (void)csa; (void)B; (void)rsb; (void)csb; (void)C;
    (void)ldc; (void)accumulate; (void)bias; (void)threads;
    abort();
}
#endif
