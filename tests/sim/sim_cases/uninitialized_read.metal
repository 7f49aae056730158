// Planted bug: 64 threads fill only the first 64 entries of a 128-entry tile, then each reads entry tid + 64.
// Expected fault: uninitialized-read. Run: grid 1, threadgroup 64, buffer(0) float32[64].
#include <metal_stdlib>
using namespace metal;

kernel void uninitialized_read(device float* y [[buffer(0)]],
                               uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float tile[128];
    tile[tid] = float(tid);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[tid] = tile[tid] + tile[tid + 64];  // BUG: tile[64..127] never written
}
