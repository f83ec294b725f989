// FP32 FMA peak of this machine, for the "% of peak" columns of BENCHMARKS.md.
//
//   gcc -O3 -march=icelake-server -pthread benches/peak/peak.c -o target/peak && target/peak
//
// Each test runs N = 2·10⁸ vector FMAs per thread over 12 independent accumulator chains
// (enough to cover the 4-cycle FMA latency on two ports), first on one thread, then on two at
// once, and prints GFLOP/s = 2 · lanes · FMAs / seconds. "zmm fma" is the AVX-512 peak, "ymm
// fma" the AVX2 one; the third adds one 512-bit shuffle per two FMAs (the mix of the forward
// product's horizontal sums) to show what port-5 pressure costs. The loops use only
// registers; the printed sums keep the compiler from removing them.
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static long N=200000000;
void* run512(void*a){ __m512 acc[12]; for(int i=0;i<12;i++) acc[i]=_mm512_set1_ps(i); __m512 m=_mm512_set1_ps(0.9999f), c=_mm512_set1_ps(1e-6f);
 for(long n=0;n<N/12;n++){ for(int i=0;i<12;i++) acc[i]=_mm512_fmadd_ps(acc[i],m,c);} float s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(acc[i]); *(float*)a=s; return 0;}
void* run256(void*a){ __m256 acc[12]; for(int i=0;i<12;i++) acc[i]=_mm256_set1_ps(i); __m256 m=_mm256_set1_ps(0.9999f), c=_mm256_set1_ps(1e-6f);
 for(long n=0;n<N/12;n++){ for(int i=0;i<12;i++) acc[i]=_mm256_fmadd_ps(acc[i],m,c);} float s=0; for(int i=0;i<12;i++){ __m256 v=acc[i]; s+=v[0];} *(float*)a=s; return 0;}
void* shuf(void*a){ __m512 acc[12]; for(int i=0;i<12;i++) acc[i]=_mm512_set1_ps(i); __m512 m=_mm512_set1_ps(0.9999f), c=_mm512_set1_ps(1e-6f); __m512 s[6]; for(int i=0;i<6;i++) s[i]=_mm512_set1_ps(i);
 for(long n=0;n<N/12;n++){ for(int i=0;i<12;i++) acc[i]=_mm512_fmadd_ps(acc[i],m,c); for(int i=0;i<6;i++) s[i]=_mm512_shuffle_f32x4(s[i],s[i],0x4e);} float r=0; for(int i=0;i<12;i++) r+=_mm512_reduce_add_ps(acc[i]); for(int i=0;i<6;i++) r+=_mm512_reduce_add_ps(s[i]); *(float*)a=r; return 0;}
int main(){ float r[2]; pthread_t t;
 void*(*fs[3])(void*)={run512,run256,shuf}; const char*nm[3]={"zmm fma","ymm fma","zmm fma + 0.5 shuffle/fma"}; int lanes[3]={16,8,16};
 for(int f=0;f<3;f++){ double t0=now(); fs[f](r); double t1=now(); double g1=2.0*N*lanes[f]/(t1-t0)/1e9;
  t0=now(); pthread_create(&t,0,fs[f],r+1); fs[f](r); pthread_join(t,0); t1=now(); double g2=2*2.0*N*lanes[f]/(t1-t0)/1e9;
  printf("%s: 1 thread %.1f GFLOP/s, 2 threads %.1f GFLOP/s\n", nm[f], g1, g2);}
}
