// fasim_check_ext.h - declarations for the strict check (fasim_check.h) of what fasim_matrix_types.h,
// fasim_packed.h, fasim_math_ext.h, fasim_simd_ext.h and fasim_builtins.h define for execution: matrix types,
// packed vectors, the further math and SIMD-group functions, and Apple's __metal_* builtins. No bodies.
#pragma once

namespace metal {

template <class T, int C, int R> struct matrix {
    vec<T, R> columns[C];
    matrix();
    explicit matrix(T diagonal);
    template <class... A> matrix(A... a);
    template <class U> explicit matrix(matrix<U, C, R> o);
    vec<T, R> &operator[](int c);
    matrix &operator+=(matrix o);
    matrix &operator-=(matrix o);
    matrix &operator*=(T s);
};
template <class T, int C, int R> matrix<T, C, R> operator+(matrix<T, C, R> a, matrix<T, C, R> b);
template <class T, int C, int R> matrix<T, C, R> operator-(matrix<T, C, R> a, matrix<T, C, R> b);
template <class T, int C, int R> matrix<T, C, R> operator-(matrix<T, C, R> a);
template <class T, int C, int R, class S> matrix<T, C, R> operator*(matrix<T, C, R> a, S s);
template <class T, int C, int R, class S> matrix<T, C, R> operator*(S s, matrix<T, C, R> a);
template <class T, int C, int R> vec<T, R> operator*(matrix<T, C, R> a, vec<T, C> v);
template <class T, int C, int R> vec<T, C> operator*(vec<T, R> v, matrix<T, C, R> a);
template <class T, int K, int R, int C> matrix<T, C, R> operator*(matrix<T, K, R> a, matrix<T, C, K> b);
template <class T, int C, int R> matrix<T, R, C> transpose(matrix<T, C, R> a);
FASIM_MATRIX_NAMES  // float2x2 ... bfloat4x4 (fasim_vec_names.h)

// Packed vectors as clang vectors aligned like one element (the layout differs, which a syntax check does not see):
// component access, conversion to and from the aligned vector and reads from any address space work as in MSL.
#define FASIM_CHECK_PACKED(T)                                                                                \
    typedef T packed_##T##2 __attribute__((ext_vector_type(2), aligned(sizeof(T))));                          \
    typedef T packed_##T##3 __attribute__((ext_vector_type(3), aligned(sizeof(T))));                          \
    typedef T packed_##T##4 __attribute__((ext_vector_type(4), aligned(sizeof(T))));
FASIM_CHECK_PACKED(float) FASIM_CHECK_PACKED(half) FASIM_CHECK_PACKED(bfloat) FASIM_CHECK_PACKED(int)
FASIM_CHECK_PACKED(uint) FASIM_CHECK_PACKED(short) FASIM_CHECK_PACKED(ushort) FASIM_CHECK_PACKED(char)
FASIM_CHECK_PACKED(uchar)
#undef FASIM_CHECK_PACKED

#define FASIM_CHECK_F1(NAME) template <class T> T NAME(T x);
FASIM_MATH_EXT1_NAMES(FASIM_CHECK_F1)  // fasim_math_names.h
#undef FASIM_CHECK_F1
#define FASIM_CHECK_F3(NAME) template <class T> T NAME(T x, T y, T z);
FASIM_CHECK_F3(fmax3) FASIM_CHECK_F3(fmin3) FASIM_CHECK_F3(fmedian3) FASIM_CHECK_F3(max3) FASIM_CHECK_F3(min3)
FASIM_CHECK_F3(median3)
#undef FASIM_CHECK_F3
template <class S, class T, int N> vec<T, N> fmax(S s, vec<T, N> v);
template <class S, class T, int N> vec<T, N> fmin(vec<T, N> v, S s);
template <class T> T nextafter(T x, T y);
template <class T> T copysign(T x, T y);
template <class T> T ldexp(T x, int k);
template <class T> T frexp(T x, int &e);
template <class T> T modf(T x, T &ip);
#define FASIM_CHECK_MATH_EXT                                                                                 \
    using ::metal::acosh; using ::metal::asinh; using ::metal::atanh; using ::metal::sinpi;                  \
    using ::metal::cospi; using ::metal::tanpi; using ::metal::fmax3; using ::metal::fmin3;                  \
    using ::metal::fmedian3; using ::metal::nextafter; using ::metal::copysign; using ::metal::ldexp;         \
    using ::metal::frexp; using ::metal::modf; using ::metal::fma; using ::metal::abs; using ::metal::max;     \
    using ::metal::min; using ::metal::max3; using ::metal::min3; using ::metal::median3;
namespace fast { FASIM_CHECK_MATH_EXT }
namespace precise { FASIM_CHECK_MATH_EXT }
#undef FASIM_CHECK_MATH_EXT

template <class T> T simd_shuffle_and_fill_up(T data, T filling_data, ushort delta, ushort modulo = 32);
template <class T> T simd_shuffle_and_fill_down(T data, T filling_data, ushort delta, ushort modulo = 32);
template <class T> T simd_shuffle_rotate_up(T v, ushort delta);
template <class T> T simd_shuffle_rotate_down(T v, ushort delta);
template <class T> T simd_prefix_inclusive_product(T v);
template <class T> T simd_prefix_exclusive_product(T v);

}  // namespace metal

// Apple's compiler builtins (fasim_builtins.h): the trailing math mode is a bool there.
#define __METAL_FAST_MATH__ true
#define __METAL_PRECISE_MATH__ false
#define __METAL_MAYBE_FAST_MATH__ true
#define FASIM_CHECK_B1(NAME) template <class T> T __metal_##NAME(T x, bool mode);
// The same names as fasim_builtins.h defines, from the same lists (fasim_math_names.h).
FASIM_MATH_PRECISE1_NAMES(FASIM_CHECK_B1) FASIM_MATH_EXT1_NAMES(FASIM_CHECK_B1) FASIM_MATH_EXACT1_NAMES(FASIM_CHECK_B1)
#undef FASIM_CHECK_B1
#define FASIM_CHECK_B2(NAME) template <class T> T __metal_##NAME(T x, T y, bool mode);
FASIM_MATH_PRECISE2_NAMES(FASIM_CHECK_B2) FASIM_CHECK_B2(atan2) FASIM_CHECK_B2(fmax) FASIM_CHECK_B2(fmin)
#undef FASIM_CHECK_B2
#define FASIM_CHECK_B3(NAME) template <class T> T __metal_##NAME(T x, T y, T z, bool mode);
FASIM_CHECK_B3(fmax3) FASIM_CHECK_B3(fmin3) FASIM_CHECK_B3(fmedian3) FASIM_CHECK_B3(fma)
#undef FASIM_CHECK_B3
template <class T> T __metal_fma(T x, T y, T z);
template <class T> T __metal_ldexp(T x, int k, bool mode);
template <class T> T __metal_frexp(T x, int *e);
template <class T> T __metal_nextafter(T x, T y);
#define FASIM_CHECK_BS1(NAME) template <class T> T __metal_##NAME(T x);
FASIM_CHECK_BS1(simd_sum) FASIM_CHECK_BS1(simd_product) FASIM_CHECK_BS1(simd_max) FASIM_CHECK_BS1(simd_min)
FASIM_CHECK_BS1(simd_and) FASIM_CHECK_BS1(simd_or) FASIM_CHECK_BS1(simd_xor) FASIM_CHECK_BS1(simd_prefix_inclusive_sum)
FASIM_CHECK_BS1(simd_prefix_exclusive_sum) FASIM_CHECK_BS1(simd_prefix_inclusive_product)
FASIM_CHECK_BS1(simd_prefix_exclusive_product)
#undef FASIM_CHECK_BS1
#define FASIM_CHECK_BS2(NAME) template <class T> T __metal_##NAME(T x, ushort n);
FASIM_CHECK_BS2(simd_broadcast) FASIM_CHECK_BS2(simd_shuffle) FASIM_CHECK_BS2(simd_shuffle_xor)
FASIM_CHECK_BS2(simd_shuffle_up) FASIM_CHECK_BS2(simd_shuffle_down) FASIM_CHECK_BS2(simd_shuffle_rotate_up)
FASIM_CHECK_BS2(simd_shuffle_rotate_down)
#undef FASIM_CHECK_BS2
template <class T> T __metal_simd_shuffle_and_fill_up(T data, T fill, ushort delta, ushort modulo);
template <class T> T __metal_simd_shuffle_and_fill_down(T data, T fill, ushort delta, ushort modulo);
template <class T> T __metal_get_simdgroup_size(T);
template <class T> T __metal_get_thread_index_in_simdgroup(T);
