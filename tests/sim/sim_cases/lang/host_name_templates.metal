// Templates instantiated under [[host_name("...")]] in the three forms kernels use: the full parameter list,
// decltype(f<...>), and a typedef of the kernel's type (llama.cpp); a kernel attribute with a thread limit
// ([[max_total_threads_per_threadgroup(N)]]) on a template, where N depends on the template's parameters.
#include <metal_stdlib>
using namespace metal;

template <typename T, int N>
[[kernel, max_total_threads_per_threadgroup(N * 32)]] void axpy(device const T* x [[buffer(0)]],
                                                                 device T* y [[buffer(1)]],
                                                                 constant float& a [[buffer(2)]],
                                                                 uint i [[thread_position_in_grid]]) {
    y[i] = T(a * float(x[i]) + float(y[i]) + float(N));
}

template [[host_name("axpy_f32_n1")]] [[kernel]] void axpy<float, 1>(device const float* x [[buffer(0)]],
    device float* y [[buffer(1)]], constant float& a [[buffer(2)]], uint i [[thread_position_in_grid]]);
template [[host_name("axpy_f16_n2")]] [[kernel]] decltype(axpy<half, 2>) axpy<half, 2>;
typedef decltype(axpy<float, 4>) axpy_f32_t;
template [[host_name("axpy_f32_n4")]] kernel axpy_f32_t axpy<float, 4>;

// A plain kernel with a limit of 64 threads.
[[kernel, max_total_threads_per_threadgroup(64)]] void limited(device uint* y [[buffer(0)]],
                                                               uint2 i [[thread_position_in_grid]],
                                                               uint2 n [[threads_per_grid]]) {
    y[i.y * n.x + i.x] = i.x;  // one element per thread of the 2-D grid
}
