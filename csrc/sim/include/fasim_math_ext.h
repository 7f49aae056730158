// fasim_math_ext.h - MSL math functions beyond the common set of fasim_math.h: the inverse hyperbolic functions,
// sinpi/cospi/tanpi, the three-argument fmax3/fmin3/fmedian3 (and max3/min3/median3 for every scalar type),
// nextafter, ldexp, frexp, modf and copysign (MSL specification 3.1, §6.5 "Math functions"). Real kernels call them
// directly or through Apple's builtins (fasim_builtins.h; MLX's bf16_math.h instantiates all of them for bfloat).
//
// They are computed exactly (IEEE single precision, rounded once) in both math modes: the fast-math model
// (fasim_fast_math.h) covers the functions attention kernels spend their time in, not these.
#pragma once

#include "fasim_math.h"

namespace metal {

// The precise form (fasim_math.h's FASIM_MATH_PRECISE1) is also the metal:: and fast:: one.
#define FASIM_MATH_X1(NAME, EXPR)                                                                            \
    FASIM_MATH_PRECISE1(NAME, EXPR)                                                                          \
    using precise::NAME;                                                                                     \
    namespace fast { using precise::NAME; }
// MSL: sinpi(x) = sin(pi x) and so on; computed with the argument reduced first so that integers give exact zeros.
FASIM_MATH_X1(acosh, __builtin_acoshf(x))
FASIM_MATH_X1(asinh, __builtin_asinhf(x))
FASIM_MATH_X1(atanh, __builtin_atanhf(x))
FASIM_MATH_X1(sinpi, (float)__builtin_sin(3.14159265358979323846 * __builtin_remainder((double)x, 2.0)))
FASIM_MATH_X1(cospi, (float)__builtin_cos(3.14159265358979323846 * __builtin_remainder((double)x, 2.0)))
FASIM_MATH_X1(tanpi, (float)__builtin_tan(3.14159265358979323846 * __builtin_remainder((double)x, 1.0)))
#undef FASIM_MATH_X1

// fmax3/fmin3/fmedian3: NaN-ignoring like fmax/fmin (MSL: "If one argument is a NaN, the result is the other").
inline float fmax3(float x, float y, float z) { return fmax(fmax(x, y), z); }
inline float fmin3(float x, float y, float z) { return fmin(fmin(x, y), z); }
inline float fmedian3(float x, float y, float z) { return fmax(fmin(x, y), fmin(fmax(x, y), z)); }
inline half fmax3(half x, half y, half z) { return half(fmax3((float)x, (float)y, (float)z)); }
inline half fmin3(half x, half y, half z) { return half(fmin3((float)x, (float)y, (float)z)); }
inline half fmedian3(half x, half y, half z) { return half(fmedian3((float)x, (float)y, (float)z)); }
template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> max3(T x, T y, T z) { return max(max(x, y), z); }
template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> min3(T x, T y, T z) { return min(min(x, y), z); }
template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> median3(T x, T y, T z) {
    return max(min(x, y), min(max(x, y), z));
}
#define FASIM_VEC3ARG(NAME)                                                                                  \
    template <class T, int N> inline vec<T, N> NAME(const vec<T, N> &a, const vec<T, N> &b, const vec<T, N> &c) { \
        vec<T, N> r;                                                                                         \
        for (int i = 0; i < N; i++) r[i] = NAME(a[i], b[i], c[i]);                                           \
        return r;                                                                                            \
    }
FASIM_VEC3ARG(fmax3) FASIM_VEC3ARG(fmin3) FASIM_VEC3ARG(fmedian3)
FASIM_VEC3ARG(max3) FASIM_VEC3ARG(min3) FASIM_VEC3ARG(median3)
#undef FASIM_VEC3ARG

// fmax/fmin of a scalar and a vector: the scalar is broadcast (Apple's header converts it; llama.cpp writes
// fmax(0, x4)).
template <class S, class T, int N, class = std::enable_if_t<fasim::is_scalar_v<S>>>
inline vec<T, N> fmax(S s, const vec<T, N> &v) { return fmax(vec<T, N>(T(s)), v); }
template <class S, class T, int N, class = std::enable_if_t<fasim::is_scalar_v<S>>>
inline vec<T, N> fmax(const vec<T, N> &v, S s) { return fmax(v, vec<T, N>(T(s))); }
template <class S, class T, int N, class = std::enable_if_t<fasim::is_scalar_v<S>>>
inline vec<T, N> fmin(S s, const vec<T, N> &v) { return fmin(vec<T, N>(T(s)), v); }
template <class S, class T, int N, class = std::enable_if_t<fasim::is_scalar_v<S>>>
inline vec<T, N> fmin(const vec<T, N> &v, S s) { return fmin(v, vec<T, N>(T(s))); }

inline float nextafter(float x, float y) { return __builtin_nextafterf(x, y); }
inline float copysign(float x, float y) { return __builtin_copysignf(x, y); }
inline float ldexp(float x, int k) { return __builtin_ldexpf(x, k); }
inline half ldexp(half x, int k) { return half(__builtin_ldexpf((float)x, k)); }
// MSL: frexp(x, thread int &exponent) and modf(x, thread T &integral_part).
inline float frexp(float x, int &e) { return __builtin_frexpf(x, &e); }
inline half frexp(half x, int &e) { return half(__builtin_frexpf((float)x, &e)); }
inline float modf(float x, float &ip) { return __builtin_modff(x, &ip); }

// Members of fast:: and precise:: by using-declarations (as fasim_math.h does for the common set), so that a kernel
// adding overloads there (MLX adds bfloat ones) extends them instead of hiding them; abs, fma, min and max too.
#define FASIM_MATH_EXT_USING                                                                                 \
    using ::metal::fmax3; using ::metal::fmin3; using ::metal::fmedian3; using ::metal::max3;                \
    using ::metal::min3; using ::metal::median3; using ::metal::nextafter; using ::metal::copysign;          \
    using ::metal::ldexp; using ::metal::frexp; using ::metal::modf; using ::metal::fma; using ::metal::abs;  \
    using ::metal::max; using ::metal::min;
namespace fast { FASIM_MATH_EXT_USING }
namespace precise { FASIM_MATH_EXT_USING }
#undef FASIM_MATH_EXT_USING

}  // namespace metal
