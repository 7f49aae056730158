// Planted error for the strict check: a threadgroup pointer passed where a device pointer is expected.
// Apple's compiler rejects this; `python -m flash_attn_cy.sim check` must fail on it.
#include <metal_stdlib>
using namespace metal;

inline void store_row(device float* dst, uint i, float v) { dst[i] = v; }

kernel void strict_mixed_address_space(device float* y [[buffer(0)]],
                                       uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float tile[32];
    tile[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    store_row(tile, tid, 1.0f);  // BUG: threadgroup float* is not a device float*
    y[tid] = tile[tid];
}
