// fa_kvcache_append.metal - KV-cache append + rotary specializations fa_kvcache_append_<dtype>.
// Body: fa_kvcache_append.h.
#include <metal_stdlib>
using namespace metal;

#include "fa_kvcache_append.h"

#define FA_INSTANTIATE_APPEND(tname, T) \
    template [[host_name("fa_kvcache_append_" #tname)]] [[kernel]] decltype(fa_kvcache_append<T>) fa_kvcache_append<T>;

FA_INSTANTIATE_APPEND(f16, half)
FA_INSTANTIATE_APPEND(bf16, bfloat)
FA_INSTANTIATE_APPEND(f32, float)
