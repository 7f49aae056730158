// fasim_atomic.h - MSL atomics (atomic_int, atomic_uint, atomic_bool, atomic_float; the *_explicit functions) for the
// simulator, as strict as the MSL specification §6.15 "Atomic functions":
// - §6.15.1 "Memory order": the atomic functions take memory_order_relaxed only. memory_order_seq_cst exists (MSL 3.2
//   atomic_thread_fence, which the simulator does not provide) but passing it, or any other order, to an atomic
//   function is a compile error here as on a Mac. Each order is a constant of its own type for that reason.
// - §6.15.4: the operations each atomic type has. load, store, exchange and compare_exchange_weak: int, uint, bool,
//   float. fetch_add/fetch_sub: int, uint, float. fetch_and/or/xor and fetch_min/max: int and uint only (MLX's
//   atomic.h implements float min/max with compare-exchange loops because Metal has none).
// Threads of one threadgroup are fibers on one host thread, but threadgroups run on several host threads, so the
// operations use the compiler's atomic builtins on the value (sequentially consistent: stronger than relaxed, which
// only hides orderings a GPU could show; the hazard detector, not the atomics, reports missing synchronisation).
#pragma once

#include "fasim_types.h"  // and fasim_counters.h

namespace metal {

enum memory_order { fasim_memory_order_relaxed = 0, fasim_memory_order_seq_cst = 5 };
template <int Order> struct fasim_memory_order_t {
    constexpr operator memory_order() const { return memory_order(Order); }
};
constexpr fasim_memory_order_t<0> memory_order_relaxed{};
constexpr fasim_memory_order_t<1> memory_order_acquire{};
constexpr fasim_memory_order_t<2> memory_order_release{};
constexpr fasim_memory_order_t<3> memory_order_acq_rel{};
constexpr fasim_memory_order_t<5> memory_order_seq_cst{};

template <class T> struct fasim_nodeduce { using type = T; };  // the value argument converts (1 -> 1u)
template <class T> using fasim_val = typename fasim_nodeduce<T>::type;

template <class T> struct fasim_atomic {
    static_assert(std::is_same<T, int>::value || std::is_same<T, uint>::value || std::is_same<T, bool>::value ||
                      std::is_same<T, float>::value,
                  "MSL §2.6 / §6.15: the simulator's atomic types are atomic_int, atomic_uint, atomic_bool and "
                  "atomic_float");
    T value;
};
typedef fasim_atomic<int> atomic_int;
typedef fasim_atomic<uint> atomic_uint;
typedef fasim_atomic<bool> atomic_bool;
typedef fasim_atomic<float> atomic_float;
template <class T> using atomic = fasim_atomic<T>;

template <int Order> constexpr void fasim_check_order() {
    static_assert(Order == 0, "MSL §6.15.1: atomic functions take memory_order_relaxed only");
}
template <class T> constexpr bool fasim_is_int_atomic = std::is_same<T, int>::value || std::is_same<T, uint>::value;
template <class T> constexpr void fasim_check_arith() {
    static_assert(fasim_is_int_atomic<T> || std::is_same<T, float>::value,
                  "MSL §6.15.4: atomic_fetch_add/sub_explicit exist for atomic_int, atomic_uint and atomic_float");
}
template <class T> constexpr void fasim_check_int_only() {
    static_assert(fasim_is_int_atomic<T>,
                  "MSL §6.15.4: atomic_fetch_and/or/xor/min/max_explicit exist for atomic_int and atomic_uint only");
}

template <class T, int O> inline void atomic_store_explicit(fasim_atomic<T> *a, fasim_val<T> v, fasim_memory_order_t<O>) {
    fasim_check_order<O>();
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicStoreOp);
    __atomic_store(&a->value, &v, __ATOMIC_SEQ_CST);
}
template <class T, int O> inline T atomic_load_explicit(const fasim_atomic<T> *a, fasim_memory_order_t<O>) {
    fasim_check_order<O>();
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicLoadOp);
    T v;
    __atomic_load(&a->value, &v, __ATOMIC_SEQ_CST);
    return v;
}
template <class T, int O> inline T atomic_exchange_explicit(fasim_atomic<T> *a, fasim_val<T> v, fasim_memory_order_t<O>) {
    fasim_check_order<O>();
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicRmwOp);
    T old;
    __atomic_exchange(&a->value, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T, int S, int F>
inline bool atomic_compare_exchange_weak_explicit(fasim_atomic<T> *a, T *expected, fasim_val<T> desired,
                                                  fasim_memory_order_t<S>, fasim_memory_order_t<F>) {
    fasim_check_order<S>();
    fasim_check_order<F>();
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicRmwOp);
    return __atomic_compare_exchange(&a->value, expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

// Read-modify-write through compare-exchange, so that float (no native fetch_add builtin) works the same way.
template <class T, class F> inline T fasim_atomic_rmw(fasim_atomic<T> *a, F f) {
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicRmwOp);  // one MSL operation, whatever the loop does
    T old;
    __atomic_load(&a->value, &old, __ATOMIC_SEQ_CST);
    T desired = f(old);
    while (!__atomic_compare_exchange(&a->value, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        desired = f(old);
    return old;
}
#define FASIM_ATOMIC_RMW(NAME, CHECK, EXPR)                                                                   \
    template <class T, int O> inline T NAME(fasim_atomic<T> *a, fasim_val<T> v, fasim_memory_order_t<O>) {   \
        fasim_check_order<O>();                                                                              \
        CHECK;                                                                                               \
        return fasim_atomic_rmw(a, [v](T x) { return EXPR; });                                               \
    }
FASIM_ATOMIC_RMW(atomic_fetch_add_explicit, fasim_check_arith<T>(), T(x + v))
FASIM_ATOMIC_RMW(atomic_fetch_sub_explicit, fasim_check_arith<T>(), T(x - v))
FASIM_ATOMIC_RMW(atomic_fetch_max_explicit, fasim_check_int_only<T>(), x < v ? v : x)
FASIM_ATOMIC_RMW(atomic_fetch_min_explicit, fasim_check_int_only<T>(), v < x ? v : x)
FASIM_ATOMIC_RMW(atomic_fetch_and_explicit, fasim_check_int_only<T>(), T(x & v))
FASIM_ATOMIC_RMW(atomic_fetch_or_explicit, fasim_check_int_only<T>(), T(x | v))
FASIM_ATOMIC_RMW(atomic_fetch_xor_explicit, fasim_check_int_only<T>(), T(x ^ v))
#undef FASIM_ATOMIC_RMW

}  // namespace metal
