/* Dev benchmark (not built by the package): hv_gemm_f32 on bench-1k's big sampling shapes
 * (activations x transposed weights), with the weights evicted from the caches before each call
 * (96 MB written in between), as in a sampling step, where the model's 176 MB of weights stream
 * from memory. Two threads by default; best and average GFLOP/s per shape.
 *
 *   clang -O3 -fno-math-errno -I Sources/CHVKernels/include -I Sources/CHVKernels scripts/dev/gemm_cold_bench.c \
 *     Sources/CHVKernels/gemm_f32.c Sources/CHVKernels/gemm_pool.c Sources/CHVKernels/attention.c \
 *     Sources/CHVKernels/kernels.c Sources/CHVKernels/conv.c -lm -lpthread -o /tmp/gemm_cold_bench \
 *     && /tmp/gemm_cold_bench [repeats] [threads]
 */
#include "hv_kernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static double TF=0,TB=0,TA=0;
static char *F; static size_t FL=96<<20;
static void run(int M,int N,int K,int reps,int NT,int gelu){
  float *A=aligned_alloc(64,4L*M*K+64),*B=aligned_alloc(64,4L*K*N+64),*C=aligned_alloc(64,4L*M*N+64),*bias=malloc(4*N);
  for(long i=0;i<(long)M*K;i++)A[i]=rand()/(float)RAND_MAX-0.5f; for(long i=0;i<(long)K*N;i++)B[i]=rand()/(float)RAND_MAX-0.5f; for(int i=0;i<N;i++)bias[i]=0.1f;
  double best=1e9,tot=0;
  for(int r=0;r<reps;r++){ for(size_t i=0;i<FL;i+=64) F[i]++; for(long i=0;i<(long)M*K;i+=16) A[i]+=0.0f; // A warm, B cold
    double t0=now(); hv_gemm_f32(M,N,K,1,A,K,1,B,1,K,C,N,0,bias,gelu?3*512:N,NT); double t=now()-t0; tot+=t; if(t<best)best=t;}
  double f=2.0*M*N*K; TF+=f; TB+=best; TA+=tot/reps;
  printf("M=%5d N=%5d K=%5d  best %6.1f avg %6.1f GFLOP/s (%.3f ms)\n",M,N,K,f/best*1e-9,f/(tot/reps)*1e-9,best*1e3);
  free(A);free(B);free(C);free(bias);
}
int main(int argc,char**argv){int reps=argc>1?atoi(argv[1]):20, NT=argc>2?atoi(argv[2]):2; F=malloc(FL);
  run(1056,3584,512,reps,NT,0); run(1056,512,2048,reps,NT,0); run(1024,2048,512,reps,NT,0); run(1024,512,2048,reps,NT,0); run(1024,1536,512,reps,NT,0); run(1056,512,512,reps,NT,0);
  printf("TOTAL best %.1f avg %.1f GFLOP/s, best %.3f ms\n",TF/TB*1e-9,TF/TA*1e-9,TB*1e3);}
