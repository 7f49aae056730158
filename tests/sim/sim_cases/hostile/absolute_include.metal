// Planted hostile kernel: a quoted include of an absolute path outside the kernel's directory.
#include "/usr/include/stdlib.h"
#include <metal_stdlib>
using namespace metal;
kernel void absolute_include(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = 1;
}
