// hazard_hooks.cpp - the calls a kernel module compiled with -fsanitize=thread makes before each load and store and in
// place of each atomic operation (the ThreadSanitizer instrumentation ABI of GCC and clang). They feed the hazard
// detector (hazard.h) of the host thread's worker; without a hazard run in progress they only do the access itself
// (atomics) or nothing. The sanitizer's own runtime is never linked: these definitions are the whole runtime.
// This file is compiled without instrumentation, like the rest of the simulator runtime.
#include <stdint.h>
#include <string.h>

#include "hazard.h"

using fasim::detail::kHzAtomic;
using fasim::detail::kHzWrite;

#define FASIM_RET() ((uintptr_t)__builtin_return_address(0))

namespace {
inline void note(const volatile void *a, size_t n, uint16_t flags, uintptr_t pc) {
    fasim::detail::hazard_note(a, n, flags, pc);
}
}  // namespace

extern "C" {

// Plain accesses: sizes 1..16, aligned or not, volatile or not.
#define FASIM_HZ_PLAIN(N)                                                                                  \
    void __tsan_read##N(void *a) { note(a, N, 0, FASIM_RET()); }                                           \
    void __tsan_write##N(void *a) { note(a, N, kHzWrite, FASIM_RET()); }                                   \
    void __tsan_unaligned_read##N(void *a) { note(a, N, 0, FASIM_RET()); }                                 \
    void __tsan_unaligned_write##N(void *a) { note(a, N, kHzWrite, FASIM_RET()); }                         \
    void __tsan_volatile_read##N(void *a) { note(a, N, 0, FASIM_RET()); }                                  \
    void __tsan_volatile_write##N(void *a) { note(a, N, kHzWrite, FASIM_RET()); }                          \
    void __tsan_unaligned_volatile_read##N(void *a) { note(a, N, 0, FASIM_RET()); }                        \
    void __tsan_unaligned_volatile_write##N(void *a) { note(a, N, kHzWrite, FASIM_RET()); }                \
    void __tsan_read##N##_pc(void *a, void *pc) { note(a, N, 0, (uintptr_t)pc + 1); }                      \
    void __tsan_write##N##_pc(void *a, void *pc) { note(a, N, kHzWrite, (uintptr_t)pc + 1); }
FASIM_HZ_PLAIN(1)
FASIM_HZ_PLAIN(2)
FASIM_HZ_PLAIN(4)
FASIM_HZ_PLAIN(8)
FASIM_HZ_PLAIN(16)
#undef FASIM_HZ_PLAIN

void __tsan_read_range(void *a, uintptr_t n) { note(a, n, 0, FASIM_RET()); }
void __tsan_write_range(void *a, uintptr_t n) { note(a, n, kHzWrite, FASIM_RET()); }
// The "_pc" forms pass the instruction's address (the site is kept as a return address: one byte after a call).
void __tsan_read_range_pc(void *a, uintptr_t n, void *pc) { note(a, n, 0, (uintptr_t)pc + 1); }
void __tsan_write_range_pc(void *a, uintptr_t n, void *pc) { note(a, n, kHzWrite, (uintptr_t)pc + 1); }

// clang turns memcpy/memmove/memset into these.
void *__tsan_memcpy(void *d, const void *s, uintptr_t n) {
    note(s, n, 0, FASIM_RET());
    note(d, n, kHzWrite, FASIM_RET());
    return memcpy(d, s, n);
}
void *__tsan_memmove(void *d, const void *s, uintptr_t n) {
    note(s, n, 0, FASIM_RET());
    note(d, n, kHzWrite, FASIM_RET());
    return memmove(d, s, n);
}
void *__tsan_memset(void *d, int c, uintptr_t n) {
    note(d, n, kHzWrite, FASIM_RET());
    return memset(d, c, n);
}

// Function entry/exit (call stacks, which the detector does not need), C++ vtable pointers (MSL has no virtual
// functions), the module constructor's initialisation call.
void __tsan_func_entry(void *) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}
void __tsan_init() {}

// Atomics: the operation itself (sequentially consistent, as the simulator's atomics are), recorded as an atomic
// access: two atomics never race, an atomic and a plain access do.
#define FASIM_HZ_ATOMIC(BITS, T)                                                                                     \
    T __tsan_atomic##BITS##_load(const volatile T *a, int) {                                                         \
        note(a, sizeof(T), kHzAtomic, FASIM_RET());                                                                  \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                                 \
    }                                                                                                                \
    void __tsan_atomic##BITS##_store(volatile T *a, T v, int) {                                                      \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                    \
    }                                                                                                                \
    T __tsan_atomic##BITS##_exchange(volatile T *a, T v, int) {                                                      \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                                \
    T __tsan_atomic##BITS##_fetch_add(volatile T *a, T v, int) {                                                     \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                                \
    T __tsan_atomic##BITS##_fetch_sub(volatile T *a, T v, int) {                                                     \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                                \
    T __tsan_atomic##BITS##_fetch_and(volatile T *a, T v, int) {                                                     \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                                \
    T __tsan_atomic##BITS##_fetch_or(volatile T *a, T v, int) {                                                      \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                            \
    }                                                                                                                \
    T __tsan_atomic##BITS##_fetch_xor(volatile T *a, T v, int) {                                                     \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                                \
    T __tsan_atomic##BITS##_fetch_nand(volatile T *a, T v, int) {                                                    \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                                \
    int __tsan_atomic##BITS##_compare_exchange_strong(volatile T *a, T *expected, T desired, int, int) {            \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    }                                                                                                                \
    int __tsan_atomic##BITS##_compare_exchange_weak(volatile T *a, T *expected, T desired, int, int) {              \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        return __atomic_compare_exchange_n(a, expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
    }                                                                                                                \
    T __tsan_atomic##BITS##_compare_exchange_val(volatile T *a, T expected, T desired, int, int) {                  \
        note(a, sizeof(T), kHzAtomic | kHzWrite, FASIM_RET());                                                       \
        __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
        return expected;                                                                                             \
    }
FASIM_HZ_ATOMIC(8, int8_t)
FASIM_HZ_ATOMIC(16, int16_t)
FASIM_HZ_ATOMIC(32, int32_t)
FASIM_HZ_ATOMIC(64, int64_t)
#undef FASIM_HZ_ATOMIC

void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

}  // extern "C"
