// Planted hostile kernel: a C library header, for system().
#include <cstdlib>
#include <metal_stdlib>
using namespace metal;
kernel void include_cstdlib(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = std::system("true");
}
