// fa_forward.metal - prefill / general forward specializations: fa_fwd_<dtype>_d<head dim>, and
// fa_fwd_long_<dtype>_d<head dim> with blocked accumulation.
// Body: fa_forward.h. Tiles: fa_tiles.h (BQ = 32 rows on 4 simdgroups, BK from the table). One explicit
// instantiation per line, written out (the simulator's translator reads them before the preprocessor runs).
#include <metal_stdlib>
using namespace metal;

#include "fa_forward.h"

template [[host_name("fa_fwd_f16_d64")]] [[kernel]] decltype(fa_attention<half, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(half)), FA_FWD_SIMDGROUPS>) fa_attention<half, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(half)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f16_d80")]] [[kernel]] decltype(fa_attention<half, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(half)), FA_FWD_SIMDGROUPS>) fa_attention<half, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(half)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f16_d96")]] [[kernel]] decltype(fa_attention<half, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(half)), FA_FWD_SIMDGROUPS>) fa_attention<half, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(half)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f16_d128")]] [[kernel]] decltype(fa_attention<half, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(half)), FA_FWD_SIMDGROUPS>) fa_attention<half, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(half)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f16_d256")]] [[kernel]] decltype(fa_attention<half, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(half)), FA_FWD_SIMDGROUPS>) fa_attention<half, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(half)), FA_FWD_SIMDGROUPS>;

template [[host_name("fa_fwd_bf16_d64")]] [[kernel]] decltype(fa_attention<bfloat, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(bfloat)), FA_FWD_SIMDGROUPS>) fa_attention<bfloat, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(bfloat)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_bf16_d80")]] [[kernel]] decltype(fa_attention<bfloat, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(bfloat)), FA_FWD_SIMDGROUPS>) fa_attention<bfloat, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(bfloat)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_bf16_d96")]] [[kernel]] decltype(fa_attention<bfloat, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(bfloat)), FA_FWD_SIMDGROUPS>) fa_attention<bfloat, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(bfloat)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_bf16_d128")]] [[kernel]] decltype(fa_attention<bfloat, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(bfloat)), FA_FWD_SIMDGROUPS>) fa_attention<bfloat, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(bfloat)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_bf16_d256")]] [[kernel]] decltype(fa_attention<bfloat, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(bfloat)), FA_FWD_SIMDGROUPS>) fa_attention<bfloat, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(bfloat)), FA_FWD_SIMDGROUPS>;

template [[host_name("fa_fwd_f32_d64")]] [[kernel]] decltype(fa_attention<float, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(float)), FA_FWD_SIMDGROUPS>) fa_attention<float, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(float)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f32_d80")]] [[kernel]] decltype(fa_attention<float, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(float)), FA_FWD_SIMDGROUPS>) fa_attention<float, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(float)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f32_d96")]] [[kernel]] decltype(fa_attention<float, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(float)), FA_FWD_SIMDGROUPS>) fa_attention<float, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(float)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f32_d128")]] [[kernel]] decltype(fa_attention<float, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(float)), FA_FWD_SIMDGROUPS>) fa_attention<float, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(float)), FA_FWD_SIMDGROUPS>;
template [[host_name("fa_fwd_f32_d256")]] [[kernel]] decltype(fa_attention<float, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(float)), FA_FWD_SIMDGROUPS>) fa_attention<float, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(float)), FA_FWD_SIMDGROUPS>;

// BLOCKED (fa_fold_block): long key ranges that the plan cannot split enough (fa_plan_forward.cpp).
template [[host_name("fa_fwd_long_f16_d64")]] [[kernel]] decltype(fa_attention<half, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(half)), FA_FWD_SIMDGROUPS, true>) fa_attention<half, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(half)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f16_d80")]] [[kernel]] decltype(fa_attention<half, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(half)), FA_FWD_SIMDGROUPS, true>) fa_attention<half, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(half)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f16_d96")]] [[kernel]] decltype(fa_attention<half, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(half)), FA_FWD_SIMDGROUPS, true>) fa_attention<half, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(half)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f16_d128")]] [[kernel]] decltype(fa_attention<half, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(half)), FA_FWD_SIMDGROUPS, true>) fa_attention<half, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(half)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f16_d256")]] [[kernel]] decltype(fa_attention<half, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(half)), FA_FWD_SIMDGROUPS, true>) fa_attention<half, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(half)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_bf16_d64")]] [[kernel]] decltype(fa_attention<bfloat, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>) fa_attention<bfloat, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_bf16_d80")]] [[kernel]] decltype(fa_attention<bfloat, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>) fa_attention<bfloat, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_bf16_d96")]] [[kernel]] decltype(fa_attention<bfloat, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>) fa_attention<bfloat, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_bf16_d128")]] [[kernel]] decltype(fa_attention<bfloat, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>) fa_attention<bfloat, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_bf16_d256")]] [[kernel]] decltype(fa_attention<bfloat, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>) fa_attention<bfloat, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(bfloat)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f32_d64")]] [[kernel]] decltype(fa_attention<float, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(float)), FA_FWD_SIMDGROUPS, true>) fa_attention<float, 64, FA_FWD_BQ, fa_fwd_bk(64, sizeof(float)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f32_d80")]] [[kernel]] decltype(fa_attention<float, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(float)), FA_FWD_SIMDGROUPS, true>) fa_attention<float, 80, FA_FWD_BQ, fa_fwd_bk(80, sizeof(float)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f32_d96")]] [[kernel]] decltype(fa_attention<float, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(float)), FA_FWD_SIMDGROUPS, true>) fa_attention<float, 96, FA_FWD_BQ, fa_fwd_bk(96, sizeof(float)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f32_d128")]] [[kernel]] decltype(fa_attention<float, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(float)), FA_FWD_SIMDGROUPS, true>) fa_attention<float, 128, FA_FWD_BQ, fa_fwd_bk(128, sizeof(float)), FA_FWD_SIMDGROUPS, true>;
template [[host_name("fa_fwd_long_f32_d256")]] [[kernel]] decltype(fa_attention<float, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(float)), FA_FWD_SIMDGROUPS, true>) fa_attention<float, 256, FA_FWD_BQ, fa_fwd_bk(256, sizeof(float)), FA_FWD_SIMDGROUPS, true>;
