// fasim_fast_math.h - the simulator's model of Metal's fast math (on with FLASH_ATTN_CY_SIM_FAST_MATH=1 or
// `python -m flash_attn_cy.sim run --fast-math`; off by default).
//
// Metal compiles kernels with fast math unless told otherwise, so what ships to a Mac runs the fast forms. The MSL
// specification (Metal Shading Language Specification, version 4, section 8 "Numerical Compliance", Table 8.2
// "Accuracy of single-precision floating-point operations and functions" with fast math enabled, and section 8.1)
// gives these bounds, which fm:: below applies to the exact result:
//   exp, exp2        <= 3 + floor(|2x|) ulp                exp10   computed as exp2(x * log2(10))
//   log              <= 2^-21 absolute on [0.5, 2], else <= 3 ulp; undefined for x <= 0
//   log2             <= 2^-22 absolute on [0.5, 2], else <= 2 ulp; undefined for x <= 0   (log10: as log)
//   pow, powr        computed as exp2(y * log2(x))         fmod    undefined
//   x / y (divide)   <= 2.5 ulp, only for |y| in [2^-126, 2^126]
//   sin, cos         <= 2^-13 absolute on [-pi, pi], "larger otherwise"          tan   computed as sin * (1 / cos)
//   tanh             computed as (t - 1) / (t + 1) with t = exp(2x)   (NaN for x above ~44.4: t overflows)
//   sinh, cosh       built from exp                        rsqrt   <= 2 ulp     sqrt   x * rsqrt(x), special cases exact
//   atan, asin, acos <= 5 ulp (asin, acos on [-1, 1])
// Section 8.1: with fast math, NaN and infinity as inputs or outputs are undefined, and denormals may be flushed to
// zero. So every fm:: function flushes denormal arguments and results to zero and reports a `fast-math-hazard` fault
// (kernel name, thread and the calling source line) when an argument or its result is not finite, when an argument
// is outside the range where the bound holds (log of x <= 0, sin/cos outside [-pi, pi], a divisor outside
// [2^-126, 2^126], fmod), instead of returning a value a GPU would not promise. A kernel that passes in this mode
// does not depend on any of that.
//
// The error is applied at its bound, deterministically: the result moves by the full number of ulps (or the absolute
// bound) up or down, the direction taken from a hash of the argument's bits, so a kernel's tolerances are tested
// against the worst error the specification allows, not against IEEE results.
//
// Limits of the model: only calls of these functions are modelled. The float operators (+ - * /) stay IEEE: a
// kernel's `a / b` is not checked against the divisor range (use `divide` or check by review), and denormals coming
// out of plain arithmetic are not flushed. half functions are precise in both modes (Table 8.3 has no fast variant).
// The model is an upper bound on error, not Apple's implementation: a GPU's fast exp2 is usually far more accurate.
#pragma once

#include <stdint.h>

namespace fasim {

// 1 while the fast-math model is on: set from FLASH_ATTN_CY_SIM_FAST_MATH at the start of every launch
// (refresh_fast_math, csrc/sim/scheduler.cpp). Read by every transcendental call, so it costs one load when off.
extern int g_fast_math;
void refresh_fast_math();

// Reports `fn(x)` as a fast-math-hazard fault of the calling thread and abandons its threadgroup.
[[noreturn]] void fast_math_hazard(const char *file, unsigned line, const char *fn, float x, const char *why);

namespace fm {

inline uint32_t bits_of(float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    return u;
}
inline float float_of(uint32_t u) {
    float x;
    __builtin_memcpy(&x, &u, 4);
    return x;
}
inline bool finite(float x) { return (bits_of(x) & 0x7f800000u) != 0x7f800000u; }

// Denormals flushed to zero (sign kept), as section 8.1 allows.
inline float ftz(float x) { return (bits_of(x) & 0x7f800000u) == 0 ? float_of(bits_of(x) & 0x80000000u) : x; }

// Direction of the modelled error for argument x: +1 or -1, a fixed function of x's bits.
inline bool up(float x, uint32_t salt) { return ((bits_of(x) ^ salt) * 0x9E3779B1u) & 0x80000000u; }

// r moved by n ulps (in magnitude) in the direction up(key); 0 and non-finite values are returned as they are.
inline float ulps(float r, uint32_t n, float key, uint32_t salt) {
    const uint32_t b = bits_of(r), mag = b & 0x7fffffffu;
    if (mag == 0 || mag >= 0x7f800000u) return r;
    uint32_t m = up(key, salt) ? mag + n : (mag > n ? mag - n : 0u);
    if (m > 0x7f800000u) m = 0x7f800000u;  // overflow to infinity (then reported)
    return float_of((b & 0x80000000u) | m);
}

// r moved by an absolute amount e in the direction up(key).
inline float absolute(float r, float e, float key, uint32_t salt) { return up(key, salt) ? r + e : r - e; }

inline float checked(float r, const char *fn, float x, const char *file, unsigned line) {
    r = ftz(r);
    if (!finite(r)) fast_math_hazard(file, line, fn, x, "the result is not finite");
    return r;
}

inline float arg(float x, const char *fn, const char *file, unsigned line) {
    if (!finite(x)) fast_math_hazard(file, line, fn, x, "the argument is not finite");
    return ftz(x);
}

constexpr float kPi = 3.14159265358979323846f;

inline float exp2(float x, const char *file, unsigned line) {
    x = arg(x, "exp2", file, line);
    const float ax = x < 0.0f ? -x : x;
    const uint32_t n = 3u + (ax < 1.0e9f ? uint32_t(2.0f * ax) : 2000000000u);
    return checked(ulps(__builtin_exp2f(x), n, x, 1u), "exp2", x, file, line);
}
inline float exp(float x, const char *file, unsigned line) {
    x = arg(x, "exp", file, line);
    const float ax = x < 0.0f ? -x : x;
    const uint32_t n = 3u + (ax < 1.0e9f ? uint32_t(2.0f * ax) : 2000000000u);
    return checked(ulps(__builtin_expf(x), n, x, 2u), "exp", x, file, line);
}
inline float exp10(float x, const char *file, unsigned line) {
    return fm::exp2(arg(x, "exp10", file, line) * 3.32192809488736234787f, file, line);
}
inline float log(float x, const char *file, unsigned line) {
    x = arg(x, "log", file, line);
    if (!(x > 0.0f)) fast_math_hazard(file, line, "log", x, "log is undefined for x <= 0 under fast math");
    const float r = __builtin_logf(x);
    return checked(x >= 0.5f && x <= 2.0f ? absolute(r, 0x1p-21f, x, 3u) : ulps(r, 3u, x, 3u), "log", x, file, line);
}
inline float log2(float x, const char *file, unsigned line) {
    x = arg(x, "log2", file, line);
    if (!(x > 0.0f)) fast_math_hazard(file, line, "log2", x, "log2 is undefined for x <= 0 under fast math");
    const float r = __builtin_log2f(x);
    return checked(x >= 0.5f && x <= 2.0f ? absolute(r, 0x1p-22f, x, 4u) : ulps(r, 2u, x, 4u), "log2", x, file, line);
}
inline float log10(float x, const char *file, unsigned line) {
    x = arg(x, "log10", file, line);
    if (!(x > 0.0f)) fast_math_hazard(file, line, "log10", x, "log10 is undefined for x <= 0 under fast math");
    return checked(ulps(__builtin_log10f(x), 3u, x, 5u), "log10", x, file, line);
}
inline float rsqrt(float x, const char *file, unsigned line) {
    x = arg(x, "rsqrt", file, line);
    if (!(x > 0.0f)) fast_math_hazard(file, line, "rsqrt", x, "rsqrt of x <= 0 is not finite");
    return checked(ulps(1.0f / __builtin_sqrtf(x), 2u, x, 6u), "rsqrt", x, file, line);
}
inline float sqrt(float x, const char *file, unsigned line) {
    x = arg(x, "sqrt", file, line);
    if (x == 0.0f) return x;  // "special cases handled correctly"
    if (x < 0.0f) fast_math_hazard(file, line, "sqrt", x, "sqrt of a negative number is NaN");
    return checked(x * fm::rsqrt(x, file, line), "sqrt", x, file, line);
}
inline float sin(float x, const char *file, unsigned line) {
    x = arg(x, "sin", file, line);
    if (x < -kPi || x > kPi)
        fast_math_hazard(file, line, "sin", x, "fast sin is only bounded on [-pi, pi] (reduce the argument first)");
    return checked(absolute(__builtin_sinf(x), 0x1p-13f, x, 7u), "sin", x, file, line);
}
inline float cos(float x, const char *file, unsigned line) {
    x = arg(x, "cos", file, line);
    if (x < -kPi || x > kPi)
        fast_math_hazard(file, line, "cos", x, "fast cos is only bounded on [-pi, pi] (reduce the argument first)");
    return checked(absolute(__builtin_cosf(x), 0x1p-13f, x, 8u), "cos", x, file, line);
}
inline float divide(float x, float y, const char *file, unsigned line) {
    x = arg(x, "divide", file, line);
    const float ay = y < 0.0f ? -y : y;  // before flushing: a denormal divisor is itself out of range
    if (!(ay >= 0x1p-126f && ay <= 0x1p126f))
        fast_math_hazard(file, line, "divide", y, "fast division needs |divisor| in [2^-126, 2^126]");
    return checked(ulps(x / y, 2u, y, 9u), "divide", y, file, line);
}
inline float tan(float x, const char *file, unsigned line) {
    const float c = fm::cos(x, file, line);
    return checked(fm::sin(x, file, line) * fm::divide(1.0f, c, file, line), "tan", x, file, line);
}
// The form Table 8.2 names; NaN (reported) once exp(2x) overflows, i.e. for x above about 44.4.
inline float tanh(float x, const char *file, unsigned line) {
    x = arg(x, "tanh", file, line);
    const float t = ulps(__builtin_expf(2.0f * x), 3u + uint32_t(x < 0.0f ? -4.0f * x : 4.0f * x), x, 10u);
    const float r = (t - 1.0f) / (t + 1.0f);
    if (!finite(r) || r != r)
        fast_math_hazard(file, line, "tanh", x,
                         "fast tanh is (t-1)/(t+1) with t = exp(2x), NaN once t overflows (use precise::tanh)");
    return ftz(r);
}
inline float sinh(float x, const char *file, unsigned line) {
    const float e = fm::exp(x, file, line);
    return checked(0.5f * (e - fm::divide(1.0f, e, file, line)), "sinh", x, file, line);
}
inline float cosh(float x, const char *file, unsigned line) {
    const float e = fm::exp(x, file, line);
    return checked(0.5f * (e + fm::divide(1.0f, e, file, line)), "cosh", x, file, line);
}
inline float asin(float x, const char *file, unsigned line) {
    x = arg(x, "asin", file, line);
    return checked(ulps(__builtin_asinf(x), 5u, x, 11u), "asin", x, file, line);
}
inline float acos(float x, const char *file, unsigned line) {
    x = arg(x, "acos", file, line);
    return checked(ulps(__builtin_acosf(x), 5u, x, 12u), "acos", x, file, line);
}
inline float atan(float x, const char *file, unsigned line) {
    x = arg(x, "atan", file, line);
    return checked(ulps(__builtin_atanf(x), 5u, x, 13u), "atan", x, file, line);
}
inline float powr(float x, float y, const char *file, unsigned line) {
    y = arg(y, "powr", file, line);
    return fm::exp2(y * fm::log2(x, file, line), file, line);
}
inline float pow(float x, float y, const char *file, unsigned line) { return fm::powr(x, y, file, line); }
[[noreturn]] inline float fmod(float x, float, const char *file, unsigned line) {
    fast_math_hazard(file, line, "fmod", x, "fmod is undefined under fast math (Table 8.2)");
}

}  // namespace fm
}  // namespace fasim
