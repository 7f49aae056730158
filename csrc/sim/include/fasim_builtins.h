// fasim_builtins.h - the compiler builtins behind Apple's <metal_stdlib> (`__metal_exp(x, __METAL_FAST_MATH__)`,
// `__metal_simd_shuffle(x, lane)`, `__metal_get_simdgroup_size(ushort())`, ...) for kernels that call them directly
// instead of the documented functions: MLX's bf16_math.h defines its bfloat math and SIMD overloads with them, and
// its NAX tiles read the lane with __metal_get_thread_index_in_simdgroup.
//
// Each builtin is the documented MSL function of the same name (fasim_math.h, fasim_math_ext.h, fasim_simd.h,
// fasim_simd_ext.h). The math builtins take a trailing mode: __METAL_FAST_MATH__ selects metal::fast:: (which follows
// the simulator's math mode), __METAL_PRECISE_MATH__ metal::precise::, and __METAL_MAYBE_FAST_MATH__ - the mode the
// file was compiled with, fast unless Metal's compiler was told otherwise - the default metal:: form, which is
// metal::fast:: here as in Metal. Only names listed here exist; any other __metal_ name fails to compile.
#pragma once

#include "fasim_math_ext.h"
#include "fasim_simd_ext.h"
#include "fasim_math_names.h"

#define __METAL_FAST_MATH__ (::fasim::kBuiltinFast)
#define __METAL_PRECISE_MATH__ (::fasim::kBuiltinPrecise)
#define __METAL_MAYBE_FAST_MATH__ (::fasim::kBuiltinFast)

namespace fasim {
enum BuiltinMathMode { kBuiltinPrecise = 0, kBuiltinFast = 1 };
}  // namespace fasim

// Transcendental functions with a precise form of their own: the mode picks metal::NAME or metal::precise::NAME.
#define FASIM_BUILTIN_T1(NAME)                                                                               \
    template <class T> inline T __metal_##NAME(T x, ::fasim::BuiltinMathMode m) {                            \
        return m == ::fasim::kBuiltinFast ? T(::metal::NAME(x)) : T(::metal::precise::NAME(x));             \
    }
#define FASIM_BUILTIN_T2(NAME)                                                                               \
    template <class T> inline T __metal_##NAME(T x, T y, ::fasim::BuiltinMathMode m) {                       \
        return m == ::fasim::kBuiltinFast ? T(::metal::NAME(x, y)) : T(::metal::precise::NAME(x, y));       \
    }
// Functions that are the same in every mode.
#define FASIM_BUILTIN_E1(NAME)                                                                               \
    template <class T> inline T __metal_##NAME(T x, ::fasim::BuiltinMathMode) { return T(::metal::NAME(x)); }
#define FASIM_BUILTIN_E2(NAME)                                                                               \
    template <class T> inline T __metal_##NAME(T x, T y, ::fasim::BuiltinMathMode) { return T(::metal::NAME(x, y)); }
#define FASIM_BUILTIN_E3(NAME)                                                                               \
    template <class T> inline T __metal_##NAME(T x, T y, T z, ::fasim::BuiltinMathMode) {                   \
        return T(::metal::NAME(x, y, z));                                                                    \
    }

// The name lists are fasim_math_names.h's (the strict check's declarations use the same ones).
FASIM_MATH_PRECISE1_NAMES(FASIM_BUILTIN_T1)
FASIM_MATH_EXT1_NAMES(FASIM_BUILTIN_T1)  // one form in every mode: metal:: and precise:: are the same function
FASIM_MATH_PRECISE2_NAMES(FASIM_BUILTIN_T2)
FASIM_MATH_EXACT1_NAMES(FASIM_BUILTIN_E1)
FASIM_BUILTIN_E2(atan2) FASIM_BUILTIN_E2(fmax) FASIM_BUILTIN_E2(fmin)
FASIM_BUILTIN_E3(fma) FASIM_BUILTIN_E3(fmax3) FASIM_BUILTIN_E3(fmin3) FASIM_BUILTIN_E3(fmedian3)
#undef FASIM_BUILTIN_T1
#undef FASIM_BUILTIN_T2
#undef FASIM_BUILTIN_E1
#undef FASIM_BUILTIN_E2
#undef FASIM_BUILTIN_E3

// fma has no mode argument in Apple's header (a fused multiply-add is exact in every mode).
template <class T> inline T __metal_fma(T x, T y, T z) { return T(::metal::fma(x, y, z)); }
template <class T> inline T __metal_ldexp(T x, int k, ::fasim::BuiltinMathMode) { return T(::metal::ldexp(x, k)); }
template <class T> inline T __metal_frexp(T x, int *e) { return T(::metal::frexp(x, *e)); }
template <class T> inline T __metal_nextafter(T x, T y) { return T(::metal::nextafter(x, y)); }

// SIMD-group builtins: the documented functions (their source line is the builtin's caller's caller).
#define FASIM_BUILTIN_SIMD1(NAME)                                                                            \
    template <class T> inline T __metal_##NAME(T x, FASIM_SITE_PARAMS) {                                     \
        return ::metal::NAME(x, fasim_file, fasim_line);                                                     \
    }
#define FASIM_BUILTIN_SIMD2(NAME)                                                                            \
    template <class T> inline T __metal_##NAME(T x, ushort n, FASIM_SITE_PARAMS) {                           \
        return ::metal::NAME(x, n, fasim_file, fasim_line);                                                  \
    }
FASIM_BUILTIN_SIMD1(simd_sum) FASIM_BUILTIN_SIMD1(simd_product) FASIM_BUILTIN_SIMD1(simd_max)
FASIM_BUILTIN_SIMD1(simd_min)
// The bitwise reductions act on the bits of a floating-point argument (MLX's bfloat simd_xor passes a float).
#define FASIM_BUILTIN_SIMD_BITS(NAME)                                                                        \
    template <class T> inline T __metal_##NAME(T x, FASIM_SITE_PARAMS) {                                     \
        using B = std::conditional_t<sizeof(T) == 8, ulong, std::conditional_t<sizeof(T) == 4, uint, ushort>>; \
        if constexpr (::metal::is_floating_point_v<T>)                                                       \
            return ::metal::as_type<T>(::metal::NAME(::metal::as_type<B>(x), fasim_file, fasim_line));        \
        else                                                                                                 \
            return ::metal::NAME(x, fasim_file, fasim_line);                                                 \
    }
FASIM_BUILTIN_SIMD_BITS(simd_and) FASIM_BUILTIN_SIMD_BITS(simd_or) FASIM_BUILTIN_SIMD_BITS(simd_xor)
#undef FASIM_BUILTIN_SIMD_BITS
FASIM_BUILTIN_SIMD1(simd_prefix_inclusive_sum) FASIM_BUILTIN_SIMD1(simd_prefix_exclusive_sum)
FASIM_BUILTIN_SIMD1(simd_prefix_inclusive_product) FASIM_BUILTIN_SIMD1(simd_prefix_exclusive_product)
FASIM_BUILTIN_SIMD2(simd_broadcast) FASIM_BUILTIN_SIMD2(simd_shuffle) FASIM_BUILTIN_SIMD2(simd_shuffle_xor)
FASIM_BUILTIN_SIMD2(simd_shuffle_up) FASIM_BUILTIN_SIMD2(simd_shuffle_down)
FASIM_BUILTIN_SIMD2(simd_shuffle_rotate_up) FASIM_BUILTIN_SIMD2(simd_shuffle_rotate_down)
#undef FASIM_BUILTIN_SIMD1
#undef FASIM_BUILTIN_SIMD2

template <class T>
inline T __metal_simd_shuffle_and_fill_up(T data, T fill, ushort delta, ushort modulo, FASIM_SITE_PARAMS) {
    return ::metal::simd_shuffle_and_fill_up(data, fill, delta, modulo, fasim_file, fasim_line);
}
template <class T>
inline T __metal_simd_shuffle_and_fill_down(T data, T fill, ushort delta, ushort modulo, FASIM_SITE_PARAMS) {
    return ::metal::simd_shuffle_and_fill_down(data, fill, delta, modulo, fasim_file, fasim_line);
}
// The argument only selects the result type (Apple's header passes `ushort()` or `uint()`).
template <class T> inline T __metal_get_simdgroup_size(T) { return T(::fasim::kSimdWidth); }
template <class T> inline T __metal_get_thread_index_in_simdgroup(T) { return T(::fasim::ctx().lane); }

namespace fasim {
// `T a[N] = { [lo ... hi] = v };` (a GNU range designator, which clang and so Metal accept and g++ does not in C++;
// llama.cpp zero-fills accumulators with it): the translator writes `T a[N] = {}; fill_range(a, lo, hi, v);`.
template <class A, class V> inline void fill_range(A &arr, long lo, long hi, const V &v) {
    for (long i = lo; i <= hi; i++) arr[i] = std::remove_reference_t<decltype(arr[i])>(v);
}
}  // namespace fasim

namespace fasim {
// The conditional operator with MSL's operand conversions (translate/conditionals.py writes `c ? a : b` in function
// bodies as cond_pick(c, [&] { return a; }, [&] { return b; })): the common type of two arithmetic operands where one
// is half or bfloat is that of MSL's arithmetic (fasim::lowp_result: half with an integer is half, with float float);
// a vector with a scalar is the vector; anything else is what C++'s ?: gives.
template <class A, class B, class = void> struct cond_common { using type = std::common_type_t<A, B>; };
template <class A, class B>
struct cond_common<A, B, std::enable_if_t<(is_lowp<A>::value || is_lowp<B>::value) && is_scalar_v<A> &&
                                          is_scalar_v<B>>> {
    using type = typename lowp_result<A, B>::type;
};
template <class T, int N, class S>
struct cond_common<metal::vec<T, N>, S, std::enable_if_t<is_scalar_v<S>>> { using type = metal::vec<T, N>; };
template <class S, class T, int N>
struct cond_common<S, metal::vec<T, N>, std::enable_if_t<is_scalar_v<S>>> { using type = metal::vec<T, N>; };

template <class C, class F1, class F2> constexpr decltype(auto) cond_pick(C &&c, F1 &&f1, F2 &&f2) {
    using R1 = decltype(f1());
    using R2 = decltype(f2());
    if constexpr (std::is_same<R1, R2>::value) {
        return static_cast<bool>(c) ? f1() : f2();  // one type (a reference if both are lvalues): as written
    } else {
        using T = typename cond_common<std::decay_t<R1>, std::decay_t<R2>>::type;
        return static_cast<bool>(c) ? T(f1()) : T(f2());
    }
}
}  // namespace fasim
