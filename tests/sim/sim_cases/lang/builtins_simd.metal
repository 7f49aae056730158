// Apple's compiler builtins (`__metal_*`, as MLX's bf16_math.h calls them), the math functions beyond the common
// set, and the SIMD-group permutes simd_shuffle_and_fill_up/down, simd_shuffle_rotate_up/down and the prefix
// products (MSL §6.5, §6.9.2). Checked exactly in tests/sim/test_sim_real_world_lang.py.
#include <metal_stdlib>
using namespace metal;

// out[k * 32 + lane] for each permute k.
kernel void simd_permutes(device const float *in [[buffer(0)]], device float *out [[buffer(1)]],
                          uint lane [[thread_index_in_simdgroup]]) {
    float x = in[lane], f = in[32 + lane];
    out[0 * 32 + lane] = simd_shuffle_and_fill_up(x, f, 3);
    out[1 * 32 + lane] = simd_shuffle_and_fill_down(x, f, 5);
    out[2 * 32 + lane] = simd_shuffle_and_fill_up(x, f, 2, 8);
    out[3 * 32 + lane] = simd_shuffle_and_fill_down(x, f, 3, 16);
    out[4 * 32 + lane] = simd_shuffle_rotate_up(x, 7);
    out[5 * 32 + lane] = simd_shuffle_rotate_down(x, 36);
    out[6 * 32 + lane] = simd_prefix_inclusive_product(lane < 8 ? x : 1.0f);
    out[7 * 32 + lane] = simd_prefix_exclusive_product(lane < 8 ? x : 1.0f);
    // the builtins behind them
    out[8 * 32 + lane] = __metal_simd_shuffle_and_fill_up(x, f, (ushort)1, (ushort)4);
    out[9 * 32 + lane] = __metal_simd_sum(x);
    out[10 * 32 + lane] = __metal_simd_shuffle_xor(x, (ushort)5);
    out[11 * 32 + lane] = __metal_get_thread_index_in_simdgroup(ushort()) * 100 + __metal_get_simdgroup_size(uint());
    out[12 * 32 + lane] = as_type<float>(__metal_simd_xor(as_type<uint>(x)));
}

// out[i] for each function of in[i] (and in[i + 8], in[i + 16] as second and third arguments); 8 values each.
kernel void math_ext(device const float *in [[buffer(0)]], device float *out [[buffer(1)]],
                     device int *iout [[buffer(2)]], uint i [[thread_position_in_grid]]) {
    float a = in[i], b = in[8 + i], c = in[16 + i];
    float t = in[24 + i];  // in (-1, 1)
    out[0 * 8 + i] = acosh(1.0f + a * a);
    out[1 * 8 + i] = asinh(a);
    out[2 * 8 + i] = atanh(t);
    out[3 * 8 + i] = sinpi(a);
    out[4 * 8 + i] = cospi(a);
    out[5 * 8 + i] = tanpi(t / 4.0f);
    out[6 * 8 + i] = fmax3(a, b, c);
    out[7 * 8 + i] = fmin3(a, b, c);
    out[8 * 8 + i] = fmedian3(a, b, c);
    out[9 * 8 + i] = nextafter(a, b);
    out[10 * 8 + i] = copysign(a, b);
    out[11 * 8 + i] = ldexp(a, int(i) - 3);
    int e;
    out[12 * 8 + i] = frexp(a, e);
    iout[i] = e;
    float ip;
    out[13 * 8 + i] = modf(a, ip);
    out[14 * 8 + i] = ip;
    iout[8 + i] = max3(int(i), 5, 3) * 100 + min3(int(i), 5, 3) * 10 + median3(int(i), 5, 3);
    float4 v = fmax(0, float4(a, b, c, t));
    float4 w = fmin(float4(a, b, c, t), 0.5f);
    out[15 * 8 + i] = v.x + v.y * 10 + w.z * 100 + w.w * 1000;
    // builtins with a math mode: __METAL_PRECISE_MATH__ is exact; fma and fmedian3 the same in every mode
    out[16 * 8 + i] = __metal_exp(a, __METAL_PRECISE_MATH__);
    out[17 * 8 + i] = __metal_fabs(a, __METAL_FAST_MATH__) + __metal_fmax(a, b, __METAL_MAYBE_FAST_MATH__);
    out[18 * 8 + i] = __metal_fma(a, b, c) + __metal_fmedian3(a, b, c, __METAL_FAST_MATH__);
    out[19 * 8 + i] = __metal_pow(fabs(a), b, __METAL_PRECISE_MATH__) + __metal_ldexp(a, 2, __METAL_FAST_MATH__);
}
