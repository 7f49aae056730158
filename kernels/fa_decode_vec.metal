// fa_decode_vec.metal - vector decode specializations fa_vec_<dtype>_d<head dim>: at most FA_VEC_ROWS packed query
// rows per head block (one query token per head, or a small GQA group), K/V read with vector loads, split-KV partials
// merged by fa_merge_<dtype> (fa_decode.metal). Body: fa_decode_vec.h. Selection rule: fa_tiles.h. Instantiations
// written out, one per line.
#include <metal_stdlib>
using namespace metal;

#include "fa_decode_vec.h"
template [[host_name("fa_vec_f16_d64")]] [[kernel]] decltype(fa_decode_vec<half, 64>) fa_decode_vec<half, 64>;
template [[host_name("fa_vec_f16_d80")]] [[kernel]] decltype(fa_decode_vec<half, 80>) fa_decode_vec<half, 80>;
template [[host_name("fa_vec_f16_d96")]] [[kernel]] decltype(fa_decode_vec<half, 96>) fa_decode_vec<half, 96>;
template [[host_name("fa_vec_f16_d128")]] [[kernel]] decltype(fa_decode_vec<half, 128>) fa_decode_vec<half, 128>;
template [[host_name("fa_vec_f16_d256")]] [[kernel]] decltype(fa_decode_vec<half, 256>) fa_decode_vec<half, 256>;

template [[host_name("fa_vec_bf16_d64")]] [[kernel]] decltype(fa_decode_vec<bfloat, 64>) fa_decode_vec<bfloat, 64>;
template [[host_name("fa_vec_bf16_d80")]] [[kernel]] decltype(fa_decode_vec<bfloat, 80>) fa_decode_vec<bfloat, 80>;
template [[host_name("fa_vec_bf16_d96")]] [[kernel]] decltype(fa_decode_vec<bfloat, 96>) fa_decode_vec<bfloat, 96>;
template [[host_name("fa_vec_bf16_d128")]] [[kernel]] decltype(fa_decode_vec<bfloat, 128>) fa_decode_vec<bfloat, 128>;
template [[host_name("fa_vec_bf16_d256")]] [[kernel]] decltype(fa_decode_vec<bfloat, 256>) fa_decode_vec<bfloat, 256>;

template [[host_name("fa_vec_f32_d64")]] [[kernel]] decltype(fa_decode_vec<float, 64>) fa_decode_vec<float, 64>;
template [[host_name("fa_vec_f32_d80")]] [[kernel]] decltype(fa_decode_vec<float, 80>) fa_decode_vec<float, 80>;
template [[host_name("fa_vec_f32_d96")]] [[kernel]] decltype(fa_decode_vec<float, 96>) fa_decode_vec<float, 96>;
template [[host_name("fa_vec_f32_d128")]] [[kernel]] decltype(fa_decode_vec<float, 128>) fa_decode_vec<float, 128>;
template [[host_name("fa_vec_f32_d256")]] [[kernel]] decltype(fa_decode_vec<float, 256>) fa_decode_vec<float, 256>;
