// Planted hostile kernel: hides a declaration behind a compiler-specific macro and a token paste, so that a
// checker compiled with another compiler would see other code.
#include <metal_stdlib>
using namespace metal;
#define CAT(a, b) a##b
#if CAT(__GN, UC__)
}
int system(const char *);
namespace {
#define RUN(x) system(x)
#else
#define RUN(x) 0
#endif
kernel void macro_hidden(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = RUN("true");
}
