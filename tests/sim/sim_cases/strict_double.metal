// Planted error for the strict check: MSL has no double.
#include <metal_stdlib>
using namespace metal;

kernel void strict_double(device float* y [[buffer(0)]],
                          uint tid [[thread_index_in_threadgroup]]) {
    double acc = 0.0;  // BUG: no double in MSL
    acc += tid;
    y[tid] = float(acc);
}
