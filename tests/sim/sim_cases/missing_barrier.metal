// Planted bug: threads read their neighbour's tile entry without a threadgroup_barrier after the writes.
// Expected fault: race. Run: grid 2, threadgroup 64, buffer(0) float32[128], buffer(1) float32[128].
#include <metal_stdlib>
using namespace metal;

kernel void missing_barrier(device const float* x [[buffer(0)]],
                            device float* y [[buffer(1)]],
                            uint tid [[thread_index_in_threadgroup]],
                            uint3 tg [[threadgroup_position_in_grid]]) {
    threadgroup float tile[64];
    uint base = tg.x * 64;
    tile[tid] = x[base + tid] * 2.0f;
    // BUG: threadgroup_barrier(mem_flags::mem_threadgroup) missing here
    y[base + tid] = tile[(tid + 1) % 64];
}
