// cpu_features.cpp - runtime CPU-feature detection and the FLASH_ATTN_CY_CPU_ISA override (see cpu_features.h).
#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <cerrno>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#include "neon_common.h"
#include "tile_kernels.h"  // amx_tiles_self_check

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

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// AMX: the CPU's AMX-TILE and AMX-BF16 (CPUID leaf 7), the OS's tile state (XCR0 bits 17, 18) and, on Linux, this
// process's permission to use the tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), Linux 5.16+):
// without it the first tile instruction faults. Returns "" when usable, else why not.
const char *detect_amx(bool &amx_fp16) {
    unsigned a, b, c, d;
    amx_fp16 = false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 22) & 1)) return "no AMX-BF16 on this CPU";
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) amx_fp16 = (a >> 21) & 1;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return "the OS does not enable XSAVE";
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & (3u << 17)) != (3u << 17)) return "the OS does not enable the AMX tile state";
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
        return errno == EPERM ? "the OS refused this process the AMX tile data (arch_prctl: EPERM)"
                              : "the OS refused this process the AMX tile data (arch_prctl failed)";
    if (!amx_tiles_self_check()) return "the AMX self-check failed: a tile product disagreed with its model";
    return "";
#else
    return "AMX is used on Linux only";
#endif
}
#endif

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
    // Asked only where the kernels could use it (the permission request is a system call), and never when hidden.
    if (f.avx512bf16 && !hidden("amx")) {
        f.amx_absent = detect_amx(f.amx_fp16);
        f.amx = *f.amx_absent == '\0';
    }
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

CpuIsaRequest cpu_isa_request() { return call_env().isa_request; }

CpuIsa cpu_isa_best() {
    const CpuFeatures &f = cpu_features();
    return f.amx ? CpuIsa::amx : f.avx512 ? CpuIsa::avx512 : f.avx2 ? CpuIsa::avx2 : f.neon ? CpuIsa::neon : CpuIsa::portable;
}

CpuIsa cpu_isa() {
    const CpuFeatures &f = cpu_features();
    switch (cpu_isa_request()) {
        case CpuIsaRequest::portable: return CpuIsa::portable;
        case CpuIsaRequest::avx2: if (f.avx2) return CpuIsa::avx2; break;
        case CpuIsaRequest::avx512: if (f.avx512) return CpuIsa::avx512; break;
        case CpuIsaRequest::neon: if (f.neon) return CpuIsa::neon; break;
        case CpuIsaRequest::amx: if (f.amx) return CpuIsa::amx; break;
        case CpuIsaRequest::amx_emulated: if (f.avx512bf16) return CpuIsa::amx; break;
        default: break;
    }
    return cpu_isa_best();
}

bool cpu_amx_emulated() {
    return cpu_isa_request() == CpuIsaRequest::amx_emulated && cpu_isa() == CpuIsa::amx;
}

}  // namespace fa_cpu
