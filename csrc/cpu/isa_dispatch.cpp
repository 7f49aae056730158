// isa_dispatch.cpp - picks the CPU kernels at run time from the CPU's features (no -march flags needed).
//
// x86-64 with AVX-512 (cpu_features.h: F+BW+VL+DQ, FMA, F16C; plus AVX512-BF16 for the bf16 dot-product kernels)
// selects the AVX-512 kernels of tile_kernels_avx512.cpp and decode_kernels_avx512.cpp; everything else uses the
// portable kernels. FLASH_ATTN_CY_CPU_ISA=portable forces the portable kernels (tests check both paths on one machine).
#include "cpu_features.h"
#include "decode_kernels.h"
#include "tile_kernels.h"

namespace fa_cpu {

const TileKernels<float> *select_kernels_f32(fa_dtype dt) {
    if (cpu_use_avx512()) {
        if (const TileKernels<float> *k = avx512_kernels(dt)) return k;
    }
    return portable_kernels_f32(dt);
}

const DecodeKernels *select_decode_kernels(fa_dtype dt) {
    if (cpu_use_avx512()) {
        if (const DecodeKernels *k = avx512_decode_kernels(dt)) return k;
    }
    return portable_decode_kernels(dt);
}

const char *cpu_isa_description() {
    // The first word is the kernel path's short name (avx512-bf16, avx512, portable): `info` and `bench` print it
    // (flash_attn_cy/_sysinfo.py cpu_kernel_path) so that timings from different machines can be compared.
    if (cpu_isa_forced_portable()) return "portable (forced by FLASH_ATTN_CY_CPU_ISA)";
    const CpuFeatures &f = cpu_features();
    if (f.avx512 && avx512_kernels(FA_F32)) {
        return f.avx512bf16 ? "avx512-bf16 (fp32 FMA, bf16 vdpbf16ps, fp16 via vcvtph2ps)"
                            : "avx512 (fp32 FMA, bf16/fp16 converted to fp32)";
    }
    return "portable";
}

}  // namespace fa_cpu
