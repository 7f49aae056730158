// Planted bug: out-of-range threads return before a barrier the others still wait at.
// Expected fault: divergent-barrier. Run: grid 1, threadgroup 64, buffer(0) float32[40], bytes(1) uint32 40.
#include <metal_stdlib>
using namespace metal;

kernel void early_return_barrier(device float* y [[buffer(0)]],
                                 constant uint& n [[buffer(1)]],
                                 uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float tile[64];
    if (tid >= n) return;  // BUG: the barrier below is then not reached by every thread
    tile[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[tid] = tile[n - 1 - tid];
}
