// Planted hostile kernel: an extern "C" declaration of a libc function.
#include <metal_stdlib>
using namespace metal;
extern "C" int getpid();
kernel void extern_c(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = getpid();
}
