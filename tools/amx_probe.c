// amx_probe.c - a developer's check of an AMX machine, not part of the package: does the CPU have AMX-BF16 /
// AMX-FP16 / AVX512-FP16, does Linux grant the tile data (arch_prctl), which order of sums TDPBF16PS uses (the
// project's scalar model, csrc/cpu/amx_tiles.h EmulatedTiles, follows the SDM's even/odd chains: the
// 'sdm_evenodd' count must be 0 for the model to match the hardware bit for bit), and its one-core rate.
// Build and run: gcc -O2 -o /tmp/amx_probe tools/amx_probe.c -lm && /tmp/amx_probe
#include <immintrin.h>
#include <cpuid.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <time.h>
#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
typedef struct { uint8_t palette, start_row, r[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
static float bf(uint16_t h){uint32_t u=(uint32_t)h<<16; float f; memcpy(&f,&u,4); return f;}
static uint16_t tobf(float f){uint32_t u; memcpy(&u,&f,4); u += 0x7fff + ((u>>16)&1); return u>>16;}
static uint32_t rnd(void){ return (uint32_t)rand()*2654435761u ^ (uint32_t)rand(); }
__attribute__((target("amx-tile,amx-bf16"))) static void run(uint16_t*A,uint16_t*B,float*C){
  cfg_t cfg; memset(&cfg,0,64); cfg.palette=1;
  for(int t=0;t<3;t++){cfg.rows[t]=16; cfg.colsb[t]=64;}
  _tile_loadconfig(&cfg);
  _tile_loadd(0,C,64); _tile_loadd(1,A,64); _tile_loadd(2,B,64);
  _tile_dpbf16ps(0,1,2); _tile_stored(0,C,64); _tile_release();
}
__attribute__((target("amx-tile,amx-bf16"))) static double bench(uint16_t*A,uint16_t*B,float*C,long n){
  cfg_t cfg; memset(&cfg,0,64); cfg.palette=1;
  for(int t=0;t<8;t++){cfg.rows[t]=16; cfg.colsb[t]=64;}
  _tile_loadconfig(&cfg);
  _tile_loadd(4,A,64); _tile_loadd(5,A,64); _tile_loadd(6,B,64); _tile_loadd(7,B,64);
  _tile_zero(0);_tile_zero(1);_tile_zero(2);_tile_zero(3);
  struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
  for(long i=0;i<n;i++){ _tile_dpbf16ps(0,4,6); _tile_dpbf16ps(1,4,7); _tile_dpbf16ps(2,5,6); _tile_dpbf16ps(3,5,7);}
  clock_gettime(CLOCK_MONOTONIC,&t1);
  _tile_stored(0,C,64); _tile_release();
  double s=(t1.tv_sec-t0.tv_sec)+1e-9*(t1.tv_nsec-t0.tv_nsec);
  return 4.0*n*16*16*32*2/s/1e9;
}
int main(){
  unsigned a,b,c,d; __cpuid_count(7,0,a,b,c,d);
  int amx_bf16=(d>>22)&1, amx_tile=(d>>24)&1, avx512fp16=(d>>23)&1;
  __cpuid_count(7,1,a,b,c,d); int amx_fp16=(a>>21)&1;
  printf("cpuid: amx_tile=%d amx_bf16=%d amx_fp16=%d avx512_fp16=%d\n",amx_tile,amx_bf16,amx_fp16,avx512fp16);
  long r=syscall(SYS_arch_prctl,ARCH_REQ_XCOMP_PERM,XFEATURE_XTILEDATA); unsigned long bm=0;
  syscall(SYS_arch_prctl,ARCH_GET_XCOMP_PERM,&bm);
  printf("arch_prctl req=%ld perm bitmask=%#lx\n",r,bm);
  if(!amx_bf16||r) return 0;
  static uint16_t A[16*32],B[16*32]; static float C[256],C0[256];
  long mism[5]={0}; long total=0;
  for(int trial=0;trial<2000;trial++){
    for(int i=0;i<512;i++){ float x=((int)(rnd()%2001)-1000)/137.0f * powf(2.0f,(int)(rnd()%7)-3); if(trial%3==0 && i%5==0) x=-x*1.0001f; A[i]=tobf(x); float y=((int)(rnd()%2001)-1000)/91.0f; B[i]=tobf(y);}
    for(int i=0;i<256;i++){ C0[i]=((int)(rnd()%20001)-10000)/7.0f * (trial%2? 1e-3f:1.0f);} memcpy(C,C0,sizeof C);
    run(A,B,C);
    for(int m=0;m<16;m++)for(int n=0;n<16;n++){
      float e1=C0[m*16+n], e3=C0[m*16+n], e2=C0[m*16+n]; double e4=C0[m*16+n]; float ev=0, od=0;
      for(int k=0;k<16;k++){ float a0=bf(A[m*32+2*k]),a1=bf(A[m*32+2*k+1]),b0=bf(B[k*32+2*n]),b1=bf(B[k*32+2*n+1]);
        e1=fmaf(a0,b0,e1); e1=fmaf(a1,b1,e1);
        e3=(float)((double)e3+(double)a0*b0+(double)a1*b1);
        e2=e2+(float)((double)a0*b0+(double)a1*b1);
        e4+= (double)a0*b0+(double)a1*b1; ev=fmaf(a0,b0,ev); od=fmaf(a1,b1,od);}
      float e5=C0[m*16+n]+(ev+od);
      float hw=C[m*16+n]; total++;
      if(hw!=e1)mism[0]++; if(hw!=e3)mism[1]++; if(hw!=e2)mism[2]++; if(hw!=(float)e4)mism[3]++; if(hw!=e5)mism[4]++;
    }
  }
  printf("mismatch of %ld: seqfma=%ld pairsingle=%ld pairthenadd=%ld allexact=%ld sdm_evenodd=%ld\n",total,mism[0],mism[1],mism[2],mism[3],mism[4]);
  printf("TDPBF16PS 1 core: %.1f GFLOP/s\n", bench(A,B,C,20000000));
  return 0;
}
