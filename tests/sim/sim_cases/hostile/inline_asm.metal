// Planted hostile kernel: inline assembly.
#include <metal_stdlib>
using namespace metal;
kernel void inline_asm(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    int v = 0;
    asm volatile("" : "=r"(v));
    y[tid] = v;
}
