// Planted hostile kernel: calls a libc function it never declares.
#include <metal_stdlib>
using namespace metal;
kernel void undeclared_libc(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = getpid();
}
