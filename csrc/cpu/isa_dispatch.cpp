// isa_dispatch.cpp - picks the CPU kernels at run time from cpu_isa() (cpu_features.h; no -march flags needed).
//
// x86-64 with AVX-512 (F+BW+VL+DQ, FMA, F16C; plus AVX512-BF16 for the bf16 dot-product kernels) selects the
// AVX-512 kernels of tile_kernels_avx512.cpp and decode_kernels_avx512.cpp; x86-64 with AVX2+FMA+F16C but no
// AVX-512 the AVX2 kernels of tile_kernels_avx2.cpp and decode_kernels_avx2.cpp; AArch64 (Advanced SIMD) the NEON
// kernels of tile_kernels_neon.cpp and decode_kernels_neon.cpp; everything else the portable kernels.
// x86-64 with AMX-BF16 granted by the OS adds the AMX tile products of tile_kernels_amx.cpp to the AVX-512 set.
// FLASH_ATTN_CY_CPU_ISA=portable|avx2|avx512|neon|amx|amx-emulated forces a set the CPU can run (tests check every path on one
// machine).
#include <cstring>
#include <string>

#include "cpu_features.h"
#include "decode_kernels.h"
#include "tile_kernels.h"

namespace fa_cpu {

const TileKernels<float> *select_kernels_f32(fa_dtype dt) {
    switch (cpu_isa()) {
        case CpuIsa::amx:
            if (const TileKernels<float> *k = amx_kernels(dt, cpu_amx_emulated())) return k;
            [[fallthrough]];  // other dtypes: the AVX-512 kernels
        case CpuIsa::avx512:
            if (const TileKernels<float> *k = avx512_kernels(dt)) return k;
            break;
        case CpuIsa::avx2:
            if (const TileKernels<float> *k = avx2_kernels(dt)) return k;
            break;
        case CpuIsa::neon:
            if (const TileKernels<float> *k = neon_kernels(dt)) return k;
            break;
        default: break;
    }
    return portable_kernels_f32(dt);
}

const DecodeKernels *select_decode_kernels(fa_dtype dt) {
    switch (cpu_isa()) {
        case CpuIsa::amx:  // decode reads each K/V row once per few query rows: memory-bound, no tile products
        case CpuIsa::avx512:
            if (const DecodeKernels *k = avx512_decode_kernels(dt)) return k;
            break;
        case CpuIsa::avx2:
            if (const DecodeKernels *k = avx2_decode_kernels(dt)) return k;
            break;
        case CpuIsa::neon:
            if (dt == FA_BF16 && cpu_features().neon_bf16)
                if (const DecodeKernels *k = neon_bf16dot_decode_kernels()) return k;
            if (const DecodeKernels *k = neon_decode_kernels(dt)) return k;
            break;
        default: break;
    }
    return portable_decode_kernels(dt);
}

namespace {

const char *isa_name(CpuIsaRequest r) {
    switch (r) {
        case CpuIsaRequest::avx2: return "avx2";
        case CpuIsaRequest::avx512: return "avx512";
        case CpuIsaRequest::neon: return "neon";
        case CpuIsaRequest::amx: return "amx";
        case CpuIsaRequest::amx_emulated: return "amx-emulated";
        default: return "portable";
    }
}

}  // namespace

// The first word is the kernel path in use (portable, avx2, neon, avx512, avx512-bf16 where the bf16 kernels use
// vdpbf16ps, amx or amx-emulated): `info` and `bench` print it (flash_attn_cy/_sysinfo.py cpu_kernel_path) so that timings from different
// machines can be compared, and the tests read the kernel set from it (tests/_cpu_isa.py).
const char *cpu_isa_description() {
    thread_local std::string s;
    const CpuIsa isa = cpu_isa();
    const CpuIsaRequest req = cpu_isa_request();
    const CpuFeatures &f = cpu_features();
    if (isa == CpuIsa::amx) {
        s = cpu_amx_emulated() ? "amx-emulated (bf16 and fp16 forward products on a scalar model of the AMX tiles; "
                                 "otherwise avx512-bf16)"
                               : "amx (bf16 and fp16 forward products on AMX tiles by TDPBF16PS, fp16 as exact bf16 "
                                 "hi/lo parts; otherwise avx512-bf16: fp32 FMA, bf16 decode and backward by vdpbf16ps, "
                                 "fp16 via vcvtph2ps)";
    } else if (isa == CpuIsa::avx512) {
        s = f.avx512bf16 ? "avx512-bf16 (fp32 FMA, bf16 vdpbf16ps, fp16 via vcvtph2ps)"
                         : "avx512 (fp32 FMA, bf16/fp16 converted to fp32)";
    } else if (isa == CpuIsa::avx2) {
        s = "avx2 (fp32 FMA, fp16 via vcvtph2ps, bf16 widened to fp32; backward: portable)";
    } else if (isa == CpuIsa::neon) {
        s = f.neon_bf16 ? "neon-bf16 (fp32 FMA, bf16 decode scores by BFDOT, fp16/bf16 otherwise widened to fp32; "
                          "backward: portable)"
                        : "neon (fp32 FMA, fp16/bf16 widened to fp32; backward: portable)";
    } else {
        s = "portable";
    }
    // A CPU with AMX whose OS withholds the tile state (or whose tiles failed the self-check): say why AMX is unused.
    if (!f.amx && (std::strncmp(f.amx_absent, "the OS", 6) == 0 || std::strncmp(f.amx_absent, "the AMX", 7) == 0))
        s += std::string(" (AMX not used: ") + f.amx_absent + ")";
    if (req != CpuIsaRequest::best && req != CpuIsaRequest::unknown) {
        const bool honoured = (req == CpuIsaRequest::portable && isa == CpuIsa::portable) ||
                              (req == CpuIsaRequest::avx2 && isa == CpuIsa::avx2) ||
                              (req == CpuIsaRequest::avx512 && isa == CpuIsa::avx512) ||
                              (req == CpuIsaRequest::neon && isa == CpuIsa::neon) ||
                              ((req == CpuIsaRequest::amx || req == CpuIsaRequest::amx_emulated) &&
                               isa == CpuIsa::amx);
        s += honoured ? std::string(" (forced by FLASH_ATTN_CY_CPU_ISA)")
                      : std::string(" (FLASH_ATTN_CY_CPU_ISA=") + isa_name(req) +
                            " ignored: this CPU cannot run those kernels)";
    }
    return s.c_str();
}

}  // namespace fa_cpu
