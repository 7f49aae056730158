// fasim_check.h - declarations of the MSL library for the strict syntax check (python -m flash_attn_cy.sim check).
//
// Only for clang -fsyntax-only: nothing here has a body. Scalars and vectors are clang builtin types (_Float16,
// __bf16, ext_vector_type) because class types cannot live in clang address spaces the way MSL values live in
// device/constant/threadgroup memory. The translator rewrites vector constructors `float4(a, b)` into
// metal::fasim_make<float4>(a, b) for this header.
#pragma once

typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;
typedef unsigned long size_t;
typedef _Float16 half;
typedef __bf16 bfloat;

#include "fasim_vec_names.h"
#include "fasim_math_names.h"

namespace metal {

#define FASIM_CHECK_VEC(T)                                 \
    typedef T T##2 __attribute__((ext_vector_type(2)));    \
    typedef T T##3 __attribute__((ext_vector_type(3)));    \
    typedef T T##4 __attribute__((ext_vector_type(4)));
FASIM_VEC_ELEMENTS(FASIM_CHECK_VEC)
#undef FASIM_CHECK_VEC
template <class T, int N> using vec = T __attribute__((ext_vector_type(N)));
}  // namespace metal

FASIM_VEC_GLOBAL_NAMES  // MSL's vector types are global names too (fasim_vec_names.h)

#define FASIM_CHECK_ADDRESS_SPACES 1
#include "fasim_traits.h"

namespace metal {

template <class V, class... A> V fasim_make(A... a);
template <class T> T *fasim_tg_storage();  // threadgroup declarations become references to this

#define FASIM_CHECK_F1(NAME) template <class T> T NAME(T x);
// The simulator's float math (fasim_math_names.h lists it for every header that declares it), then the rest.
FASIM_MATH_PRECISE1_NAMES(FASIM_CHECK_F1) FASIM_MATH_EXACT1_NAMES(FASIM_CHECK_F1)
FASIM_CHECK_F1(saturate) FASIM_CHECK_F1(sign) FASIM_CHECK_F1(abs) FASIM_CHECK_F1(popcount) FASIM_CHECK_F1(ctz)
FASIM_CHECK_F1(clz)
#undef FASIM_CHECK_F1
#define FASIM_CHECK_F2(NAME) template <class T> T NAME(T x, T y);
FASIM_MATH_PRECISE2_NAMES(FASIM_CHECK_F2)
FASIM_CHECK_F2(atan2) FASIM_CHECK_F2(fmin) FASIM_CHECK_F2(fmax) FASIM_CHECK_F2(step) FASIM_CHECK_F2(mulhi)
#undef FASIM_CHECK_F2
template <class T> T max(T a, T b);
template <class T> T min(T a, T b);
template <class T, int N> vec<T, N> max(vec<T, N> a, T b);
template <class T, int N> vec<T, N> min(vec<T, N> a, T b);
template <class T> T clamp(T x, T lo, T hi);
template <class T, int N> vec<T, N> clamp(vec<T, N> x, T lo, T hi);
template <class T> T fma(T a, T b, T c);
template <class T> T mix(T x, T y, T a);
template <class T> bool isnan(T x);
template <class T> bool isinf(T x);
template <class T> bool isfinite(T x);
template <class T> bool signbit(T x);
template <class T, class C> T select(T a, T b, C c);
template <class T, int N> T dot(vec<T, N> a, vec<T, N> b);
template <class T, int N> T length(vec<T, N> a);
template <class T, int N> vec<T, N> normalize(vec<T, N> a);
template <class V> bool all(V v);
template <class V> bool any(V v);
template <class T, class U> T as_type(U u);

// The math functions are members of fast:: and precise:: too (see fasim_math.h), so that overloads a kernel adds
// there extend them.
#define FASIM_CHECK_MATH_MEMBERS                                                                                 \
    using ::metal::floor; using ::metal::ceil; using ::metal::round; using ::metal::rint; using ::metal::trunc;  \
    using ::metal::fabs; using ::metal::fract; using ::metal::saturate; using ::metal::sign;                     \
    using ::metal::atan2; using ::metal::fmin; using ::metal::fmax; using ::metal::step; using ::metal::exp;     \
    using ::metal::exp2; using ::metal::exp10; using ::metal::log; using ::metal::log2; using ::metal::log10;    \
    using ::metal::sqrt; using ::metal::rsqrt; using ::metal::sin; using ::metal::cos; using ::metal::tan;       \
    using ::metal::tanh; using ::metal::sinh; using ::metal::cosh; using ::metal::asin; using ::metal::acos;     \
    using ::metal::atan; using ::metal::pow; using ::metal::powr; using ::metal::divide; using ::metal::fmod;    \
    using namespace ::metal;
namespace fast { FASIM_CHECK_MATH_MEMBERS }
namespace precise { FASIM_CHECK_MATH_MEMBERS }
#undef FASIM_CHECK_MATH_MEMBERS

enum class mem_flags : int { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4,
                             mem_threadgroup_imageblock = 8 };
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags((int)a | (int)b); }
void threadgroup_barrier(mem_flags f);
void simdgroup_barrier(mem_flags f);

#define FASIM_CHECK_S1(NAME) template <class T> T NAME(T v);
FASIM_CHECK_S1(simd_sum) FASIM_CHECK_S1(simd_product) FASIM_CHECK_S1(simd_max) FASIM_CHECK_S1(simd_min)
FASIM_CHECK_S1(simd_and) FASIM_CHECK_S1(simd_or) FASIM_CHECK_S1(simd_xor) FASIM_CHECK_S1(simd_prefix_inclusive_sum)
FASIM_CHECK_S1(simd_prefix_exclusive_sum) FASIM_CHECK_S1(simd_broadcast_first)
#undef FASIM_CHECK_S1
template <class T> T simd_shuffle(T v, ushort lane);
template <class T> T simd_broadcast(T v, ushort lane);
template <class T> T simd_shuffle_xor(T v, ushort mask);
template <class T> T simd_shuffle_down(T v, ushort delta);
template <class T> T simd_shuffle_up(T v, ushort delta);
bool simd_is_first();
struct simd_vote {
    explicit operator ulong() const;
    explicit operator bool() const;
    bool all() const;
    bool any() const;
};
simd_vote simd_ballot(bool b);
bool simd_all(bool b);
bool simd_any(bool b);

template <class T, int Rows, int Cols> struct simdgroup_matrix {
    vec<T, 2> elems;
    simdgroup_matrix();
    explicit simdgroup_matrix(T diagonal);
    vec<T, 2> &thread_elements();
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;
template <class T, int R, int C = R> simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v);
// As MSL declares them: the pointer's element type is the matrix's, in device (1) or threadgroup (3) memory only.
#define FASIM_CHECK_MATRIX_MEMORY(AS)                                                                              \
    template <class T>                                                                                            \
    void simdgroup_load(simdgroup_matrix<T, 8, 8> &d, const __attribute__((address_space(AS))) T *src,            \
                        ulong elements_per_row = 8, ulong2 matrix_origin = 0, bool transpose_matrix = false);     \
    template <class T>                                                                                            \
    void simdgroup_store(simdgroup_matrix<T, 8, 8> m, __attribute__((address_space(AS))) T *dst,                  \
                         ulong elements_per_row = 8, ulong2 matrix_origin = 0, bool transpose_matrix = false);
FASIM_CHECK_MATRIX_MEMORY(1)
FASIM_CHECK_MATRIX_MEMORY(3)
#undef FASIM_CHECK_MATRIX_MEMORY
// Operands as the MSL specification declares them: non-const `thread simdgroup_matrix&`.
template <class TD, class TA, class TB, class TC>
void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8> &d, simdgroup_matrix<TA, 8, 8> &a,
                                   simdgroup_matrix<TB, 8, 8> &b, simdgroup_matrix<TC, 8, 8> &c);
template <class TD, class TA, class TB>
void simdgroup_multiply(simdgroup_matrix<TD, 8, 8> &d, simdgroup_matrix<TA, 8, 8> &a, simdgroup_matrix<TB, 8, 8> &b);

enum memory_order { memory_order_relaxed = 0, memory_order_acquire, memory_order_release, memory_order_acq_rel,
                    memory_order_seq_cst };
template <class T> struct fasim_atomic { T value; };
typedef fasim_atomic<int> atomic_int;
typedef fasim_atomic<uint> atomic_uint;
typedef fasim_atomic<bool> atomic_bool;
typedef fasim_atomic<float> atomic_float;
template <class T> using atomic = fasim_atomic<T>;
#define FASIM_CHECK_ATOMIC(NAME) template <class A, class V> auto NAME(A *a, V v, memory_order o) -> decltype(a->value);
FASIM_CHECK_ATOMIC(atomic_exchange_explicit) FASIM_CHECK_ATOMIC(atomic_fetch_add_explicit)
FASIM_CHECK_ATOMIC(atomic_fetch_sub_explicit) FASIM_CHECK_ATOMIC(atomic_fetch_max_explicit)
FASIM_CHECK_ATOMIC(atomic_fetch_min_explicit) FASIM_CHECK_ATOMIC(atomic_fetch_and_explicit)
FASIM_CHECK_ATOMIC(atomic_fetch_or_explicit) FASIM_CHECK_ATOMIC(atomic_fetch_xor_explicit)
#undef FASIM_CHECK_ATOMIC
template <class A, class V> void atomic_store_explicit(A *a, V v, memory_order o);
template <class A> auto atomic_load_explicit(A *a, memory_order o) -> decltype(a->value);
template <class A, class E, class V>
bool atomic_compare_exchange_weak_explicit(A *a, E *expected, V desired, memory_order s, memory_order f);

}  // namespace metal

#include "fasim_check_ext.h"

// is_function_constant_defined(name), as the translator rewrites it (the names of function constants stay: they are
// `extern const` variables in the constant address space, not constant expressions, as in MSL).
namespace fasim {
bool fc_defined(int slot);
}

#include "fasim_constants.h"
