// Planted hostile kernel: a pragma the directive form would refuse (it changes the symbol's linkage name), hidden in
// the operator form _Pragma inside a macro.
#include <metal_stdlib>
using namespace metal;
#define HIDE _Pragma("redefine_extname k_hidden system")
HIDE
kernel void pragma_operator(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = 1;
}
