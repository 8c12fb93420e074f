/* Dev benchmark (not built by the package): one attention head's forward + backward through the
 * fused kernel, recomputing the probabilities in the backward against keeping them from the
 * forward, with the largest difference between the two paths' outputs and gradients.
 *
 *   clang -O3 -fno-math-errno -I Sources/CHVKernels/include scripts/dev/attention_probs_bench.c \
 *     Sources/CHVKernels/attention.c Sources/CHVKernels/kernels.c Sources/CHVKernels/conv.c \
 *     -lm -lpthread -o /tmp/attention_probs_bench && /tmp/attention_probs_bench [S] [repeats] [causal block]
 *
 * Defaults: S = 1056 (bench-1k's tokens), D = 64, 20 repeats (best of), no causal block; every
 * seventh key masked. One thread. */
#include "hv_kernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int s=argc>1?atoi(argv[1]):1056, d=64, reps=argc>2?atoi(argv[2]):20, cb=argc>3?atoi(argv[3]):0;
  size_t n=(size_t)s*d; int kp=hv_attention_probs_stride(s);
  float *q=malloc(4*n),*k=malloc(4*n),*v=malloc(4*n),*o=malloc(4*n),*o2=malloc(4*n),*lse=malloc(4*s),*lse2=malloc(4*s),*dout=malloc(4*n),*dq=malloc(4*n),*dk=malloc(4*n),*dv=malloc(4*n),*dq2=malloc(4*n),*dk2=malloc(4*n),*dv2=malloc(4*n),*P=malloc(4L*s*kp),*mask=malloc(4*s);
  for(size_t i=0;i<n;i++){q[i]=(rand()/(float)RAND_MAX-0.5f);k[i]=(rand()/(float)RAND_MAX-0.5f);v[i]=(rand()/(float)RAND_MAX-0.5f);dout[i]=(rand()/(float)RAND_MAX-0.5f);}
  for(int j=0;j<s;j++)mask[j]= (j%7==3)?0:1;
  float sc=0.125f; double b1=1e9,b2=1e9,f1=1e9,f2=1e9;
  for(int r=0;r<reps;r++){
    double t0=now(); hv_attention_forward_head(q,k,v,mask,s,s,d,sc,o,lse,cb,0,0); double t1=now();
    hv_attention_backward_head(q,k,v,mask,o,lse,dout,s,s,d,sc,dq,dk,dv,cb,0,0,0); double t2=now();
    hv_attention_forward_head_probs(q,k,v,mask,s,s,d,sc,o2,lse2,cb,P); double t3=now();
    hv_attention_backward_head_probs(q,k,v,mask,o2,P,dout,s,s,d,sc,dq2,dk2,dv2,cb); double t4=now();
    if(t1-t0<f1)f1=t1-t0; if(t2-t1<b1)b1=t2-t1; if(t3-t2<f2)f2=t3-t2; if(t4-t3<b2)b2=t4-t3;
  }
  double e=0; for(size_t i=0;i<n;i++){e=fmax(e,fabs(dq[i]-dq2[i]));e=fmax(e,fabs(dk[i]-dk2[i]));e=fmax(e,fabs(dv[i]-dv2[i]));e=fmax(e,fabs(o[i]-o2[i]));}
  printf("recompute: fwd %.3f bwd %.3f ms | stored P: fwd %.3f bwd %.3f ms | total %.3f vs %.3f | max diff %g\n",f1*1e3,b1*1e3,f2*1e3,b2*1e3,(f1+b1)*1e3,(f2+b2)*1e3,e);
}
