// MSL's type traits and numeric limits (<metal_type_traits>, <metal_limits>) as kernels use them (MLX's Limits<T>,
// llama.cpp's is_same<...>::value branches), and vector type names used outside `using namespace metal;`.
#include <metal_stdlib>

typedef half2 pair_t;  // global vector names, as llama.cpp's ggml-common.h uses them

using namespace metal;

template <typename T> struct Limits {
    static constexpr constant T lowest = metal::numeric_limits<T>::lowest();
};
template <typename T, typename = metal::enable_if_t<metal::is_floating_point_v<T>>>
inline float lowest_of() { return float(Limits<T>::lowest); }

kernel void traits_report(device float* y [[buffer(0)]]) {
    y[0] = lowest_of<half>();
    y[1] = float(metal::numeric_limits<bfloat>::max());
    y[2] = float(numeric_limits<half>::epsilon());
    y[3] = float(numeric_limits<bfloat>::min());
    y[4] = is_same<float4, vec<float, 4>>::value ? 1.0f : 0.0f;
    y[5] = is_floating_point_v<bfloat> && !is_integral_v<half> && is_vector_v<pair_t> && is_signed_v<half> ? 1.0f : 0.0f;
    y[6] = float(numeric_limits<half>::infinity() > float(MAXHALF));
    y[7] = float(numeric_limits<int>::max() == 2147483647) + float(conditional_t<true, int, float>(3));
}
