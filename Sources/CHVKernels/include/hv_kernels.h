#ifndef HV_KERNELS_H
#define HV_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/// Hot elementwise loops of the tensor core, in C so that clang vectorises them
/// (Swift does not vectorise float reductions, and its SIMD types are slow here).
/// Each is compiled for AVX-512, AVX2+FMA and baseline x86-64 and chosen at load (target_clones).

/// row[j] = exp(row[j] - shift) for j < n (0 exactly for -inf and anything at or below about
/// -87.7 after the shift, 1 exactly for 0, clamped at 88); returns the sum of the new values.
/// Relative error within 2e-7 + |x| * 1.3e-8 (x after the shift).
float hv_exp_shift_sum(float *row, size_t n, float shift);

/// max over row[0..n) (-inf for n == 0).
float hv_row_max(const float *row, size_t n);
/// Sum of a contiguous row (32 interleaved partial sums, then added in order; not the
/// sequential order, so it may differ from a left-to-right sum in the last bits).
float hv_row_sum(const float *row, size_t n);

/// dst[j] = sum over r < rows of src[r * ld + j], for j < cols, each column summed in row order.
void hv_column_sums(const float *src, size_t rows, size_t cols, size_t ld, float *dst);

/// ds[j] = p[j] * (dp[j] - delta) (softmax backward inside blocked attention).
void hv_softmax_grad_row(const float *p, float *dp, size_t n, float delta);

/// Fused attention of one head (attention.c, AVX2 + FMA): whether this CPU runs it.
int hv_attention_available(void);
/// out [sq, d] and lse [sq] of softmax(scale q k^T + mask) v for q [sq, d], k/v [sk, d]
/// (row-major); keyMask [sk] (nonzero = attend) or NULL; causalBlock > 0: global row
/// rowOffset + r sees key columns j < ((rowOffset + r) / causalBlock + 1) * causalBlock - colOffset.
/// Returns 0 (and writes nothing) when it cannot run: no AVX2/FMA, d not a multiple of 16.
int hv_attention_forward_head(const float *q, const float *k, const float *v, const float *keyMask, int sq, int sk, int d,
                              float scale, float *out, float *lse, int causalBlock, long rowOffset, long colOffset);
/// The same with row strides: row r of q is q[r * ldq ..], of k k[r * ldk ..], of v v[r * ldv ..],
/// of out out[r * ldo ..] (heads read and written in place in a [S, heads, d] layout).
int hv_attention_forward_head_ld(const float *q, long ldq, const float *k, long ldk, const float *v, long ldv,
                                 const float *keyMask, int sq, int sk, int d, float scale, float *out, long ldo,
                                 float *lse, int causalBlock, long rowOffset, long colOffset);
/// dq [sq, d], dk/dv [sk, d] of the attention above given its out, lse and dout, overwritten or
/// added to (accumulateDQ, accumulateDKV); causal rows count from 0. Returns 0 when it cannot run.
int hv_attention_backward_head(const float *q, const float *k, const float *v, const float *keyMask, const float *out,
                               const float *lse, const float *dout, int sq, int sk, int d, float scale, float *dq,
                               float *dk, float *dv, int causalBlock, long colOffset, int accumulateDQ,
                               int accumulateDKV);
/// Row stride of the stored probabilities of a head with sk keys (sk rounded up to 48).
int hv_attention_probs_stride(int sk);
/// hv_attention_forward_head (rowOffset = colOffset = 0) that also writes the softmax itself:
/// row r at probs[r * hv_attention_probs_stride(sk) ..], zero past the keys row r sees.
int hv_attention_forward_head_probs(const float *q, const float *k, const float *v, const float *keyMask, int sq, int sk,
                                    int d, float scale, float *out, float *lse, int causalBlock, float *probs);
/// hv_attention_backward_head (colOffset = 0, dq/dk/dv overwritten) that reads the stored
/// probabilities instead of recomputing the scores and their exponentials.
int hv_attention_backward_head_probs(const float *q, const float *k, const float *v, const float *keyMask,
                                     const float *out, const float *probs, const float *dout, int sq, int sk, int d,
                                     float scale, float *dq, float *dk, float *dv, int causalBlock);


/// Checkpoint checksum of nbytes at data: 8-lane Fletcher-style 64-bit sums over little-endian
/// 32-bit words (tail zero-padded), mixed into 64 bits. Runs at memory speed.
uint64_t hv_checksum64(const void *data, size_t nbytes);

#endif

#ifndef HV_KERNELS_ACT_H
#define HV_KERNELS_ACT_H
/// GELU (tanh approximation) and SiLU, forward and backward (dx = g * f'(x)).
void hv_gelu_forward(const float *x, float *y, size_t n);
/// hv_gelu_forward over x in place (the same values).
void hv_gelu_inplace(float *x, size_t n);
void hv_gelu_backward(const float *x, const float *g, float *dx, size_t n);
void hv_silu_forward(const float *x, float *y, size_t n);
/// hv_silu_forward over x in place (the same values).
void hv_silu_inplace(float *x, size_t n);
void hv_silu_backward(const float *x, const float *g, float *dx, size_t n);

/// glibc malloc tuning for a tensor workload: large blocks come from the heap and are reused
/// instead of being mmap-ed (and zero-filled by the kernel) on every allocation.
void hv_tune_malloc(void);

/// The opposite trade for ZeRO-3 workers, whose point is resident memory: blocks from 256 KiB
/// up are mmap-ed and unmapped when freed, and the heap top is trimmed from 4 MiB, so RSS follows
/// live memory instead of the step's high-water mark (costs page faults on large temporaries).
void hv_tune_malloc_resident(void);

/// Sets glibc's mmap and trim thresholds (bytes; glibc's environment variables still win) and
/// reads back the ones last set through these functions (128 KiB each, glibc's initial values,
/// before any).
void hv_malloc_set_thresholds(size_t mmap_threshold, size_t trim_threshold);
void hv_malloc_thresholds(size_t *mmap_threshold, size_t *trim_threshold);
/// One AdamW step (decoupled weight decay, bias corrections bc1 = 1 - beta1^t, bc2 = 1 - beta2^t),
/// in place on p, m, v; the same arithmetic, in the same order, as the scalar reference.
void hv_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2,
              float eps, float weight_decay, float bc1, float bc2);
/* Returns the heap's free pages to the kernel (glibc malloc_trim(0)); 1 if memory was released. */
int hv_malloc_trim(void);
/* glibc mallinfo2 of the main arena and mmap-ed chunks: heap bytes obtained from the kernel
   (sbrk), bytes of it in live allocations, bytes in mmap-ed chunks. */
void hv_heap_stats(size_t *arena_bytes, size_t *in_use_bytes, size_t *mmapped_bytes);
#endif

#ifndef HV_KERNELS_CONV_H
#define HV_KERNELS_CONV_H
/// Direct stride-1 3D convolution of an already padded input x [Ci, Tp, Hp, Wp] (one sample)
/// with wt [Ci * kt * kh * kw][CoP] (the weight transposed, output channels innermost, CoP = Co
/// rounded up to 16 with zero columns): writes out [Co, To, Ho, Wo] rows r = t * Ho + h for
/// r in [row0, row1) (To = Tp - kt + 1 and so on). Rows are independent, so callers split them
/// across threads.
void hv_conv3d_direct(const float *x, int Ci, int Tp, int Hp, int Wp,
                      const float *wt, int Co, int kt, int kh, int kw,
                      float *out, int row0, int row1);
/// The weight gradient of the same convolution: dw [Co, Ci, kt, kh, kw] += g (*) x for input
/// channels [ci0, ci1), from gT [To * Ho * Wo][Co rounded up to 32] (the output gradient
/// transposed, zero columns past Co); (kh, kw) is (3, 3) or (1, 1).
void hv_conv3d_direct_wgrad(const float *x, int Ci, int Tp, int Hp, int Wp,
                            const float *gT, int Co, int kt, int kh, int kw,
                            float *dw, int ci0, int ci1);
/// Both run register tiles sized for AVX2's 16 ymm registers (conv.c) instead of the 16-float
/// vector tiles (which spill there) when hv_conv3d_avx2_active(): by default on CPUs with AVX2
/// and FMA but no AVX-512F. hv_conv3d_set_avx2_mode: -1 that default, 0 never, 1 whenever AVX2 +
/// FMA (tests compare the two).
void hv_conv3d_set_avx2_mode(int mode);
int hv_conv3d_avx2_active(void);
void hv_conv3d_direct_avx2(const float *x, int Ci, int Tp, int Hp, int Wp, const float *wt, int Co, int kt, int kh,
                           int kw, float *out, int row0, int row1);
void hv_conv3d_direct_wgrad_avx2(const float *x, int Ci, int Tp, int Hp, int Wp, const float *gT, int Co, int kt,
                                 int kh, int kw, float *dw, int ci0, int ci1);
#endif

#ifndef HV_KERNELS_BF16_H
#define HV_KERNELS_BF16_H
/// 1 when the CPU has AVX512-BF16 (vdpbf16ps), so hv_gemm_bf16 may be called.
int hv_bf16_gemm_available(void);
/// C[M x N] = alpha A·B (+ C when accumulate), C row-major with row stride ldc. A(m, k) is
/// A[m * rsa + k * csa] and B(k, n) is B[k * rsb + n * csb] (any strides: transposes are
/// strides). Operands are rounded to bf16 (nearest even) as they are packed; products are summed
/// in fp32. Runs on `threads` threads (split over the larger of M and N).
void hv_gemm_bf16(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                  float *C, long ldc, int accumulate, int threads);
/// x rounded to the nearest bf16 (ties to even), returned as fp32.
float hv_round_bf16(float x);
#endif

#ifndef HV_KERNELS_F32_H
#define HV_KERNELS_F32_H
/// 1 when the CPU has AVX2 and FMA, so hv_gemm_f32 may be called.
int hv_f32_gemm_available(void);
/// C[M x N] = alpha A·B (+ C when accumulate) (+ bias[n] when bias is not NULL), C row-major
/// with row stride ldc; A(m, k) is A[m * rsa + k * csa] and B(k, n) is B[k * rsb + n * csb].
/// Columns n >= gelu_from then go through hv_gelu_forward (pass N or more for none; a negative
/// gelu_from counts as 0), each block of C right after its last product, while it is in cache:
/// a linear layer and its GELU in one pass over the output. fp32 throughout; runs on up to `threads` threads of the GEMMs' pool
/// (split over the larger of M and N), on the calling thread alone inside an hv parallel region.
void hv_gemm_f32(int M, int N, int K, float alpha, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                 float *C, long ldc, int accumulate, const float *bias, int gelu_from, int threads);
#endif

#ifndef HV_KERNELS_NORM_H
#define HV_KERNELS_NORM_H
#include <stddef.h>
/// LayerNorm (centered) / RMSNorm rows: xhat, rstd per row, and out = xhat * w + b when out is
/// not NULL (w, b optional; out may be xhat itself).
void hv_norm_rows(const float *x, float *xhat, float *out, float *rstd, const float *w, const float *b,
                  size_t rows, size_t n, float eps, int centered);
/// hv_norm_rows (RMS, w) over the heads of `tokens` tokens (head h of token i at
/// x + i * token_stride + h * head_stride, written to out + (i * heads + h) * n), each of the first
/// `rotated` tokens' heads then rotated pairwise by the rotary rows c, s + i * n; bit-equal to
/// the two ops apart. n must be even.
void hv_rms_norm_rotary(const float *x, long token_stride, long head_stride, size_t tokens, float *out,
                        const float *w, float eps, const float *c, const float *s, size_t rotated,
                        size_t heads, size_t n);
/// dx of hv_norm_rows from the output gradient g (w optional).
void hv_norm_rows_backward(const float *g, const float *w, const float *xhat, const float *rstd, float *dx,
                           size_t rows, size_t n, int centered);
#endif

#ifndef HV_KERNELS_PARALLEL_H
#define HV_KERNELS_PARALLEL_H
/// Nesting depth of hv's parallel regions on the calling thread (thread-local): work split over
/// threads is not split again inside a region.
int hv_parallel_depth(void);
void hv_parallel_enter(void);
void hv_parallel_exit(void);
/// hv's persistent worker threads (shared by the GEMMs and Parallel.run in Swift): takes the
/// pool for one call and returns how many threads it may use (1 when another call holds it or
/// the caller is inside a parallel region); hv_pool_run runs body(arg, t) for t < threads, t = 0
/// on the caller; a result > 1 of hv_pool_acquire is handed back with hv_pool_release.
int hv_pool_acquire(int threads);
void hv_pool_run(int threads, void (*body)(void *arg, int t), void *arg);
void hv_pool_release(int threads);
#endif
