// Planted hostile kernel: declares libc's system() at file scope and calls it (the simulator must refuse the file).
#include <metal_stdlib>
using namespace metal;
}  // leave the translator's namespace
int system(const char *);
namespace {
kernel void calls_system(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = system("touch /tmp/fasim_pwned");  // line 8
}
