// fa_probs.metal - debug kernels fa_probs_<dtype> writing the attention probabilities (return_attn_probs).
// Body: fa_probs.h.
#include <metal_stdlib>
using namespace metal;

#include "fa_probs.h"

template [[host_name("fa_probs_f16")]] [[kernel]] decltype(fa_attn_probs<half>) fa_attn_probs<half>;
template [[host_name("fa_probs_bf16")]] [[kernel]] decltype(fa_attn_probs<bfloat>) fa_attn_probs<bfloat>;
template [[host_name("fa_probs_f32")]] [[kernel]] decltype(fa_attn_probs<float>) fa_attn_probs<float>;
