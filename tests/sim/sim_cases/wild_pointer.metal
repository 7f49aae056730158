// Planted crash: a write far outside any buffer and an integer division by zero must become faults, not crashes.
#include <metal_stdlib>
using namespace metal;

kernel void wild_write(device float* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid * 100000000u + 1000000000u] = 1.0f;  // BUG: ~4 GB past the buffer
}

kernel void divide_by_zero(device int* y [[buffer(0)]], constant int& d [[buffer(1)]],
                           uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = int(tid) / d;  // BUG when d == 0
}

kernel void simd_divergent(device float* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float t[64];
    t[tid] = 1.0f;
    float v = 0.0f;
    if (tid % 2 == 0) v = simd_sum(float(tid));           // BUG: odd lanes go to the barrier instead
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[tid] = v + t[63 - tid];
}

kernel void spin_forever(device float* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float flag;
    if (tid == 0) flag = 0.0f;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    while (flag == 0.0f) { y[tid] += 1.0f; }  // BUG: waits for a write nobody makes
    y[tid] = flag;
}

// Planted bug: every threadgroup adds into the same device word without atomics (a race between threadgroups).
kernel void cross_group_race(device float* total [[buffer(0)]], uint3 tg [[threadgroup_position_in_grid]],
                             uint tid [[thread_index_in_threadgroup]]) {
    if (tid == 0) total[0] = total[0] * 0.5f + float(tg.x);
}
