// C++ constructs of MLX's and llama.cpp's kernels that the simulator's C++ needs the translator's help with:
// overloads on the address space of `this` and of parameters, file-scope overloads of metal's functions, `constant`
// pointers to program-scope tables, GNU range designators, conditionals mixing half with other types, a kernel
// parameter named like a function constant, constexpr half arithmetic, `reinterpret_cast` to a reference, and more.
// Checked exactly in tests/sim/test_sim_real_world_lang.py. Not in lang/: the strict check (`sim check`, clang
// address spaces) cannot call a member function on an object in device or threadgroup memory, which this file does
// on purpose (C++ has no address space of `this`).
#include <metal_stdlib>
using namespace metal;

#if !defined(__METAL__)
#error "__METAL__ is predefined, as by Apple's compiler"
#endif
#define UNROLL_MIN(a, b) ((a) < (b) ? (a) : (b))

// One body per address space of `this` (MLX's complex_t), identical once address spaces are erased.
struct pair_t {
    float a, b;
    pair_t() thread : a(0), b(0) {}
    pair_t() threadgroup : a(0), b(0) {}
    pair_t(float x, float y) thread : a(x), b(y) {}
    pair_t(float x, float y) device : a(x), b(y) {}
    float sum() const thread { return a + b; }
    float sum() const device { return a + b; }
    float sum() const threadgroup { return a + b; }
    float sum() const constant { return a + b; }
    operator float2() const thread { return float2(a, b); }
    operator float2() const device { return float2(a, b); }
};
// Overloads on the address space of a parameter (MLX's operator+= on complex_t).
inline void add_to(thread pair_t &p, float x) { p.a += x; }
inline void add_to(device pair_t &p, float x) { p.a += x; }
// Class template specializations on the pointee's address space (MLX's steel pointer_element).
template <typename T> struct elem_of {};
template <typename T> struct elem_of<thread T *> { using type = remove_cv_t<T>; };
template <typename T> struct elem_of<device T *> { using type = remove_cv_t<T>; };
template <typename T> struct elem_of<constant T *> { using type = remove_cv_t<T>; };

// A file-scope overload of a metal function: metal's own overloads stay visible (MLX's utils.h).
inline bool simd_shuffle_down(bool data, ushort delta) { return simd_shuffle_down(uint(data), delta) != 0; }

// A program-scope table read through a `constant` pointer parameter (llama.cpp's kvalues_iq4nl_f).
constexpr constant static float table[4] = {0.5f, -1.0f, 2.0f, 8.0f};
static inline float pick(constant float *t, int i) { return t[i]; }

// Constant evaluation of half arithmetic (MLX static_asserts a product of complex halves).
static_assert(half(1.5f) * half(2.0f) - half(1.0f) == half(2.0f), "constexpr half");
constexpr constant half neg_inf_h = -numeric_limits<half>::infinity();

constant int blocks [[function_constant(0)]];

// out[0..]: see the test. `blocks` here is the kernel's buffer, not the function constant of that name.
kernel void constructs(device float *out [[buffer(0)]], device pair_t *dp [[buffer(1)]],
                       const constant int &blocks [[buffer(2)]], device const half *hin [[buffer(3)]],
                       uint lane [[thread_index_in_simdgroup]]) {
    pair_t p(1.0f, 2.0f);
    add_to(p, 3.0f);
    threadgroup pair_t tp;
    if (lane == 0) tp = p;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float2 f2 = p;
    bool sh = simd_shuffle_down(lane % 2 == 1, 1);
    float arr[8] = {[0 ... 3] = 1.5f, [6 ... 7] = -2.0f};
    half h = hin[lane];
    float c1 = lane % 2 == 0 ? h : 0;           // half with int: half
    float c2 = lane < 16 ? h : float(h) / 3.0f; // half with float: float
    half4 c3 = lane < 4 ? half4(h) : 0.25f;     // half4 with float: half4
    half4 z = 0;                                // a scalar converts to a vector
    typename elem_of<device const float *>::type e = 7.0f;
    remove_addrspace_t<float> r = 0.5f;
    simdgroup_float8x8 m = make_filled_simdgroup_matrix<float, 8>(2.0f);
    reinterpret_cast<thread float2 &>(m.thread_elements()) = float2(f2.x, f2.y);  // writes the matrix itself
    float acc = 0.0f;
#pragma unroll(UNROLL_MIN(4, 8))
    for (int i = 0; i < 8; i++) acc += arr[i];
    if (lane == 0) {
        add_to(dp[0], 10.0f);
        out[0] = p.sum() * 1000.0f + dp[0].sum() + tp.sum() * 100.0f;
        out[1] = f2.x * 10 + f2.y;
        out[2] = pick(table, 2) + pick(table, 3);
        out[3] = acc;
        out[4] = blocks;
        out[5] = e + r;
        out[6] = m.thread_elements()[0] * 10 + m.thread_elements()[1];
        out[7] = isinf(neg_inf_h) && neg_inf_h < 0 ? 1.0f : 0.0f;
        out[8] = float(z.x) + float(z.w);
    }
    out[16 + lane] = sh ? 1.0f : 0.0f;
    out[48 + lane] = c1;
    out[80 + lane] = c2;
    out[112 + lane] = float(c3.x) + float(c3.w);
}
