// cpu_features.cpp - runtime CPU-feature detection and the FLASH_ATTN_CY_CPU_ISA override (see cpu_features.h).
#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace fa_cpu {
namespace {

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    f.avx512bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
#endif
    return f;
}

}  // namespace

const CpuFeatures &cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

bool cpu_isa_forced_portable() {
    const char *env = std::getenv("FLASH_ATTN_CY_CPU_ISA");
    return env && std::strcmp(env, "portable") == 0;
}

}  // namespace fa_cpu
