// fasim_packed.h - MSL's packed vector types (MSL specification 3.1, §2.2.3 "Packed Vector Types"): packed_float3,
// packed_half4, packed_char4, ... hold N elements with the alignment of one element (sizeof(packed_float3) == 12),
// for data laid out without a vector's padding (llama.cpp reads quantised blocks as packed_char4).
//
// What the specification allows: component access (.x .y .z .w, .r .g .b .a, [i]) and assignment to and from the
// aligned vector of the same element type, which is also how arithmetic happens (operands convert to the aligned
// type); an explicit conversion such as float4(packed_char4) converts element by element.
#pragma once

#include "fasim_types.h"

namespace metal {

template <class T> struct packed_vec<T, 2> {
    union { T x; T r; };
    union { T y; T g; };
    packed_vec() = default;
    packed_vec(T a, T b) : x(a), y(b) {}
    packed_vec(const vec<T, 2> &v) : x(v.x), y(v.y) {}
    T &operator[](int i) { return (&x)[i]; }
    const T &operator[](int i) const { return (&x)[i]; }
    operator vec<T, 2>() const { return vec<T, 2>(x, y); }
};
template <class T> struct packed_vec<T, 3> {
    union { T x; T r; };
    union { T y; T g; };
    union { T z; T b; };
    packed_vec() = default;
    packed_vec(T a, T b_, T c) : x(a), y(b_), z(c) {}
    packed_vec(const vec<T, 3> &v) : x(v.x), y(v.y), z(v.z) {}
    T &operator[](int i) { return (&x)[i]; }
    const T &operator[](int i) const { return (&x)[i]; }
    operator vec<T, 3>() const { return vec<T, 3>(x, y, z); }
};
template <class T> struct packed_vec<T, 4> {
    union { T x; T r; };
    union { T y; T g; };
    union { T z; T b; };
    union { T w; T a; };
    packed_vec() = default;
    packed_vec(T a_, T b_, T c, T d) : x(a_), y(b_), z(c), w(d) {}
    packed_vec(const vec<T, 4> &v) : x(v.x), y(v.y), z(v.z), w(v.w) {}
    T &operator[](int i) { return (&x)[i]; }
    const T &operator[](int i) const { return (&x)[i]; }
    operator vec<T, 4>() const { return vec<T, 4>(x, y, z, w); }
};

#define FASIM_PACKED_NAMES(T, P)                                                                             \
    typedef packed_vec<T, 2> packed_##P##2; typedef packed_vec<T, 3> packed_##P##3;                          \
    typedef packed_vec<T, 4> packed_##P##4;
FASIM_PACKED_NAMES(float, float) FASIM_PACKED_NAMES(half, half) FASIM_PACKED_NAMES(bfloat, bfloat)
FASIM_PACKED_NAMES(int, int) FASIM_PACKED_NAMES(uint, uint) FASIM_PACKED_NAMES(short, short)
FASIM_PACKED_NAMES(ushort, ushort) FASIM_PACKED_NAMES(char, char) FASIM_PACKED_NAMES(uchar, uchar)
#undef FASIM_PACKED_NAMES

static_assert(sizeof(packed_float3) == 12 && alignof(packed_float3) == 4 && sizeof(packed_char4) == 4 &&
                  alignof(packed_half4) == 2,
              "MSL packed vector layout (§2.2.3)");

}  // namespace metal

#define FASIM_PACKED_GLOBAL(P) using metal::packed_##P##2; using metal::packed_##P##3; using metal::packed_##P##4;
FASIM_PACKED_GLOBAL(float) FASIM_PACKED_GLOBAL(half) FASIM_PACKED_GLOBAL(bfloat) FASIM_PACKED_GLOBAL(int)
FASIM_PACKED_GLOBAL(uint) FASIM_PACKED_GLOBAL(short) FASIM_PACKED_GLOBAL(ushort) FASIM_PACKED_GLOBAL(char)
FASIM_PACKED_GLOBAL(uchar)
#undef FASIM_PACKED_GLOBAL
