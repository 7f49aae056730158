// fasim_traits.h - MSL's type traits and numeric limits (<metal_type_traits>, <metal_limits>) for both compatibility
// layers: metal_stdlib (execution; half/bfloat are classes) and fasim_check.h (strict check; half/bfloat are clang's
// _Float16/__bf16). It needs `half`, `bfloat` and `metal::vec` declared before it.
//
// The traits are C++'s, with MSL's additions: half and bfloat are floating-point (and arithmetic, signed) types,
// and is_vector tells MSL vectors. numeric_limits covers the scalar types; the half/bfloat values are bit patterns
// (max, lowest, min = smallest normal, epsilon, infinity, quiet_NaN, denorm_min).
#pragma once

#include <limits>
#include <type_traits>

namespace metal {

using std::integral_constant;
template <bool B> using bool_constant = std::integral_constant<bool, B>;
using std::true_type;
using std::false_type;
using std::is_same;
template <class A, class B> constexpr bool is_same_v = std::is_same<A, B>::value;
using std::enable_if;
template <bool B, class T = void> using enable_if_t = typename std::enable_if<B, T>::type;
using std::conditional;
template <bool B, class A, class C> using conditional_t = typename std::conditional<B, A, C>::type;
using std::remove_cv;
using std::remove_const;
using std::remove_volatile;
using std::remove_reference;
using std::remove_pointer;
using std::decay;
template <class T> using remove_cv_t = typename std::remove_cv<T>::type;
template <class T> using remove_const_t = typename std::remove_const<T>::type;
template <class T> using remove_reference_t = typename std::remove_reference<T>::type;
template <class T> using remove_pointer_t = typename std::remove_pointer<T>::type;
template <class T> using decay_t = typename std::decay<T>::type;
using std::is_pointer;
using std::is_const;
using std::is_convertible;
template <class F, class T> constexpr bool is_convertible_v = std::is_convertible<F, T>::value;
using std::is_integral;
template <class T> constexpr bool is_integral_v = std::is_integral<T>::value;
using std::make_signed;
using std::make_unsigned;
template <class T> using make_signed_t = typename std::make_signed<T>::type;
template <class T> using make_unsigned_t = typename std::make_unsigned<T>::type;

template <class T>
struct is_floating_point
    : bool_constant<std::is_floating_point<remove_cv_t<T>>::value || std::is_same<remove_cv_t<T>, half>::value ||
                    std::is_same<remove_cv_t<T>, bfloat>::value> {};
template <class T> constexpr bool is_floating_point_v = is_floating_point<T>::value;
template <class T> struct is_arithmetic : bool_constant<is_integral_v<T> || is_floating_point_v<T>> {};
template <class T> constexpr bool is_arithmetic_v = is_arithmetic<T>::value;
template <class T> struct is_signed : bool_constant<std::is_signed<T>::value || is_floating_point_v<T>> {};
template <class T> constexpr bool is_signed_v = is_signed<T>::value;
template <class T> struct is_unsigned : bool_constant<std::is_unsigned<T>::value> {};
template <class T> constexpr bool is_unsigned_v = is_unsigned<T>::value;
template <class T> struct is_scalar : bool_constant<is_arithmetic_v<T>> {};
template <class T> constexpr bool is_scalar_v = is_scalar<T>::value;
template <class T> struct is_vector : false_type {};
template <class T, int N> struct is_vector<vec<T, N>> : true_type {};
template <class T> constexpr bool is_vector_v = is_vector<T>::value;
// remove_addrspace (Apple's <metal_type_traits>; MLX's steel kernels use it): the type without its address space.
// The simulator erases address spaces, so it is the type itself; the strict check (fasim_check.h, clang address
// spaces 1-3) strips them.
template <class T> struct remove_addrspace { using type = T; };
#ifdef FASIM_CHECK_ADDRESS_SPACES
template <class T> struct remove_addrspace<__attribute__((address_space(1))) T> { using type = T; };
template <class T> struct remove_addrspace<__attribute__((address_space(2))) T> { using type = T; };
template <class T> struct remove_addrspace<__attribute__((address_space(3))) T> { using type = T; };
#endif
template <class T> using remove_addrspace_t = typename remove_addrspace<T>::type;

// numeric_limits: C++'s for the integer types and float, bit patterns for half and bfloat.
template <class T> struct numeric_limits : std::numeric_limits<T> {};
template <class T, unsigned short Max, unsigned short Min, unsigned short Eps, unsigned short QNaN, int Digits>
struct fasim_limits16 {  // a 16-bit floating-point type described by bit patterns (infinity follows max)
    static constexpr bool is_specialized = true;
    static constexpr bool is_signed = true;
    static constexpr bool is_integer = false;
    static constexpr bool has_infinity = true;
    static constexpr bool has_quiet_NaN = true;
    static constexpr int digits = Digits;
    static constexpr T bits(unsigned short b) { return __builtin_bit_cast(T, b); }
    static constexpr T max() { return bits(Max); }
    static constexpr T lowest() { return bits((unsigned short)(Max | 0x8000u)); }
    static constexpr T min() { return bits(Min); }
    static constexpr T epsilon() { return bits(Eps); }
    static constexpr T denorm_min() { return bits(1); }
    static constexpr T infinity() { return bits((unsigned short)(Max + 1u)); }
    static constexpr T quiet_NaN() { return bits(QNaN); }
};
// half: max 65504, smallest normal 2^-14, epsilon 2^-10
template <> struct numeric_limits<half> : fasim_limits16<half, 0x7bff, 0x0400, 0x1400, 0x7e00, 11> {};
// bfloat: max 3.39e38, smallest normal 2^-126, epsilon 2^-7
template <> struct numeric_limits<bfloat> : fasim_limits16<bfloat, 0x7f7f, 0x0080, 0x3c00, 0x7fc0, 8> {};

}  // namespace metal
