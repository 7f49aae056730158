// cpu_features.cpp - runtime CPU-feature detection and the FLASH_ATTN_CY_CPU_ISA override (see cpu_features.h).
#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#include "neon_common.h"

namespace fa_cpu {
namespace {

// FLASH_ATTN_CY_CPU_HIDE (tests only): does the comma list name `feature`?
bool hidden(const char *feature) {
    const char *env = std::getenv("FLASH_ATTN_CY_CPU_HIDE");
    if (!env) return false;
    const size_t n = std::strlen(feature);
    for (const char *p = env; *p;) {
        const char *end = std::strchr(p, ',');
        const size_t len = end ? size_t(end - p) : std::strlen(p);
        if (len == n && std::strncmp(p, feature, n) == 0) return true;
        if (!end) break;
        p = end + 1;
    }
    return false;
}

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    f.avx512bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    if (hidden("avx2")) f.avx2 = false;
    if (hidden("avx512") || !f.avx2) f.avx512 = f.avx512bf16 = false;  // no AVX-512 machine lacks AVX2
#endif
#ifdef FA_HAVE_NEON_KERNELS
#if defined(__linux__)
    f.neon = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
    f.neon_bf16 = f.neon && (getauxval(AT_HWCAP2) & HWCAP2_BF16) != 0;
#elif defined(__APPLE__)
    f.neon = true;  // every Apple silicon machine has Advanced SIMD
    int has_bf16 = 0;
    size_t len = sizeof has_bf16;
    f.neon_bf16 = sysctlbyname("hw.optional.arm.FEAT_BF16", &has_bf16, &len, nullptr, 0) == 0 && has_bf16 != 0;
#else
    f.neon = true;  // Advanced SIMD is part of every AArch64 implementation
#endif
    if (hidden("neon")) f.neon = false;
    if (hidden("neon-bf16") || !f.neon) f.neon_bf16 = false;
#endif
    return f;
}

}  // namespace

const CpuFeatures &cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

CpuIsaRequest cpu_isa_request() {
    const char *env = std::getenv("FLASH_ATTN_CY_CPU_ISA");
    if (!env || !*env) return CpuIsaRequest::best;
    if (std::strcmp(env, "portable") == 0) return CpuIsaRequest::portable;
    if (std::strcmp(env, "avx2") == 0) return CpuIsaRequest::avx2;
    if (std::strcmp(env, "avx512") == 0) return CpuIsaRequest::avx512;
    if (std::strcmp(env, "neon") == 0) return CpuIsaRequest::neon;
    return CpuIsaRequest::unknown;
}

CpuIsa cpu_isa_best() {
    const CpuFeatures &f = cpu_features();
    return f.avx512 ? CpuIsa::avx512 : f.avx2 ? CpuIsa::avx2 : f.neon ? CpuIsa::neon : CpuIsa::portable;
}

CpuIsa cpu_isa() {
    const CpuFeatures &f = cpu_features();
    switch (cpu_isa_request()) {
        case CpuIsaRequest::portable: return CpuIsa::portable;
        case CpuIsaRequest::avx2: if (f.avx2) return CpuIsa::avx2; break;
        case CpuIsaRequest::avx512: if (f.avx512) return CpuIsa::avx512; break;
        case CpuIsaRequest::neon: if (f.neon) return CpuIsa::neon; break;
        default: break;
    }
    return cpu_isa_best();
}

}  // namespace fa_cpu
