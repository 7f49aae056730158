// fasim_counters.h - the kernel-side hooks of the work counters (csrc/sim/counters.h says what is counted and when).
//
// Empty unless the module is built for profiling (-DFASIM_PROFILE=1, flash_attn_cy/sim/_compile.py variant
// "profile"): then each hook is a call into the runtime (counters.cpp), which adds to the counts of the worker
// running the current simulated thread, or does nothing outside a counted run.
//
// Floating-point operations are counted where they pass through this compatibility layer, per element, by type:
// - simdgroup_multiply(_accumulate): one 8x8x8 multiply-accumulate per SIMD group = 2 * 8 * 8 * 8 = 1024 flops,
//   typed by its operands (fp16 when A and B are half, bf16 when bfloat, else fp32);
// - half and bfloat arithmetic (+ - * / through the operators of fasim_types.h): 1 flop each, typed fp16 / bf16;
// - float vector arithmetic (float2/3/4 + - * /): 1 flop per component (fp32);
// - fma: 2, mix: 3, dot of N components: 2N (typed by the element type); the math library's exp, exp2, log, log2,
//   sqrt, rsqrt, sin, cos, tanh, pow, ... (1 each, "transcendental", whatever the element type).
// Atomics count once per MSL operation (atomic_fetch_add_explicit & co.), whatever loads and compare-exchanges the
// simulator runs to perform it (the instrumented atomic builtins themselves are not counted).
// Scalar float arithmetic written with C operators (a + b on two floats) compiles to native host instructions that
// the simulator never sees, so it is NOT counted: counted fp32 flops are a lower bound.
#pragma once

#include <type_traits>

namespace fasim {

enum FlopKind : int { kFlopFp32 = 0, kFlopFp16, kFlopBf16, kFlopTranscendental, kFlopKinds };
enum AtomicOp : int { kAtomicLoadOp = 0, kAtomicStoreOp, kAtomicRmwOp };

}  // namespace fasim

#ifdef FASIM_PROFILE

struct half;
struct bfloat;

namespace fasim {

void prof_flops(int kind, unsigned n);  // counters.cpp
void prof_mma(int kind);                // one 8x8x8 multiply-accumulate of one SIMD group
void prof_atomic(const volatile void *addr, unsigned bytes, int op);  // one MSL atomic operation (fasim_atomic.h)

// The flop kind of arithmetic on T, or -1 when T is not a floating-point type (integer vectors are not counted).
template <class T>
constexpr int flop_kind() {
    return std::is_same<T, float>::value    ? kFlopFp32
           : std::is_same<T, half>::value   ? kFlopFp16
           : std::is_same<T, bfloat>::value ? kFlopBf16
                                            : -1;
}

// The type of an 8x8x8 multiply-accumulate with operands of types A and B (the accumulator is float or like them).
template <class A, class B>
constexpr int mma_kind() {
    return std::is_same<A, half>::value && std::is_same<B, half>::value       ? kFlopFp16
           : std::is_same<A, bfloat>::value && std::is_same<B, bfloat>::value ? kFlopBf16
                                                                              : kFlopFp32;
}

}  // namespace fasim

// Not in a constant evaluation (constexpr half arithmetic, fasim_types.h): nothing runs there to be counted.
#define FASIM_COUNT_FLOPS(KIND, N)                              \
    do {                                                        \
        if ((KIND) >= 0 && !__builtin_is_constant_evaluated()) ::fasim::prof_flops((KIND), (N)); \
    } while (0)
#define FASIM_COUNT_FLOPS_OF(T, N) FASIM_COUNT_FLOPS(::fasim::flop_kind<T>(), (N))
#define FASIM_COUNT_MMA(KIND) ::fasim::prof_mma(KIND)
#define FASIM_COUNT_ATOMIC(ADDR, BYTES, OP) ::fasim::prof_atomic((ADDR), (BYTES), (OP))

#else

#define FASIM_COUNT_FLOPS(KIND, N) ((void)0)
#define FASIM_COUNT_FLOPS_OF(T, N) ((void)0)
#define FASIM_COUNT_MMA(KIND) ((void)0)
#define FASIM_COUNT_ATOMIC(ADDR, BYTES, OP) ((void)0)

#endif
