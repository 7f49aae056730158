// Planted bug: a threadgroup_barrier inside a branch only the first SIMD group takes (would hang on a GPU).
// Expected fault: divergent-barrier. Run: grid 1, threadgroup 64, buffer(0) float32[64].
#include <metal_stdlib>
using namespace metal;

kernel void divergent_barrier(device float* y [[buffer(0)]],
                              uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float tile[64];
    tile[tid] = float(tid);
    if (tid < 32) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // BUG: not reached by threads 32..63
    }
    y[tid] = tile[63 - tid];
}
