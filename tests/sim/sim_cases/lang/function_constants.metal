// Function constants (MSL specification §5.8.1) as specialising kernels use them: code paths chosen by bool
// constants, sizes and scales from integer/float constants, is_function_constant_defined for optional ones, a
// program-scope constant derived from them, and an optional buffer that exists only when a constant is true.
#include <metal_stdlib>
using namespace metal;

constant bool has_bias [[function_constant(0)]];
constant int repeat_count [[function_constant(1)]];
constant float scale [[function_constant(2)]];
constant half offset_h [[function_constant(3)]];
constant ushort2 window [[function_constant(10)]];
constant bool apply_window = is_function_constant_defined(window);  // derived from a constant
constant int twice_repeat = repeat_count * 2;

// y[i] = scale * x[i] * repeat_count (+ bias[i] when has_bias) (+ offset_h when defined); with a window, elements
// outside [window.x, window.y) are 0. twice_repeat goes to y's last element as a check of the derived constant.
kernel void fc_scale(device const float* x [[buffer(0)]],
                     device float* y [[buffer(1)]],
                     device const float* bias [[buffer(2), function_constant(has_bias)]],
                     uint i [[thread_position_in_grid]],
                     uint n [[threads_per_grid]]) {
    float acc = 0.0f;
    for (int r = 0; r < repeat_count; r++) {
        acc += scale * x[i];
    }
    if (has_bias) {
        acc += bias[i];
    }
    if (is_function_constant_defined(offset_h)) {
        acc += float(offset_h);
    }
    if (apply_window && (i < window.x || i >= window.y)) {
        acc = 0.0f;
    }
    y[i] = (i == n - 1) ? float(twice_repeat) : acc;
}

// A kernel that reads a constant without testing it: the launch must give it a value.
kernel void fc_required(device int* y [[buffer(0)]], uint i [[thread_position_in_grid]]) {
    y[i] = repeat_count + int(i);
}

// A local variable or parameter may shadow a function constant (MLX's sdpa_vector kernels do): inside its scope the
// name means the local, outside it the constant. y = repeat_count * 10001 + 100 + 1000 + 7.
inline int plus_seven(int repeat_count) { return repeat_count + 7; }
kernel void fc_shadow(device int* y [[buffer(0)]], uint i [[thread_position_in_grid]]) {
    int acc = repeat_count;
    {
        const int repeat_count = 100;
        acc += repeat_count;
    }
    for (int repeat_count = 0; repeat_count < 1; repeat_count++) {
        acc += 1000;
    }
    y[i] = plus_seven(acc) + repeat_count * 10000;
}
