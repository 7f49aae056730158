// copy_scale.metal - hand-counted work for the simulator's counters (tests/test_sim_counters.py).
// Every thread i < n: one 4-byte load of x[i], one of the setBytes constant `scale`, one 4-byte store of y[i].
// Threads at or past n do nothing but read n. No threadgroup memory, barriers or matrix work.
#include <metal_stdlib>
using namespace metal;

kernel void copy_scale(device const float* x [[buffer(0)]],
                       device float* y [[buffer(1)]],
                       constant uint& n [[buffer(2)]],
                       constant float& scale [[buffer(3)]],
                       uint gid [[thread_position_in_grid]]) {
    if (gid >= n) return;
    y[gid] = x[gid] * scale;
}
