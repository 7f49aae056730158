// cpu_features.h - the one place that asks the CPU what it can run; the forward's kernel choice (isa_dispatch.cpp)
// and the backward's (csrc/bwd/bwd_kernel_select.cpp) both decide from it.
#pragma once

namespace fa_cpu {

struct CpuFeatures {
    // Everything the FA_ISA_AVX512 target regions (avx512_common.h) are compiled for: AVX-512 F+BW+VL+DQ, FMA, F16C.
    bool avx512 = false;
    bool avx512bf16 = false;  // avx512 plus AVX512-BF16 (vdpbf16ps): FA_ISA_AVX512_BF16
};

// Detected once per process.
const CpuFeatures &cpu_features();

// FLASH_ATTN_CY_CPU_ISA=portable: every CPU path uses its portable kernels. Read on every call, so a test can switch
// paths inside one process.
bool cpu_isa_forced_portable();

// What the kernel selections may use: cpu_features(), or nothing when the portable path is forced.
inline bool cpu_use_avx512() { return !cpu_isa_forced_portable() && cpu_features().avx512; }

}  // namespace fa_cpu
