// fasim_math.h - MSL math functions (metal::, metal::fast::, metal::precise::) on float, half, bfloat and vectors.
// Compiler builtins stand in for <cmath> so that nothing lands in the global namespace next to metal::abs & co.
#pragma once

#include "fasim_types.h"
#include "fasim_constants.h"
#include "fasim_fast_math.h"
#include "fasim_math_names.h"


namespace fasim {
template <class T> using not_bfloat_t = std::enable_if_t<!std::is_same<T, bfloat>::value>;
}  // namespace fasim

namespace metal {

// No math function takes bfloat: the MSL specification (3.1, §2.1 and the math functions of §6.5) declares them for
// float and half, so a bfloat argument converts to float and the result is a float, which does not convert back to
// bfloat implicitly (`bfloat y = exp(b);` fails on a Mac; MLX's bf16_math.h adds bfloat overloads of its own, which
// would collide with ours). Same for abs, fma and the vector forms.
#define FASIM_MATH1(NAME, EXPR)                                                                              \
    inline float NAME(float x) { return EXPR; }                                                              \
    inline half NAME(half x) { return half(NAME((float)x)); }                                                \
    template <class T, int N, class = fasim::not_bfloat_t<T>> inline vec<T, N> NAME(const vec<T, N> &v) {     \
        return vmap(v, [](T a) { return NAME(a); });                                                         \
    }
// Exact (or rounding-only) functions: the same in every math mode. floor, ceil, round, rint, trunc, fabs: the C
// library's float function of the same name (__builtin_floorf, ...), over fasim_math_names.h's list.
#define FASIM_MATH1_LIBM(NAME) FASIM_MATH1(NAME, __builtin_##NAME##f(x))
FASIM_MATH_EXACT1_LIBM_NAMES(FASIM_MATH1_LIBM)
#undef FASIM_MATH1_LIBM
FASIM_MATH1(fract, x - __builtin_floorf(x))
FASIM_MATH1(saturate, x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x))
FASIM_MATH1(sign, x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f))
#undef FASIM_MATH1

// Transcendental functions. precise::NAME is IEEE single precision here (Table 8.1 allows a few ulp; the simulator is
// exact). metal::NAME (and fast::NAME) is the same unless the fast-math model is on (FLASH_ATTN_CY_SIM_FAST_MATH,
// `sim run --fast-math`), then it is fasim::fm::NAME (fasim_fast_math.h), reported at the caller's source line.
// half keeps the precise form in both modes: the MSL specification's Table 8.3 (half precision) has no fast variant.
// FASIM_MATH_PRECISE1 is the precise:: half of it, kept defined: fasim_math_ext.h's functions, which have no fast
// form, are that alone (then used in metal:: and fast:: as well).
#define FASIM_MATH_PRECISE1(NAME, EXPR)                                                                      \
    namespace precise {                                                                                      \
    inline float NAME(float x) { FASIM_COUNT_FLOPS(::fasim::kFlopTranscendental, 1); return EXPR; }          \
    inline half NAME(half x) { return half(NAME((float)x)); }                                                \
    template <class T, int N, class = fasim::not_bfloat_t<T>> inline vec<T, N> NAME(const vec<T, N> &v) {     \
        return vmap(v, [](T a) { return NAME(a); });                                                         \
    }                                                                                                        \
    }
#define FASIM_MATH_T(NAME, EXPR)                                                                             \
    FASIM_MATH_PRECISE1(NAME, EXPR)                                                                          \
    inline float NAME(float x, const char *fasim_file = __builtin_FILE(), unsigned fasim_line = __builtin_LINE()) { \
        FASIM_COUNT_FLOPS(::fasim::kFlopTranscendental, 1);                                                  \
        if (__builtin_expect(::fasim::g_fast_math != 0, 0)) return ::fasim::fm::NAME(x, fasim_file, fasim_line); \
        return EXPR;                                                                                         \
    }                                                                                                        \
    inline half NAME(half x, const char * = nullptr, unsigned = 0) { return precise::NAME(x); }              \
    template <class T, int N, class = fasim::not_bfloat_t<T>>                                                \
    inline vec<T, N> NAME(const vec<T, N> &v, const char *fasim_file = __builtin_FILE(),                     \
                                                    unsigned fasim_line = __builtin_LINE()) {                \
        return vmap(v, [&](T a) { return NAME(a, fasim_file, fasim_line); });                                \
    }
// exp, exp2, log, ... atan: the C library's float function of the same name (fasim_math_names.h's list).
#define FASIM_MATH_T_LIBM(NAME) FASIM_MATH_T(NAME, __builtin_##NAME##f(x))
FASIM_MATH_PRECISE1_LIBM_NAMES(FASIM_MATH_T_LIBM)
#undef FASIM_MATH_T_LIBM
FASIM_MATH_T(exp10, __builtin_powf(10.0f, x))
FASIM_MATH_T(rsqrt, 1.0f / __builtin_sqrtf(x))
#undef FASIM_MATH_T

#define FASIM_MATH2(NAME, EXPR)                                                                              \
    inline float NAME(float x, float y) { return EXPR; }                                                     \
    inline half NAME(half x, half y) { return half(NAME((float)x, (float)y)); }                              \
    template <class T, int N, class = fasim::not_bfloat_t<T>>                                                \
    inline vec<T, N> NAME(const vec<T, N> &a, const vec<T, N> &b) {                                          \
        return vzip(a, b, [](T x, T y) { return NAME(x, y); });                                              \
    }
FASIM_MATH2(atan2, __builtin_atan2f(x, y))
FASIM_MATH2(fmin, __builtin_fminf(x, y))
FASIM_MATH2(fmax, __builtin_fmaxf(x, y))
FASIM_MATH2(step, y < x ? 0.0f : 1.0f)
#undef FASIM_MATH2

// Two-argument functions with a fast form (see FASIM_MATH_T).
#define FASIM_MATH2_T(NAME, EXPR, KIND)                                                                          \
    namespace precise {                                                                                      \
    inline float NAME(float x, float y) { FASIM_COUNT_FLOPS(KIND, 1); return EXPR; }                         \
    inline half NAME(half x, half y) { return half(NAME((float)x, (float)y)); }                              \
    }                                                                                                        \
    inline float NAME(float x, float y, const char *fasim_file = __builtin_FILE(),                           \
                      unsigned fasim_line = __builtin_LINE()) {                                              \
        FASIM_COUNT_FLOPS(KIND, 1);                                                                          \
        if (__builtin_expect(::fasim::g_fast_math != 0, 0)) return ::fasim::fm::NAME(x, y, fasim_file, fasim_line); \
        return EXPR;                                                                                         \
    }                                                                                                        \
    inline half NAME(half x, half y) { return precise::NAME(x, y); }                                         \
    template <class T, int N, class = fasim::not_bfloat_t<T>>                                                \
    inline vec<T, N> NAME(const vec<T, N> &a, const vec<T, N> &b) {                                          \
        return vzip(a, b, [](T x, T y) { return NAME(x, y); });                                              \
    }
FASIM_MATH2_T(pow, __builtin_powf(x, y), ::fasim::kFlopTranscendental)
FASIM_MATH2_T(powr, __builtin_powf(x, y), ::fasim::kFlopTranscendental)
FASIM_MATH2_T(fmod, __builtin_fmodf(x, y), ::fasim::kFlopTranscendental)
FASIM_MATH2_T(divide, x / y, ::fasim::kFlopFp32)
#undef FASIM_MATH2_T

// min/max/abs/clamp: every scalar type (integers too) and vectors; float follows fmin/fmax (NaN-ignoring).
template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> max(T a, T b) { return a < b ? b : a; }
template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> min(T a, T b) { return b < a ? b : a; }
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline float min(float a, float b) { return __builtin_fminf(a, b); }
template <class T, int N> inline vec<T, N> max(const vec<T, N> &a, const vec<T, N> &b) {
    return vzip(a, b, [](T x, T y) { return max(x, y); });
}
template <class T, int N> inline vec<T, N> min(const vec<T, N> &a, const vec<T, N> &b) {
    return vzip(a, b, [](T x, T y) { return min(x, y); });
}
template <class T, int N> inline vec<T, N> max(const vec<T, N> &a, T b) { return max(a, vec<T, N>(b)); }
template <class T, int N> inline vec<T, N> min(const vec<T, N> &a, T b) { return min(a, vec<T, N>(b)); }
template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T, int N> inline vec<T, N> clamp(const vec<T, N> &x, const vec<T, N> &lo, const vec<T, N> &hi) {
    return min(max(x, lo), hi);
}
template <class T, int N> inline vec<T, N> clamp(const vec<T, N> &x, T lo, T hi) { return min(max(x, lo), hi); }

template <class T> inline std::enable_if_t<std::is_integral<T>::value, T> abs(T x) { return x < 0 ? T(-x) : x; }
inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return half::from_bits((uint16_t)(x.bits & 0x7fffu)); }
template <class T, int N, class = fasim::not_bfloat_t<T>>
inline vec<T, N> abs(const vec<T, N> &v) { return vmap(v, [](T a) { return abs(a); }); }

inline float fma(float a, float b, float c) { FASIM_COUNT_FLOPS(::fasim::kFlopFp32, 2); return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) { FASIM_COUNT_FLOPS(::fasim::kFlopFp16, 2); return half(__builtin_fmaf(a, b, c)); }
template <class T, int N, class = fasim::not_bfloat_t<T>>
inline vec<T, N> fma(const vec<T, N> &a, const vec<T, N> &b, const vec<T, N> &c) {
    vec<T, N> r;
    for (int i = 0; i < N; i++) r[i] = fma(a[i], b[i], c[i]);
    return r;
}
inline float mix(float x, float y, float a) { FASIM_COUNT_FLOPS(::fasim::kFlopFp32, 3); return x + (y - x) * a; }
inline half mix(half x, half y, half a) {
    FASIM_COUNT_FLOPS(::fasim::kFlopFp16, 3);
    return half((float)x + ((float)y - (float)x) * (float)a);
}
template <class T, int N> inline vec<T, N> mix(const vec<T, N> &x, const vec<T, N> &y, const vec<T, N> &a) {
    vec<T, N> r;
    for (int i = 0; i < N; i++) r[i] = mix(x[i], y[i], a[i]);
    return r;
}
template <class T, int N> inline vec<T, N> mix(const vec<T, N> &x, const vec<T, N> &y, T a) { return mix(x, y, vec<T, N>(a)); }

inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
inline bool signbit(float x) { return __builtin_signbit(x); }
inline bool isnan(half x) { return isnan((float)x); }
inline bool isinf(half x) { return isinf((float)x); }
inline bool isfinite(half x) { return isfinite((float)x); }
inline bool isnan(bfloat x) { return isnan((float)x); }
inline bool isinf(bfloat x) { return isinf((float)x); }
inline bool isfinite(bfloat x) { return isfinite((float)x); }

template <class T> inline std::enable_if_t<fasim::is_scalar_v<T>, T> select(T a, T b, bool c) { return c ? b : a; }
template <class T, int N> inline vec<T, N> select(const vec<T, N> &a, const vec<T, N> &b, const vec<bool, N> &c) {
    vec<T, N> r;
    for (int i = 0; i < N; i++) r[i] = c[i] ? b[i] : a[i];
    return r;
}
template <class T, int N> inline vec<T, N> select(const vec<T, N> &a, const vec<T, N> &b, bool c) { return c ? b : a; }

template <class T, int N> inline T dot(const vec<T, N> &a, const vec<T, N> &b) {
    FASIM_COUNT_FLOPS_OF(T, 2 * N);
    float s = 0.0f;
    for (int i = 0; i < N; i++) s += (float)a[i] * (float)b[i];
    return T(s);
}
template <int N> inline int dot(const vec<int, N> &a, const vec<int, N> &b) {
    int s = 0;
    for (int i = 0; i < N; i++) s += a[i] * b[i];
    return s;
}
template <class T, int N> inline T length(const vec<T, N> &a) { return T(sqrt((float)dot(a, a))); }
template <class T, int N> inline vec<T, N> normalize(const vec<T, N> &a) { return a * rsqrt((float)dot(a, a)); }
template <int N> inline bool all(const vec<bool, N> &v) {
    for (int i = 0; i < N; i++) if (!v[i]) return false;
    return true;
}
template <int N> inline bool any(const vec<bool, N> &v) {
    for (int i = 0; i < N; i++) if (v[i]) return true;
    return false;
}
inline bool all(bool b) { return b; }
inline bool any(bool b) { return b; }

template <class T, class U> inline T as_type(const U &u) {
    static_assert(sizeof(T) == sizeof(U), "as_type: source and destination sizes differ");
    T t;
    __builtin_memcpy(&t, &u, sizeof(T));
    return t;
}

inline uint mulhi(uint a, uint b) { return (uint)(((uint64_t)a * b) >> 32); }
inline int mulhi(int a, int b) { return (int)(((int64_t)a * b) >> 32); }
inline ulong mulhi(ulong a, ulong b) { return (ulong)(((unsigned __int128)a * b) >> 64); }
inline uint popcount(uint x) { return (uint)__builtin_popcount(x); }
inline uint ctz(uint x) { return x ? (uint)__builtin_ctz(x) : 32u; }
inline uint clz(uint x) { return x ? (uint)__builtin_clz(x) : 32u; }
inline ulong popcount(ulong x) { return (ulong)__builtin_popcountl(x); }

// fast:: is the default form (MSL compiles with fast math unless told otherwise); precise:: holds its own exact
// transcendental functions above. As in Apple's header the math functions are members of both namespaces (using-
// declarations), so that a kernel adding overloads there (MLX adds bfloat ones to metal::fast and metal::precise)
// extends them instead of hiding them; the rest of metal:: (min, max, abs, ...) is visible through the directives.
namespace fast {
using ::metal::floor; using ::metal::ceil; using ::metal::round; using ::metal::rint; using ::metal::trunc;
using ::metal::fabs; using ::metal::fract; using ::metal::saturate; using ::metal::sign; using ::metal::atan2;
using ::metal::fmin; using ::metal::fmax; using ::metal::step;
using ::metal::exp; using ::metal::exp2; using ::metal::exp10; using ::metal::log; using ::metal::log2;
using ::metal::log10; using ::metal::sqrt; using ::metal::rsqrt; using ::metal::sin; using ::metal::cos;
using ::metal::tan; using ::metal::tanh; using ::metal::sinh; using ::metal::cosh; using ::metal::asin;
using ::metal::acos; using ::metal::atan; using ::metal::pow; using ::metal::powr; using ::metal::divide;
using ::metal::fmod;
using namespace ::metal;
}  // namespace fast
namespace precise {
using ::metal::floor; using ::metal::ceil; using ::metal::round; using ::metal::rint; using ::metal::trunc;
using ::metal::fabs; using ::metal::fract; using ::metal::saturate; using ::metal::sign; using ::metal::atan2;
using ::metal::fmin; using ::metal::fmax; using ::metal::step;
using namespace ::metal;
}  // namespace precise


}  // namespace metal
