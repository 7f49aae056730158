// Planted out-of-bounds reads that the guard pages alone miss in a single run: just past the end of a buffer whose
// size is not a multiple of 16 bytes (the alignment slack before the guard page), and just before its start.
#include <metal_stdlib>
using namespace metal;

kernel void read_past_end(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                          uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = x[tid + 1];  // BUG: reads x[3] of a 3-element x
}

kernel void read_before_start(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                              uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = x[int(tid) - 1];  // BUG: reads x[-1]
}

kernel void copy3(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                  uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = x[tid] + 1.0f;
}
