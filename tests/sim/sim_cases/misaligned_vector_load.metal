// Planted bug: a half4 read through a pointer cast at an element offset that is not a multiple of 4 (8 bytes).
// An Apple GPU does not report it; the simulator must (error: misaligned pointer), and accept the aligned offset.
#include <metal_stdlib>
using namespace metal;

kernel void misaligned_vector_load(device const half* x [[buffer(0)]], device float* y [[buffer(1)]],
                                   constant uint& first [[buffer(2)]], uint tid [[thread_index_in_threadgroup]]) {
    const half4 v = *reinterpret_cast<device const half4*>(x + first + 4 * tid);  // BUG when first % 4 != 0
    y[tid] = float(v.x) + float(v.y) + float(v.z) + float(v.w);
}
