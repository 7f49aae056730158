// fa_decode_vec1.metal - vector decode specializations fa_vec1_<dtype>_d<head dim>: one query row per head block
// (token-by-token generation without GQA), registers sized for one row. Body: fa_decode_vec.h; 2..4 rows:
// fa_decode_vec.metal. Selection rule: fa_tiles.h. Instantiations written out, one per line.
#include <metal_stdlib>
using namespace metal;

#include "fa_decode_vec.h"
template [[host_name("fa_vec1_f16_d64")]] [[kernel]] decltype(fa_decode_vec<half, 64, 1>) fa_decode_vec<half, 64, 1>;
template [[host_name("fa_vec1_f16_d80")]] [[kernel]] decltype(fa_decode_vec<half, 80, 1>) fa_decode_vec<half, 80, 1>;
template [[host_name("fa_vec1_f16_d96")]] [[kernel]] decltype(fa_decode_vec<half, 96, 1>) fa_decode_vec<half, 96, 1>;
template [[host_name("fa_vec1_f16_d128")]] [[kernel]] decltype(fa_decode_vec<half, 128, 1>) fa_decode_vec<half, 128, 1>;
template [[host_name("fa_vec1_f16_d256")]] [[kernel]] decltype(fa_decode_vec<half, 256, 1>) fa_decode_vec<half, 256, 1>;

template [[host_name("fa_vec1_bf16_d64")]] [[kernel]] decltype(fa_decode_vec<bfloat, 64, 1>) fa_decode_vec<bfloat, 64, 1>;
template [[host_name("fa_vec1_bf16_d80")]] [[kernel]] decltype(fa_decode_vec<bfloat, 80, 1>) fa_decode_vec<bfloat, 80, 1>;
template [[host_name("fa_vec1_bf16_d96")]] [[kernel]] decltype(fa_decode_vec<bfloat, 96, 1>) fa_decode_vec<bfloat, 96, 1>;
template [[host_name("fa_vec1_bf16_d128")]] [[kernel]] decltype(fa_decode_vec<bfloat, 128, 1>) fa_decode_vec<bfloat, 128, 1>;
template [[host_name("fa_vec1_bf16_d256")]] [[kernel]] decltype(fa_decode_vec<bfloat, 256, 1>) fa_decode_vec<bfloat, 256, 1>;

template [[host_name("fa_vec1_f32_d64")]] [[kernel]] decltype(fa_decode_vec<float, 64, 1>) fa_decode_vec<float, 64, 1>;
template [[host_name("fa_vec1_f32_d80")]] [[kernel]] decltype(fa_decode_vec<float, 80, 1>) fa_decode_vec<float, 80, 1>;
template [[host_name("fa_vec1_f32_d96")]] [[kernel]] decltype(fa_decode_vec<float, 96, 1>) fa_decode_vec<float, 96, 1>;
template [[host_name("fa_vec1_f32_d128")]] [[kernel]] decltype(fa_decode_vec<float, 128, 1>) fa_decode_vec<float, 128, 1>;
template [[host_name("fa_vec1_f32_d256")]] [[kernel]] decltype(fa_decode_vec<float, 256, 1>) fa_decode_vec<float, 256, 1>;
