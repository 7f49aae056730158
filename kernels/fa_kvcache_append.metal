// fa_kvcache_append.metal - KV-cache append + rotary specializations fa_kvcache_append_<dtype>.
// Body: fa_kvcache_append.h.
#include <metal_stdlib>
using namespace metal;

#include "fa_kvcache_append.h"

template [[host_name("fa_kvcache_append_f16")]] [[kernel]] decltype(fa_kvcache_append<half>) fa_kvcache_append<half>;
template [[host_name("fa_kvcache_append_bf16")]] [[kernel]] decltype(fa_kvcache_append<bfloat>) fa_kvcache_append<bfloat>;
template [[host_name("fa_kvcache_append_f32")]] [[kernel]] decltype(fa_kvcache_append<float>) fa_kvcache_append<float>;
