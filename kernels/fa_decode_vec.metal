// fa_decode_vec.metal - vector decode specializations fa_vec4_<dtype>_d<head dim>: 2..4 packed query rows per head
// block (a GQA group of 2-4 heads sharing each K/V load, or 2-4 query tokens), K/V read with vector loads, split-KV
// partials merged by fa_merge_<dtype> (fa_decode.metal). One row: fa_decode_vec1.metal. Body: fa_decode_vec.h.
// Selection rule: fa_tiles.h. Instantiations written out, one per line.
#include <metal_stdlib>
using namespace metal;

#include "fa_decode_vec.h"
template [[host_name("fa_vec4_f16_d64")]] [[kernel]] decltype(fa_decode_vec<half, 64, 4>) fa_decode_vec<half, 64, 4>;
template [[host_name("fa_vec4_f16_d80")]] [[kernel]] decltype(fa_decode_vec<half, 80, 4>) fa_decode_vec<half, 80, 4>;
template [[host_name("fa_vec4_f16_d96")]] [[kernel]] decltype(fa_decode_vec<half, 96, 4>) fa_decode_vec<half, 96, 4>;
template [[host_name("fa_vec4_f16_d128")]] [[kernel]] decltype(fa_decode_vec<half, 128, 4>) fa_decode_vec<half, 128, 4>;
template [[host_name("fa_vec4_f16_d256")]] [[kernel]] decltype(fa_decode_vec<half, 256, 4>) fa_decode_vec<half, 256, 4>;

template [[host_name("fa_vec4_bf16_d64")]] [[kernel]] decltype(fa_decode_vec<bfloat, 64, 4>) fa_decode_vec<bfloat, 64, 4>;
template [[host_name("fa_vec4_bf16_d80")]] [[kernel]] decltype(fa_decode_vec<bfloat, 80, 4>) fa_decode_vec<bfloat, 80, 4>;
template [[host_name("fa_vec4_bf16_d96")]] [[kernel]] decltype(fa_decode_vec<bfloat, 96, 4>) fa_decode_vec<bfloat, 96, 4>;
template [[host_name("fa_vec4_bf16_d128")]] [[kernel]] decltype(fa_decode_vec<bfloat, 128, 4>) fa_decode_vec<bfloat, 128, 4>;
template [[host_name("fa_vec4_bf16_d256")]] [[kernel]] decltype(fa_decode_vec<bfloat, 256, 4>) fa_decode_vec<bfloat, 256, 4>;

template [[host_name("fa_vec4_f32_d64")]] [[kernel]] decltype(fa_decode_vec<float, 64, 4>) fa_decode_vec<float, 64, 4>;
template [[host_name("fa_vec4_f32_d80")]] [[kernel]] decltype(fa_decode_vec<float, 80, 4>) fa_decode_vec<float, 80, 4>;
template [[host_name("fa_vec4_f32_d96")]] [[kernel]] decltype(fa_decode_vec<float, 96, 4>) fa_decode_vec<float, 96, 4>;
template [[host_name("fa_vec4_f32_d128")]] [[kernel]] decltype(fa_decode_vec<float, 128, 4>) fa_decode_vec<float, 128, 4>;
template [[host_name("fa_vec4_f32_d256")]] [[kernel]] decltype(fa_decode_vec<float, 256, 4>) fa_decode_vec<float, 256, 4>;
