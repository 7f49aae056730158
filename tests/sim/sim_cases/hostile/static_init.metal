// Planted hostile kernel: a namespace-scope object whose initialiser runs when the module is loaded.
#include <metal_stdlib>
using namespace metal;
inline int side_effect() { static volatile int n = 0; return n + 1; }
int loaded = side_effect();
kernel void static_init(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = loaded;
}
