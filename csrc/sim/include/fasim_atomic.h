// fasim_atomic.h - MSL atomics (atomic_int, atomic_uint, atomic_float; the *_explicit functions) for the simulator.
// Threads of one threadgroup are fibers on one host thread, but threadgroups run on several host threads, so the
// operations use the compiler's atomic builtins on the value. memory_order is accepted and treated as relaxed
// (Metal only guarantees relaxed ordering too).
#pragma once

#include "fasim_types.h"  // and fasim_counters.h

namespace metal {

enum memory_order { memory_order_relaxed = 0, memory_order_acquire, memory_order_release, memory_order_acq_rel,
                    memory_order_seq_cst };

template <class T> struct fasim_nodeduce { using type = T; };  // the value argument converts (1 -> 1u)
template <class T> using fasim_val = typename fasim_nodeduce<T>::type;

template <class T> struct fasim_atomic {
    T value;
};
typedef fasim_atomic<int> atomic_int;
typedef fasim_atomic<uint> atomic_uint;
typedef fasim_atomic<bool> atomic_bool;
typedef fasim_atomic<float> atomic_float;
template <class T> using atomic = fasim_atomic<T>;

template <class T> inline void atomic_store_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicStoreOp);
    __atomic_store(&a->value, &v, __ATOMIC_SEQ_CST);
}
template <class T> inline T atomic_load_explicit(const fasim_atomic<T> *a, memory_order) {
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicLoadOp);
    T v;
    __atomic_load(&a->value, &v, __ATOMIC_SEQ_CST);
    return v;
}
template <class T> inline T atomic_exchange_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    FASIM_COUNT_ATOMIC(&a->value, sizeof(T), ::fasim::kAtomicRmwOp);
    T old;
    __atomic_exchange(&a->value, &v, &old, __ATOMIC_SEQ_CST);
    return old;
}
template <class T>
inline bool atomic_compare_exchange_weak_explicit(fasim_atomic<T> *a, T *expected, fasim_val<T> desired, memory_order,
                                                  memory_order) {
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
template <class T> inline T atomic_fetch_add_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return T(x + v); });
}
template <class T> inline T atomic_fetch_sub_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return T(x - v); });
}
template <class T> inline T atomic_fetch_max_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return x < v ? v : x; });
}
template <class T> inline T atomic_fetch_min_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return v < x ? v : x; });
}
template <class T> inline T atomic_fetch_and_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return T(x & v); });
}
template <class T> inline T atomic_fetch_or_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return T(x | v); });
}
template <class T> inline T atomic_fetch_xor_explicit(fasim_atomic<T> *a, fasim_val<T> v, memory_order) {
    return fasim_atomic_rmw(a, [v](T x) { return T(x ^ v); });
}

}  // namespace metal
