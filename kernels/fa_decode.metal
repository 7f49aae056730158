// fa_decode.metal - short-query specializations fa_dec_<dtype>_d<head dim> (one simdgroup, 8 packed query rows,
// split-KV partials when the plan splits) and the merge kernels fa_merge_<dtype> that combine the splits.
// Bodies: fa_forward.h, fa_merge.h. Tiles: fa_tiles.h. Instantiations written out, one per line.
#include <metal_stdlib>
using namespace metal;

#include "fa_forward.h"
#include "fa_merge.h"

template [[host_name("fa_dec_f16_d64")]] [[kernel]] decltype(fa_attention<half, 64, FA_DEC_BQ, fa_dec_bk(64, sizeof(half)), FA_DEC_SIMDGROUPS>) fa_attention<half, 64, FA_DEC_BQ, fa_dec_bk(64, sizeof(half)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f16_d80")]] [[kernel]] decltype(fa_attention<half, 80, FA_DEC_BQ, fa_dec_bk(80, sizeof(half)), FA_DEC_SIMDGROUPS>) fa_attention<half, 80, FA_DEC_BQ, fa_dec_bk(80, sizeof(half)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f16_d96")]] [[kernel]] decltype(fa_attention<half, 96, FA_DEC_BQ, fa_dec_bk(96, sizeof(half)), FA_DEC_SIMDGROUPS>) fa_attention<half, 96, FA_DEC_BQ, fa_dec_bk(96, sizeof(half)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f16_d128")]] [[kernel]] decltype(fa_attention<half, 128, FA_DEC_BQ, fa_dec_bk(128, sizeof(half)), FA_DEC_SIMDGROUPS>) fa_attention<half, 128, FA_DEC_BQ, fa_dec_bk(128, sizeof(half)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f16_d256")]] [[kernel]] decltype(fa_attention<half, 256, FA_DEC_BQ, fa_dec_bk(256, sizeof(half)), FA_DEC_SIMDGROUPS>) fa_attention<half, 256, FA_DEC_BQ, fa_dec_bk(256, sizeof(half)), FA_DEC_SIMDGROUPS>;

template [[host_name("fa_dec_bf16_d64")]] [[kernel]] decltype(fa_attention<bfloat, 64, FA_DEC_BQ, fa_dec_bk(64, sizeof(bfloat)), FA_DEC_SIMDGROUPS>) fa_attention<bfloat, 64, FA_DEC_BQ, fa_dec_bk(64, sizeof(bfloat)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_bf16_d80")]] [[kernel]] decltype(fa_attention<bfloat, 80, FA_DEC_BQ, fa_dec_bk(80, sizeof(bfloat)), FA_DEC_SIMDGROUPS>) fa_attention<bfloat, 80, FA_DEC_BQ, fa_dec_bk(80, sizeof(bfloat)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_bf16_d96")]] [[kernel]] decltype(fa_attention<bfloat, 96, FA_DEC_BQ, fa_dec_bk(96, sizeof(bfloat)), FA_DEC_SIMDGROUPS>) fa_attention<bfloat, 96, FA_DEC_BQ, fa_dec_bk(96, sizeof(bfloat)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_bf16_d128")]] [[kernel]] decltype(fa_attention<bfloat, 128, FA_DEC_BQ, fa_dec_bk(128, sizeof(bfloat)), FA_DEC_SIMDGROUPS>) fa_attention<bfloat, 128, FA_DEC_BQ, fa_dec_bk(128, sizeof(bfloat)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_bf16_d256")]] [[kernel]] decltype(fa_attention<bfloat, 256, FA_DEC_BQ, fa_dec_bk(256, sizeof(bfloat)), FA_DEC_SIMDGROUPS>) fa_attention<bfloat, 256, FA_DEC_BQ, fa_dec_bk(256, sizeof(bfloat)), FA_DEC_SIMDGROUPS>;

template [[host_name("fa_dec_f32_d64")]] [[kernel]] decltype(fa_attention<float, 64, FA_DEC_BQ, fa_dec_bk(64, sizeof(float)), FA_DEC_SIMDGROUPS>) fa_attention<float, 64, FA_DEC_BQ, fa_dec_bk(64, sizeof(float)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f32_d80")]] [[kernel]] decltype(fa_attention<float, 80, FA_DEC_BQ, fa_dec_bk(80, sizeof(float)), FA_DEC_SIMDGROUPS>) fa_attention<float, 80, FA_DEC_BQ, fa_dec_bk(80, sizeof(float)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f32_d96")]] [[kernel]] decltype(fa_attention<float, 96, FA_DEC_BQ, fa_dec_bk(96, sizeof(float)), FA_DEC_SIMDGROUPS>) fa_attention<float, 96, FA_DEC_BQ, fa_dec_bk(96, sizeof(float)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f32_d128")]] [[kernel]] decltype(fa_attention<float, 128, FA_DEC_BQ, fa_dec_bk(128, sizeof(float)), FA_DEC_SIMDGROUPS>) fa_attention<float, 128, FA_DEC_BQ, fa_dec_bk(128, sizeof(float)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_dec_f32_d256")]] [[kernel]] decltype(fa_attention<float, 256, FA_DEC_BQ, fa_dec_bk(256, sizeof(float)), FA_DEC_SIMDGROUPS>) fa_attention<float, 256, FA_DEC_BQ, fa_dec_bk(256, sizeof(float)), FA_DEC_SIMDGROUPS>;
template [[host_name("fa_merge_f16")]] [[kernel]] decltype(fa_merge_splits<half>) fa_merge_splits<half>;
template [[host_name("fa_merge_bf16")]] [[kernel]] decltype(fa_merge_splits<bfloat>) fa_merge_splits<bfloat>;
template [[host_name("fa_merge_f32")]] [[kernel]] decltype(fa_merge_splits<float>) fa_merge_splits<float>;
