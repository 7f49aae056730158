// cpu_features.h - the one place that asks the CPU what it can run, and the FLASH_ATTN_CY_CPU_ISA override; the
// forward's and decode's kernel choice (isa_dispatch.cpp) and the backward's (csrc/cpu/backward/bwd_kernel_select.cpp) all
// decide from cpu_isa().
#pragma once

#include "call_env.h"

namespace fa_cpu {

struct CpuFeatures {
    // Everything the FA_ISA_AVX512 target regions (avx512_common.h) are compiled for: AVX-512 F+BW+VL+DQ, FMA, F16C.
    bool avx512 = false;
    bool avx512bf16 = false;  // avx512 plus AVX512-BF16 (vdpbf16ps): FA_ISA_AVX512_BF16
    bool avx2 = false;        // AVX2 + FMA + F16C: FA_ISA_AVX2 (avx2_common.h)
    // avx512bf16 plus AMX-TILE + AMX-BF16, enabled by the OS (XCR0) and granted to this process (Linux:
    // arch_prctl(ARCH_REQ_XCOMP_PERM), asked once here): FA_ISA_AMX (amx_tiles.h)
    bool amx = false;
    bool amx_fp16 = false;     // the CPU also has AMX-FP16 (reported only; no kernel uses it yet)
    const char *amx_absent = "";  // why amx is false on a CPU that has AMX (the OS refused it), for `info`
    bool neon = false;        // AArch64 Advanced SIMD (HWCAP_ASIMD), in an AArch64 build (neon_common.h)
    bool neon_bf16 = false;   // neon plus the bf16 extension (FEAT_BF16: BFDOT): FA_NEON_BF16_BEGIN regions
};

// Detected once per process. For tests only, FLASH_ATTN_CY_CPU_HIDE (read once, at the first detection) hides
// features from it: a comma list of "amx", "avx512" (hiding it hides amx too), "avx2" (hiding avx2 hides avx512
// too), "neon", "neon-bf16"
// (hiding neon hides it too), so one machine can act as a CPU without AVX-512, AVX2, NEON or its bf16 extension (run such a test in a fresh process).
const CpuFeatures &cpu_features();

// The kernel sets, best last.
// amx: the AVX-512 kernels, with the bf16 forward's products on AMX tiles (hardware, or their scalar model when
// FLASH_ATTN_CY_CPU_ISA=amx-emulated: cpu_amx_emulated()).
enum class CpuIsa { portable, avx2, avx512, neon, amx };

// The kernel set the CPU paths use now. FLASH_ATTN_CY_CPU_ISA (read on every call, so a test can switch paths inside
// one process) forces one: "portable", "avx2", "avx512", "neon", "amx", or "amx-emulated" (the AMX kernels on the
// tiles' scalar model, for testing them on any CPU with AVX512-BF16; slow); a forced set this CPU cannot run, an unknown value, or no
// value gives the best set the CPU has (the Python package warns at import about the first two).
CpuIsa cpu_isa();

// What FLASH_ATTN_CY_CPU_ISA asks for now (the CpuIsaRequest of call_env.h: read once per ABI call).
CpuIsaRequest cpu_isa_request();

// The best kernel set this CPU can run (ignores FLASH_ATTN_CY_CPU_ISA).
CpuIsa cpu_isa_best();

// The AMX set is the AVX-512 set with some products on tiles: everything else runs the AVX-512 kernels.
inline bool cpu_use_avx512() { return cpu_isa() == CpuIsa::avx512 || cpu_isa() == CpuIsa::amx; }
// cpu_isa() is amx and its tiles are the scalar model (FLASH_ATTN_CY_CPU_ISA=amx-emulated).
bool cpu_amx_emulated();
inline bool cpu_use_avx2() { return cpu_isa() == CpuIsa::avx2; }

}  // namespace fa_cpu
