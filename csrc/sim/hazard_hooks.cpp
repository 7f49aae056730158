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
#define FASIM_TSAN_ATOMIC_NOTE(a, bytes, writes) note(a, bytes, (writes) ? kHzAtomic | kHzWrite : kHzAtomic, FASIM_RET())
#include "tsan_atomics.h"
#undef FASIM_TSAN_ATOMIC_NOTE

}  // extern "C"
