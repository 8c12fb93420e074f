/* Dev benchmark (not built by the package): one row against a weight matrix W [3072, 512] used
 * transposed (x W^T for a single row: the adaLN modulation's forward) through hv_gemm_f32 (the
 * small-M path) against plain dot products with 4 rows of W at a time on two threads created
 * for each call (the one-row path that was tried and dropped). Eight weight matrices in turn,
 * so that each call reads its weights from memory; best of 32 calls after 8.
 *
 *   clang -O3 -fno-math-errno -I Sources/CHVKernels/include scripts/dev/one_row_gemm_bench.c \
 *     Sources/CHVKernels/gemm_f32.c Sources/CHVKernels/gemm_pool.c Sources/CHVKernels/kernels.c \
 *     Sources/CHVKernels/attention.c Sources/CHVKernels/conv.c Sources/CHVKernels/gemm_bf16.c \
 *     -lpthread -lm -o /tmp/one_row_gemm_bench && /tmp/one_row_gemm_bench
 */
#include "hv_kernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>
#include <pthread.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { const float *a, *W; float *c; int N, K, j0, j1; } job;
__attribute__((target("avx2,fma"))) static void *dots(void *arg) {
  job *p = arg; int K = p->K;
  for (int j = p->j0; j < p->j1; j += 4) {
    const float *w0 = p->W + (long)j * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, t0 = s0, t1 = s0, t2 = s0, t3 = s0;
    for (int k = 0; k < K; k += 16) {
      __m256 a0 = _mm256_loadu_ps(p->a + k), a1 = _mm256_loadu_ps(p->a + k + 8);
      s0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + k), s0); t0 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w0 + k + 8), t0);
      s1 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w1 + k), s1); t1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w1 + k + 8), t1);
      s2 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w2 + k), s2); t2 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w2 + k + 8), t2);
      s3 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w3 + k), s3); t3 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w3 + k + 8), t3);
    }
    float o[8]; __m256 r[4] = {_mm256_add_ps(s0,t0),_mm256_add_ps(s1,t1),_mm256_add_ps(s2,t2),_mm256_add_ps(s3,t3)};
    for (int q = 0; q < 4; q++) { _mm256_storeu_ps(o, r[q]); float s=0; for(int i=0;i<8;i++) s+=o[i]; p->c[j+q]=s; }
  }
  return 0;
}
int main(){
  int N=3072,K=512; long nb=8; // 8 different weight matrices to defeat the cache (each 6.3 MB)
  float *a=aligned_alloc(64,4*K), *c=aligned_alloc(64,4*N), *c2=aligned_alloc(64,4*N);
  float *W=aligned_alloc(64,4L*N*K*nb); for(long i=0;i<(long)N*K*nb;i++)W[i]=(i%13)*0.01f; for(int i=0;i<K;i++)a[i]=i*0.001f;
  double b1=1e9,b2=1e9;
  for(int r=0;r<40;r++){ const float *w=W+(long)(r%nb)*N*K;
    double t0=now(); hv_gemm_f32(1,N,K,1,a,K,1,w,1,K,c,N,0,NULL,N,2); double t1=now();
    job j1={a,w,c2,N,K,0,N/2}, j2={a,w,c2,N,K,N/2,N}; pthread_t th; pthread_create(&th,0,dots,&j2); dots(&j1); pthread_join(th,0); double t2=now();
    if(r>=8){ if(t1-t0<b1)b1=t1-t0; if(t2-t1<b2)b2=t2-t1; } }
  printf("hv_gemm_f32 %.3f ms (%.1f GB/s) | plain dots %.3f ms (%.1f GB/s), thread creation included\n", b1*1e3, 4.0*N*K/b1/1e9, b2*1e3, 4.0*N*K/b2/1e9);
}
