// isa_dispatch.cpp - picks the CPU kernels at run time from the CPU's features (no -march flags needed).
//
// x86-64: AVX-512F+BW+VL (plus AVX512-BF16 for the bf16 dot-product kernels, F16C for fp16) selects the AVX-512
// kernels of tile_kernels_avx512.cpp; everything else uses the portable kernels. The environment variable
// FLASH_ATTN_CY_CPU_ISA=portable forces the portable kernels (tests use it to check both paths on one machine).
#include <cstdlib>
#include <cstring>

#include "decode_kernels.h"
#include "tile_kernels.h"

namespace fa_cpu {
namespace {

struct CpuFeatures {
    bool avx512 = false;  // F + BW + VL + DQ
    bool avx512bf16 = false;
    bool f16c = false;
};

CpuFeatures detect() {
    CpuFeatures f;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    f.avx512bf16 = f.avx512 && __builtin_cpu_supports("avx512bf16");
    f.f16c = __builtin_cpu_supports("f16c");
#endif
    return f;
}

const CpuFeatures &features() {
    static const CpuFeatures f = detect();
    return f;
}

bool forced_portable() {
    const char *env = std::getenv("FLASH_ATTN_CY_CPU_ISA");
    return env && std::strcmp(env, "portable") == 0;
}

}  // namespace

bool cpu_has_avx512bf16() { return features().avx512bf16; }

const TileKernels<float> *select_kernels_f32(fa_dtype dt) {
    if (!forced_portable() && features().avx512) {
        if (const TileKernels<float> *k = avx512_kernels(dt)) return k;
    }
    return portable_kernels_f32(dt);
}

const DecodeKernels *select_decode_kernels(fa_dtype dt) {
    if (!forced_portable() && features().avx512) {
        if (const DecodeKernels *k = avx512_decode_kernels(dt)) return k;
    }
    return portable_decode_kernels(dt);
}

const char *cpu_isa_description() {
    if (forced_portable()) return "portable (forced by FLASH_ATTN_CY_CPU_ISA)";
    const CpuFeatures &f = features();
    if (f.avx512 && avx512_kernels(FA_F32)) {
        return f.avx512bf16 ? "avx512 (fp32 FMA, bf16 vdpbf16ps, fp16 via vcvtph2ps)"
                            : "avx512 (fp32 FMA, bf16/fp16 converted to fp32)";
    }
    return "portable";
}

}  // namespace fa_cpu
