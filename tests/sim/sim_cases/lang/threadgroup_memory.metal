// Dynamic threadgroup memory: [[threadgroup(n)]] arguments whose lengths the launch sets
// (setThreadgroupMemoryLength:atIndex:), as llama.cpp's kernels take their shared memory. Each threadgroup reverses
// its block of x through `scratch` and writes the block's sum, reduced through `partial`, to sums.
#include <metal_stdlib>
using namespace metal;

kernel void reverse_blocks(device const float* x [[buffer(0)]],
                           device float* y [[buffer(1)]],
                           device float* sums [[buffer(2)]],
                           threadgroup float* scratch [[threadgroup(0)]],
                           threadgroup float* partial [[threadgroup(1)]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint n [[threads_per_threadgroup]],
                           uint g [[threadgroup_position_in_grid]],
                           ushort sg [[simdgroup_index_in_threadgroup]],
                           ushort lane [[thread_index_in_simdgroup]]) {
    scratch[tid] = x[g * n + tid];
    float s = simd_sum(scratch[tid]);
    if (lane == 0) partial[sg] = s;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[g * n + tid] = scratch[n - 1 - tid];
    if (tid == 0) {
        float total = 0.0f;
        for (uint i = 0; i < (n + 31) / 32; i++) total += partial[i];
        sums[g] = total;
    }
}
