// fa_bwd.metal - backward specializations: fa_bwd_pre_<dtype>, fa_bwd_dkdv_<dtype>_d<head dim>,
// fa_bwd_dq_<dtype>_d<head dim>, and their blocked-accumulation variants fa_bwd_dkdv_long_* / fa_bwd_dq_long_*.
// Bodies: fa_bwd.h; tiles: fa_bwd_params.h. One explicit instantiation per line, written out (the simulator's
// translator reads them before the preprocessor runs).
#include <metal_stdlib>
using namespace metal;

#include "fa_bwd.h"

template [[host_name("fa_bwd_pre_f16")]] [[kernel]] decltype(fa_bwd_preprocess<half>) fa_bwd_preprocess<half>;
template [[host_name("fa_bwd_pre_bf16")]] [[kernel]] decltype(fa_bwd_preprocess<bfloat>) fa_bwd_preprocess<bfloat>;
template [[host_name("fa_bwd_pre_f32")]] [[kernel]] decltype(fa_bwd_preprocess<float>) fa_bwd_preprocess<float>;

template [[host_name("fa_bwd_dkdv_f16_d64")]] [[kernel]] decltype(fa_bwd_dkdv<half, 64, fa_bwd_kv_bq(64, sizeof(half)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<half, 64, fa_bwd_kv_bq(64, sizeof(half)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f16_d80")]] [[kernel]] decltype(fa_bwd_dkdv<half, 80, fa_bwd_kv_bq(80, sizeof(half)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<half, 80, fa_bwd_kv_bq(80, sizeof(half)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f16_d96")]] [[kernel]] decltype(fa_bwd_dkdv<half, 96, fa_bwd_kv_bq(96, sizeof(half)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<half, 96, fa_bwd_kv_bq(96, sizeof(half)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f16_d128")]] [[kernel]] decltype(fa_bwd_dkdv<half, 128, fa_bwd_kv_bq(128, sizeof(half)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<half, 128, fa_bwd_kv_bq(128, sizeof(half)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f16_d256")]] [[kernel]] decltype(fa_bwd_dkdv<half, 256, fa_bwd_kv_bq(256, sizeof(half)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<half, 256, fa_bwd_kv_bq(256, sizeof(half)), FA_BWD_KV_SIMDGROUPS>;

template [[host_name("fa_bwd_dkdv_bf16_d64")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 64, fa_bwd_kv_bq(64, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<bfloat, 64, fa_bwd_kv_bq(64, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_bf16_d80")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 80, fa_bwd_kv_bq(80, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<bfloat, 80, fa_bwd_kv_bq(80, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_bf16_d96")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 96, fa_bwd_kv_bq(96, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<bfloat, 96, fa_bwd_kv_bq(96, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_bf16_d128")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 128, fa_bwd_kv_bq(128, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<bfloat, 128, fa_bwd_kv_bq(128, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_bf16_d256")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 256, fa_bwd_kv_bq(256, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<bfloat, 256, fa_bwd_kv_bq(256, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS>;

template [[host_name("fa_bwd_dkdv_f32_d64")]] [[kernel]] decltype(fa_bwd_dkdv<float, 64, fa_bwd_kv_bq(64, sizeof(float)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<float, 64, fa_bwd_kv_bq(64, sizeof(float)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f32_d80")]] [[kernel]] decltype(fa_bwd_dkdv<float, 80, fa_bwd_kv_bq(80, sizeof(float)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<float, 80, fa_bwd_kv_bq(80, sizeof(float)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f32_d96")]] [[kernel]] decltype(fa_bwd_dkdv<float, 96, fa_bwd_kv_bq(96, sizeof(float)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<float, 96, fa_bwd_kv_bq(96, sizeof(float)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f32_d128")]] [[kernel]] decltype(fa_bwd_dkdv<float, 128, fa_bwd_kv_bq(128, sizeof(float)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<float, 128, fa_bwd_kv_bq(128, sizeof(float)), FA_BWD_KV_SIMDGROUPS>;
template [[host_name("fa_bwd_dkdv_f32_d256")]] [[kernel]] decltype(fa_bwd_dkdv<float, 256, fa_bwd_kv_bq(256, sizeof(float)), FA_BWD_KV_SIMDGROUPS>) fa_bwd_dkdv<float, 256, fa_bwd_kv_bq(256, sizeof(float)), FA_BWD_KV_SIMDGROUPS>;

template [[host_name("fa_bwd_dq_f16_d64")]] [[kernel]] decltype(fa_bwd_dq<half, 64, fa_bwd_q_bk(64, sizeof(half)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<half, 64, fa_bwd_q_bk(64, sizeof(half)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f16_d80")]] [[kernel]] decltype(fa_bwd_dq<half, 80, fa_bwd_q_bk(80, sizeof(half)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<half, 80, fa_bwd_q_bk(80, sizeof(half)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f16_d96")]] [[kernel]] decltype(fa_bwd_dq<half, 96, fa_bwd_q_bk(96, sizeof(half)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<half, 96, fa_bwd_q_bk(96, sizeof(half)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f16_d128")]] [[kernel]] decltype(fa_bwd_dq<half, 128, fa_bwd_q_bk(128, sizeof(half)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<half, 128, fa_bwd_q_bk(128, sizeof(half)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f16_d256")]] [[kernel]] decltype(fa_bwd_dq<half, 256, fa_bwd_q_bk(256, sizeof(half)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<half, 256, fa_bwd_q_bk(256, sizeof(half)), FA_BWD_Q_SIMDGROUPS>;

template [[host_name("fa_bwd_dq_bf16_d64")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 64, fa_bwd_q_bk(64, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<bfloat, 64, fa_bwd_q_bk(64, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_bf16_d80")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 80, fa_bwd_q_bk(80, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<bfloat, 80, fa_bwd_q_bk(80, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_bf16_d96")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 96, fa_bwd_q_bk(96, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<bfloat, 96, fa_bwd_q_bk(96, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_bf16_d128")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 128, fa_bwd_q_bk(128, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<bfloat, 128, fa_bwd_q_bk(128, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_bf16_d256")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 256, fa_bwd_q_bk(256, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<bfloat, 256, fa_bwd_q_bk(256, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS>;

template [[host_name("fa_bwd_dq_f32_d64")]] [[kernel]] decltype(fa_bwd_dq<float, 64, fa_bwd_q_bk(64, sizeof(float)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<float, 64, fa_bwd_q_bk(64, sizeof(float)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f32_d80")]] [[kernel]] decltype(fa_bwd_dq<float, 80, fa_bwd_q_bk(80, sizeof(float)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<float, 80, fa_bwd_q_bk(80, sizeof(float)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f32_d96")]] [[kernel]] decltype(fa_bwd_dq<float, 96, fa_bwd_q_bk(96, sizeof(float)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<float, 96, fa_bwd_q_bk(96, sizeof(float)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f32_d128")]] [[kernel]] decltype(fa_bwd_dq<float, 128, fa_bwd_q_bk(128, sizeof(float)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<float, 128, fa_bwd_q_bk(128, sizeof(float)), FA_BWD_Q_SIMDGROUPS>;
template [[host_name("fa_bwd_dq_f32_d256")]] [[kernel]] decltype(fa_bwd_dq<float, 256, fa_bwd_q_bk(256, sizeof(float)), FA_BWD_Q_SIMDGROUPS>) fa_bwd_dq<float, 256, fa_bwd_q_bk(256, sizeof(float)), FA_BWD_Q_SIMDGROUPS>;

// BLOCKED (fa_bwd_fold): long sequences (fa_plan_backward.cpp picks them).
template [[host_name("fa_bwd_dkdv_long_f16_d64")]] [[kernel]] decltype(fa_bwd_dkdv<half, 64, fa_bwd_kv_bq(64, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<half, 64, fa_bwd_kv_bq(64, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f16_d80")]] [[kernel]] decltype(fa_bwd_dkdv<half, 80, fa_bwd_kv_bq(80, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<half, 80, fa_bwd_kv_bq(80, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f16_d96")]] [[kernel]] decltype(fa_bwd_dkdv<half, 96, fa_bwd_kv_bq(96, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<half, 96, fa_bwd_kv_bq(96, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f16_d128")]] [[kernel]] decltype(fa_bwd_dkdv<half, 128, fa_bwd_kv_bq(128, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<half, 128, fa_bwd_kv_bq(128, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f16_d256")]] [[kernel]] decltype(fa_bwd_dkdv<half, 256, fa_bwd_kv_bq(256, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<half, 256, fa_bwd_kv_bq(256, sizeof(half)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_bf16_d64")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 64, fa_bwd_kv_bq(64, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<bfloat, 64, fa_bwd_kv_bq(64, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_bf16_d80")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 80, fa_bwd_kv_bq(80, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<bfloat, 80, fa_bwd_kv_bq(80, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_bf16_d96")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 96, fa_bwd_kv_bq(96, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<bfloat, 96, fa_bwd_kv_bq(96, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_bf16_d128")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 128, fa_bwd_kv_bq(128, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<bfloat, 128, fa_bwd_kv_bq(128, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_bf16_d256")]] [[kernel]] decltype(fa_bwd_dkdv<bfloat, 256, fa_bwd_kv_bq(256, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<bfloat, 256, fa_bwd_kv_bq(256, sizeof(bfloat)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f32_d64")]] [[kernel]] decltype(fa_bwd_dkdv<float, 64, fa_bwd_kv_bq(64, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<float, 64, fa_bwd_kv_bq(64, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f32_d80")]] [[kernel]] decltype(fa_bwd_dkdv<float, 80, fa_bwd_kv_bq(80, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<float, 80, fa_bwd_kv_bq(80, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f32_d96")]] [[kernel]] decltype(fa_bwd_dkdv<float, 96, fa_bwd_kv_bq(96, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<float, 96, fa_bwd_kv_bq(96, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f32_d128")]] [[kernel]] decltype(fa_bwd_dkdv<float, 128, fa_bwd_kv_bq(128, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<float, 128, fa_bwd_kv_bq(128, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dkdv_long_f32_d256")]] [[kernel]] decltype(fa_bwd_dkdv<float, 256, fa_bwd_kv_bq(256, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>) fa_bwd_dkdv<float, 256, fa_bwd_kv_bq(256, sizeof(float)), FA_BWD_KV_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f16_d64")]] [[kernel]] decltype(fa_bwd_dq<half, 64, fa_bwd_q_bk(64, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<half, 64, fa_bwd_q_bk(64, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f16_d80")]] [[kernel]] decltype(fa_bwd_dq<half, 80, fa_bwd_q_bk(80, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<half, 80, fa_bwd_q_bk(80, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f16_d96")]] [[kernel]] decltype(fa_bwd_dq<half, 96, fa_bwd_q_bk(96, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<half, 96, fa_bwd_q_bk(96, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f16_d128")]] [[kernel]] decltype(fa_bwd_dq<half, 128, fa_bwd_q_bk(128, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<half, 128, fa_bwd_q_bk(128, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f16_d256")]] [[kernel]] decltype(fa_bwd_dq<half, 256, fa_bwd_q_bk(256, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<half, 256, fa_bwd_q_bk(256, sizeof(half)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_bf16_d64")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 64, fa_bwd_q_bk(64, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<bfloat, 64, fa_bwd_q_bk(64, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_bf16_d80")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 80, fa_bwd_q_bk(80, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<bfloat, 80, fa_bwd_q_bk(80, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_bf16_d96")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 96, fa_bwd_q_bk(96, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<bfloat, 96, fa_bwd_q_bk(96, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_bf16_d128")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 128, fa_bwd_q_bk(128, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<bfloat, 128, fa_bwd_q_bk(128, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_bf16_d256")]] [[kernel]] decltype(fa_bwd_dq<bfloat, 256, fa_bwd_q_bk(256, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<bfloat, 256, fa_bwd_q_bk(256, sizeof(bfloat)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f32_d64")]] [[kernel]] decltype(fa_bwd_dq<float, 64, fa_bwd_q_bk(64, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<float, 64, fa_bwd_q_bk(64, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f32_d80")]] [[kernel]] decltype(fa_bwd_dq<float, 80, fa_bwd_q_bk(80, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<float, 80, fa_bwd_q_bk(80, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f32_d96")]] [[kernel]] decltype(fa_bwd_dq<float, 96, fa_bwd_q_bk(96, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<float, 96, fa_bwd_q_bk(96, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f32_d128")]] [[kernel]] decltype(fa_bwd_dq<float, 128, fa_bwd_q_bk(128, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<float, 128, fa_bwd_q_bk(128, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>;
template [[host_name("fa_bwd_dq_long_f32_d256")]] [[kernel]] decltype(fa_bwd_dq<float, 256, fa_bwd_q_bk(256, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>) fa_bwd_dq<float, 256, fa_bwd_q_bk(256, sizeof(float)), FA_BWD_Q_SIMDGROUPS, true>;
