// fasim_types.h - MSL scalar and vector types for kernels compiled as C++ by the Metal simulator.
//
// half and bfloat keep real 16-bit storage; conversions from float round to nearest even, arithmetic happens in float
// and is rounded back after each operation (for + and * of two halves this equals native half arithmetic). Vector
// types have MSL's sizes and alignments (float3 is 16 bytes). No standard-library header that declares functions in
// the global namespace is included: kernels say `using namespace metal;` and call `abs`, `max`, ... unqualified.
#pragma once

#include <stdint.h>
#include <stddef.h>
#include <type_traits>

#include "fasim_counters.h"
#include "fasim_vec_names.h"

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;

namespace fasim {

// constexpr throughout (bit casts, conversions, operators): MSL evaluates half and bfloat arithmetic in constant
// expressions (MLX static_asserts a product of complex halves and initialises constexpr limits with -infinity).
constexpr uint32_t f32_bits(float f) { return __builtin_bit_cast(uint32_t, f); }
constexpr float bits_f32(uint32_t u) { return __builtin_bit_cast(float, u); }

// IEEE binary32 -> binary16, round to nearest even (subnormals, overflow to inf, NaN kept quiet).
constexpr uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: overflow
    if (ax < 0x38800000u) {                                      // result subnormal (or zero)
        if (ax < 0x33000000u) return (uint16_t)sign;             // < 2^-25: rounds to 0
        uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                                // 14..24 bits dropped
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((ax >> 13) - (112u << 10));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

constexpr float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0) return bits_f32(sign);
        float v = (float)m * (1.0f / 16777216.0f);  // m * 2^-24
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

constexpr uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
constexpr float bf16_to_f32(uint16_t b) { return bits_f32((uint32_t)b << 16); }

}  // namespace fasim

struct half {
    uint16_t bits;
    half() = default;
    constexpr half(float f) : bits(fasim::f32_to_f16(f)) {}
    template <class A, class = std::enable_if_t<std::is_arithmetic<A>::value>>
    constexpr half(A a) : bits(fasim::f32_to_f16((float)a)) {}
    constexpr operator float() const { return fasim::f16_to_f32(bits); }
    static constexpr half from_bits(uint16_t b) { half h{}; h.bits = b; return h; }
};

// MSL specification 3.1, §2.1 "Scalar data types" (the note on bfloat): "bfloat is an extended floating point type
// that only allows implicit conversion to a type of greater floating point rank. While bfloat can be implicitly
// converted to float, it cannot be implicitly converted to half, and neither float nor half can be implicitly
// converted to bfloat." So float/half -> bfloat is explicit here (`bfloat z = 2.0f;`, or a ternary mixing bfloat and
// float assigned to a bfloat, fail to compile as on a Mac; `bfloat(x)` and static_cast are fine), bfloat -> float is
// implicit, bfloat -> half only explicit (half(float(b)) or static_cast). Integers convert implicitly.
struct bfloat {
    uint16_t bits;
    bfloat() = default;
    constexpr explicit bfloat(float f) : bits(fasim::f32_to_bf16(f)) {}
    template <class A, std::enable_if_t<std::is_floating_point<A>::value, int> = 0>
    constexpr explicit bfloat(A a) : bits(fasim::f32_to_bf16((float)a)) {}
    template <class A, std::enable_if_t<std::is_integral<A>::value, int> = 0>
    constexpr bfloat(A a) : bits(fasim::f32_to_bf16((float)a)) {}
    constexpr explicit bfloat(half h) : bits(fasim::f32_to_bf16((float)h)) {}
    constexpr operator float() const { return fasim::bf16_to_f32(bits); }
    static constexpr bfloat from_bits(uint16_t b) { bfloat h{}; h.bits = b; return h; }
};

namespace fasim {

template <class T> struct is_lowp : std::false_type {};
template <> struct is_lowp<half> : std::true_type {};
template <> struct is_lowp<bfloat> : std::true_type {};
template <class T> constexpr bool is_scalar_v = std::is_arithmetic<T>::value || is_lowp<T>::value;

// Result type of a binary operation where at least one side is half/bfloat (MSL's usual arithmetic conversions):
// two equal 16-bit types stay 16-bit, a 16-bit type with an integer stays 16-bit, anything with float is float.
template <class A, class B, class = void> struct lowp_result { using type = float; };
template <class A> struct lowp_result<A, A, std::enable_if_t<is_lowp<A>::value>> { using type = A; };
template <class A, class B>
struct lowp_result<A, B, std::enable_if_t<is_lowp<A>::value && std::is_integral<B>::value>> { using type = A; };
template <class A, class B>
struct lowp_result<A, B, std::enable_if_t<std::is_integral<A>::value && is_lowp<B>::value>> { using type = B; };

template <class A, class B>
using lowp_op_t = std::enable_if_t<(is_lowp<A>::value || is_lowp<B>::value) && is_scalar_v<A> && is_scalar_v<B>,
                                   typename lowp_result<A, B>::type>;
template <class A, class B>
using lowp_cmp_t = std::enable_if_t<(is_lowp<A>::value || is_lowp<B>::value) && is_scalar_v<A> && is_scalar_v<B>, bool>;

}  // namespace fasim

#define FASIM_LOWP_BINOP(OP)                                                                   \
    template <class A, class B>                                                                \
    constexpr fasim::lowp_op_t<A, B> operator OP(A a, B b) {                                      \
        using R = fasim::lowp_op_t<A, B>;                                                      \
        FASIM_COUNT_FLOPS_OF(R, 1);                                                            \
        return R((float)a OP (float)b);                                                        \
    }
FASIM_LOWP_BINOP(+)
FASIM_LOWP_BINOP(-)
FASIM_LOWP_BINOP(*)
FASIM_LOWP_BINOP(/)
#undef FASIM_LOWP_BINOP

#define FASIM_LOWP_CMP(OP)                                                                     \
    template <class A, class B>                                                                \
    constexpr fasim::lowp_cmp_t<A, B> operator OP(A a, B b) { return (float)a OP (float)b; }
FASIM_LOWP_CMP(==)
FASIM_LOWP_CMP(!=)
FASIM_LOWP_CMP(<)
FASIM_LOWP_CMP(>)
FASIM_LOWP_CMP(<=)
FASIM_LOWP_CMP(>=)
#undef FASIM_LOWP_CMP

// `x op= y` is `x = x op y`: a bfloat target takes no float or half value implicitly (see struct bfloat).
namespace fasim {
template <class L, class B>
constexpr bool lowp_assignable_v = is_lowp<L>::value && is_scalar_v<B> &&
    !(std::is_same<L, bfloat>::value && (std::is_floating_point<B>::value || std::is_same<B, half>::value));
}  // namespace fasim
#define FASIM_LOWP_ASSIGN(OP)                                                                  \
    template <class L, class B, class = std::enable_if_t<fasim::lowp_assignable_v<L, B>>>    \
    constexpr L &operator OP##=(L &a, B b) { FASIM_COUNT_FLOPS_OF(L, 1); a = L((float)a OP (float)b); return a; }
FASIM_LOWP_ASSIGN(+)
FASIM_LOWP_ASSIGN(-)
FASIM_LOWP_ASSIGN(*)
FASIM_LOWP_ASSIGN(/)
#undef FASIM_LOWP_ASSIGN

constexpr half operator-(half h) { return half::from_bits((uint16_t)(h.bits ^ 0x8000u)); }
constexpr bfloat operator-(bfloat h) { return bfloat::from_bits((uint16_t)(h.bits ^ 0x8000u)); }
constexpr half operator+(half h) { return h; }
constexpr bfloat operator+(bfloat h) { return h; }

// ---------------------------------------------------------------------------------------------------------------
// vec<T, N>
namespace metal {

template <class T, int N> struct vec;
template <class T, int N> struct packed_vec;  // fasim_packed.h

// Swizzles: the translator rewrites `v.xy` into `v.template fasim_swizzle<0, 1>()` (a value) and `v.xy = w` or
// `v.xy += w` into `v.template fasim_swizzle_ref<0, 1>() = w` (a proxy that writes the components back).
template <class T, int N, int... I> struct fasim_swizzle_proxy {
    vec<T, N> *v;
    using value_t = vec<T, (int)sizeof...(I)>;
    operator value_t() const { return value_t((*v)[I]...); }
    fasim_swizzle_proxy &operator=(const value_t &w) {
        int k = 0;
        int idx[] = {I...};
        for (int i : idx) (*v)[i] = w[k++];
        return *this;
    }
#define FASIM_SWZ_ASSIGN(OP) \
    fasim_swizzle_proxy &operator OP##=(const value_t &w) { return *this = value_t(*this) OP w; }
    FASIM_SWZ_ASSIGN(+) FASIM_SWZ_ASSIGN(-) FASIM_SWZ_ASSIGN(*) FASIM_SWZ_ASSIGN(/)
#undef FASIM_SWZ_ASSIGN
};

// A scalar of another type converts to a vector as it converts to T (MSL: `half4 v = 0;`, `c ? half4 : 0.0f`):
// one user-defined conversion, where going through T would take two (int -> half -> half4).
#define FASIM_VEC_COMMON(N)                                                                    \
    using value_type = T;                                                                      \
    template <class S, std::enable_if_t<fasim::is_scalar_v<S> && !std::is_same<S, T>::value && \
                                        std::is_convertible<S, T>::value, int> = 0>            \
    vec(S s) : vec(T(s)) {}                                                                    \
    static constexpr int size = N;                                                             \
    template <int... I> vec<T, (int)sizeof...(I)> fasim_swizzle() const { return vec<T, (int)sizeof...(I)>((*this)[I]...); } \
    template <int... I> fasim_swizzle_proxy<T, N, I...> fasim_swizzle_ref() { return {this}; } \
    T &operator[](int i) { return (&x)[i]; }                                                   \
    const T &operator[](int i) const { return (&x)[i]; }                                       \
    template <class U, class = std::enable_if_t<!std::is_same<U, T>::value>>                   \
    explicit vec(const vec<U, N> &o) { for (int i = 0; i < N; i++) (*this)[i] = T((typename fasim_conv<U>::type)o[i]); } \
    template <class U> explicit vec(const packed_vec<U, N> &o) {                               \
        for (int i = 0; i < N; i++) (*this)[i] = T((typename fasim_conv<U>::type)o[i]);        \
    }

template <class U> struct fasim_conv { using type = U; };
template <> struct fasim_conv<half> { using type = float; };
template <> struct fasim_conv<bfloat> { using type = float; };

template <class T> struct alignas(2 * sizeof(T)) vec<T, 2> {
    union { T x; T r; };
    union { T y; T g; };
    vec() = default;
    vec(T s) : x(s), y(s) {}
    vec(T a, T b) : x(a), y(b) {}
    FASIM_VEC_COMMON(2)
};

template <class T> struct alignas(4 * sizeof(T)) vec<T, 3> {
    union { T x; T r; };
    union { T y; T g; };
    union { T z; T b; };
    vec() = default;
    vec(T s) : x(s), y(s), z(s) {}
    vec(T a, T b_, T c) : x(a), y(b_), z(c) {}
    vec(vec<T, 2> a, T c) : x(a.x), y(a.y), z(c) {}
    vec(T a, vec<T, 2> b_) : x(a), y(b_.x), z(b_.y) {}
    FASIM_VEC_COMMON(3)
};

template <class T> struct alignas(4 * sizeof(T)) vec<T, 4> {
    union { T x; T r; };
    union { T y; T g; };
    union { T z; T b; };
    union { T w; T a; };
    vec() = default;
    vec(T s) : x(s), y(s), z(s), w(s) {}
    vec(T a_, T b_, T c, T d) : x(a_), y(b_), z(c), w(d) {}
    vec(vec<T, 2> p, T c, T d) : x(p.x), y(p.y), z(c), w(d) {}
    vec(T a_, vec<T, 2> p, T d) : x(a_), y(p.x), z(p.y), w(d) {}
    vec(T a_, T b_, vec<T, 2> p) : x(a_), y(b_), z(p.x), w(p.y) {}
    vec(vec<T, 2> p, vec<T, 2> q) : x(p.x), y(p.y), z(q.x), w(q.y) {}
    vec(vec<T, 3> p, T d) : x(p.x), y(p.y), z(p.z), w(d) {}
    vec(T a_, vec<T, 3> p) : x(a_), y(p.x), z(p.y), w(p.z) {}
    FASIM_VEC_COMMON(4)
};
#undef FASIM_VEC_COMMON

template <class T> struct is_vec : std::false_type {};
template <class T, int N> struct is_vec<vec<T, N>> : std::true_type {};

template <class T, int N, class F> inline vec<T, N> vmap(const vec<T, N> &a, F f) {
    vec<T, N> r;
    for (int i = 0; i < N; i++) r[i] = f(a[i]);
    return r;
}
// vmap of a two-argument function, element by element.
template <class T, int N, class F> inline vec<T, N> vzip(const vec<T, N> &a, const vec<T, N> &b, F f) {
    vec<T, N> r;
    for (int i = 0; i < N; i++) r[i] = f(a[i], b[i]);
    return r;
}

// Work counters (fasim_counters.h): float vector arithmetic counts one flop per component; half and bfloat
// components count through their scalar operators.
#define FASIM_COUNT_VEC_FLOPS(T, N, OPNAME)                                                                       \
    do {                                                                                                         \
        if (std::is_same<T, float>::value && (OPNAME)[1] == 0 &&                                                 \
            ((OPNAME)[0] == '+' || (OPNAME)[0] == '-' || (OPNAME)[0] == '*' || (OPNAME)[0] == '/'))              \
            FASIM_COUNT_FLOPS(::fasim::kFlopFp32, N);                                                            \
    } while (0)

#define FASIM_VEC_BINOP(OP)                                                                                      \
    template <class T, int N> inline vec<T, N> operator OP(const vec<T, N> &a, const vec<T, N> &b) {              \
        FASIM_COUNT_VEC_FLOPS(T, N, #OP);                                                                        \
        vec<T, N> r;                                                                                             \
        for (int i = 0; i < N; i++) r[i] = T(a[i] OP b[i]);                                                      \
        return r;                                                                                                \
    }                                                                                                            \
    template <class T, int N, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>                          \
    inline vec<T, N> operator OP(const vec<T, N> &a, S s) {                                                      \
        FASIM_COUNT_VEC_FLOPS(T, N, #OP);                                                                        \
        vec<T, N> r;                                                                                             \
        T t = T(s);                                                                                              \
        for (int i = 0; i < N; i++) r[i] = T(a[i] OP t);                                                         \
        return r;                                                                                                \
    }                                                                                                            \
    template <class T, int N, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>                          \
    inline vec<T, N> operator OP(S s, const vec<T, N> &a) {                                                      \
        FASIM_COUNT_VEC_FLOPS(T, N, #OP);                                                                        \
        vec<T, N> r;                                                                                             \
        T t = T(s);                                                                                              \
        for (int i = 0; i < N; i++) r[i] = T(t OP a[i]);                                                         \
        return r;                                                                                                \
    }                                                                                                            \
    template <class T, int N> inline vec<T, N> &operator OP##=(vec<T, N> &a, const vec<T, N> &b) {              \
        FASIM_COUNT_VEC_FLOPS(T, N, #OP);                                                                        \
        for (int i = 0; i < N; i++) a[i] = T(a[i] OP b[i]);                                                      \
        return a;                                                                                                \
    }                                                                                                            \
    template <class T, int N, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>                          \
    inline vec<T, N> &operator OP##=(vec<T, N> &a, S s) {                                                        \
        FASIM_COUNT_VEC_FLOPS(T, N, #OP);                                                                        \
        T t = T(s);                                                                                              \
        for (int i = 0; i < N; i++) a[i] = T(a[i] OP t);                                                         \
        return a;                                                                                                \
    }
FASIM_VEC_BINOP(+)
FASIM_VEC_BINOP(-)
FASIM_VEC_BINOP(*)
FASIM_VEC_BINOP(/)
FASIM_VEC_BINOP(%)
FASIM_VEC_BINOP(&)
FASIM_VEC_BINOP(|)
FASIM_VEC_BINOP(^)
FASIM_VEC_BINOP(<<)
FASIM_VEC_BINOP(>>)
#undef FASIM_VEC_BINOP
#undef FASIM_COUNT_VEC_FLOPS

#define FASIM_VEC_CMP(OP)                                                                                        \
    template <class T, int N> inline vec<bool, N> operator OP(const vec<T, N> &a, const vec<T, N> &b) {           \
        vec<bool, N> r;                                                                                          \
        for (int i = 0; i < N; i++) r[i] = a[i] OP b[i];                                                         \
        return r;                                                                                                \
    }                                                                                                            \
    template <class T, int N, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>                          \
    inline vec<bool, N> operator OP(const vec<T, N> &a, S s) {                                                   \
        vec<bool, N> r;                                                                                          \
        for (int i = 0; i < N; i++) r[i] = a[i] OP T(s);                                                         \
        return r;                                                                                                \
    }                                                                                                            \
    template <class T, int N, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>                          \
    inline vec<bool, N> operator OP(S s, const vec<T, N> &a) {                                                   \
        vec<bool, N> r;                                                                                          \
        for (int i = 0; i < N; i++) r[i] = T(s) OP a[i];                                                         \
        return r;                                                                                                \
    }
FASIM_VEC_CMP(==)
FASIM_VEC_CMP(!=)
FASIM_VEC_CMP(<)
FASIM_VEC_CMP(>)
FASIM_VEC_CMP(<=)
FASIM_VEC_CMP(>=)
FASIM_VEC_CMP(&&)
FASIM_VEC_CMP(||)
#undef FASIM_VEC_CMP

template <class T, int N> inline vec<T, N> operator-(const vec<T, N> &a) { return vmap(a, [](T v) { return T(-v); }); }
template <class T, int N> inline vec<T, N> operator+(const vec<T, N> &a) { return a; }
template <class T, int N> inline vec<T, N> operator~(const vec<T, N> &a) { return vmap(a, [](T v) { return T(~v); }); }
template <class T, int N> inline vec<bool, N> operator!(const vec<T, N> &a) {
    vec<bool, N> r;
    for (int i = 0; i < N; i++) r[i] = !a[i];
    return r;
}

#define FASIM_VEC_NAMES(P)           \
    typedef vec<P, 2> P##2;          \
    typedef vec<P, 3> P##3;          \
    typedef vec<P, 4> P##4;
FASIM_VEC_ELEMENTS(FASIM_VEC_NAMES)
#undef FASIM_VEC_NAMES

static_assert(sizeof(float3) == 16 && alignof(float4) == 16 && sizeof(half4) == 8, "MSL vector layout");

}  // namespace metal

FASIM_VEC_GLOBAL_NAMES  // fasim_vec_names.h
