// bwd_kernel_select.cpp - picks the float kernel table of the CPU backward from the CPU's features at run time.
//
// Same rule as the forward's csrc/cpu/isa_dispatch.cpp: AVX-512F+BW+VL+DQ selects the AVX-512 kernels (plus the
// bf16 pair products with AVX512-BF16), anything else the portable ones, and FLASH_ATTN_CY_CPU_ISA=portable forces the portable kernels (read on every call, so a test
// can switch paths inside one process).
#include <cstdlib>
#include <cstring>

#include "bwd_kernels.h"

namespace fa_bwd {
namespace {

struct Features {
    bool avx512 = false, avx512bf16 = false;
};

Features detect() {
    Features f;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    f.avx512bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
    return f;
}

bool forced_portable() {
    const char *env = std::getenv("FLASH_ATTN_CY_CPU_ISA");
    return env && std::strcmp(env, "portable") == 0;
}

}  // namespace

const BwdKernelsF32 *select_bwd_kernels_f32() {
    static const Features f = detect();
    if (f.avx512 && !forced_portable())
        if (const BwdKernelsF32 *k = bwd_avx512_kernels_f32(f.avx512bf16)) return k;
    return bwd_portable_kernels_f32();
}

}  // namespace fa_bwd
