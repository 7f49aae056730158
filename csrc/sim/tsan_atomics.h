// tsan_atomics.h - the atomic entry points of the ThreadSanitizer instrumentation ABI (GCC and clang,
// -fsanitize=thread), written once for the two runtimes that answer that ABI: the hazard detector (hazard_hooks.cpp)
// and the work counters (counters.cpp). Each entry point performs the operation itself, sequentially consistent (what
// fasim_atomic.h asks for anyway), after FASIM_TSAN_ATOMIC_NOTE(addr, bytes, writes), which the including file
// defines first: a hazard note (an atomic access: two atomics never race, an atomic and a plain access do), or
// nothing. Include it inside extern "C", once per module (a module carries one of the two runtimes).
#pragma once

#include <stdint.h>

// fetch_add, fetch_sub, ...: one read-modify-write builtin each
#define FASIM_TSAN_RMW_(BITS, T, OP)                                                                                 \
    T __tsan_atomic##BITS##_##OP(volatile T *a, T v, int) {                                                          \
        FASIM_TSAN_ATOMIC_NOTE(a, sizeof(T), true);                                                                  \
        return __atomic_##OP(a, v, __ATOMIC_SEQ_CST);                                                                \
    }
// compare_exchange_strong / _weak (both strong here): 1 if the exchange happened, else *expected = the value seen
#define FASIM_TSAN_CAS_(BITS, T, KIND)                                                                               \
    int __tsan_atomic##BITS##_compare_exchange_##KIND(volatile T *a, T *expected, T desired, int, int) {            \
        FASIM_TSAN_ATOMIC_NOTE(a, sizeof(T), true);                                                                  \
        return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    }
#define FASIM_TSAN_ATOMICS_(BITS, T)                                                                                 \
    T __tsan_atomic##BITS##_load(const volatile T *a, int) {                                                         \
        FASIM_TSAN_ATOMIC_NOTE(a, sizeof(T), false);                                                                 \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                                 \
    }                                                                                                                \
    void __tsan_atomic##BITS##_store(volatile T *a, T v, int) {                                                      \
        FASIM_TSAN_ATOMIC_NOTE(a, sizeof(T), true);                                                                  \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                    \
    }                                                                                                                \
    T __tsan_atomic##BITS##_exchange(volatile T *a, T v, int) {                                                      \
        FASIM_TSAN_ATOMIC_NOTE(a, sizeof(T), true);                                                                  \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                                \
    FASIM_TSAN_RMW_(BITS, T, fetch_add)                                                                              \
    FASIM_TSAN_RMW_(BITS, T, fetch_sub)                                                                              \
    FASIM_TSAN_RMW_(BITS, T, fetch_and)                                                                              \
    FASIM_TSAN_RMW_(BITS, T, fetch_or)                                                                               \
    FASIM_TSAN_RMW_(BITS, T, fetch_xor)                                                                              \
    FASIM_TSAN_RMW_(BITS, T, fetch_nand)                                                                             \
    FASIM_TSAN_CAS_(BITS, T, strong)                                                                                 \
    FASIM_TSAN_CAS_(BITS, T, weak)                                                                                   \
    T __tsan_atomic##BITS##_compare_exchange_val(volatile T *a, T expected, T desired, int, int) {                  \
        FASIM_TSAN_ATOMIC_NOTE(a, sizeof(T), true);                                                                  \
        __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
        return expected;                                                                                             \
    }
FASIM_TSAN_ATOMICS_(8, int8_t)
FASIM_TSAN_ATOMICS_(16, int16_t)
FASIM_TSAN_ATOMICS_(32, int32_t)
FASIM_TSAN_ATOMICS_(64, int64_t)
#undef FASIM_TSAN_ATOMICS_
#undef FASIM_TSAN_CAS_
#undef FASIM_TSAN_RMW_

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
