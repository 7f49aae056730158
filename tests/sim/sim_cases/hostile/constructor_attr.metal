// Planted hostile kernel: a function the loader runs (constructor attribute), with a pasted attribute name.
#include <metal_stdlib>
using namespace metal;
__attribute__((constructor)) void at_load() { }
kernel void constructor_attr(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = 1;
}
