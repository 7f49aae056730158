// Planted hostile kernel: a #line directive that would make its code look like the simulator's own header.
#include <metal_stdlib>
using namespace metal;
#line 1 "metal_stdlib"
kernel void line_marker(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = 1;
}
