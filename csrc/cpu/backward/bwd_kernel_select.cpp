// bwd_kernel_select.cpp - picks the float kernel table of the CPU backward from the CPU's features at run time.
//
// From the forward's choice (csrc/cpu/cpu_features.h cpu_isa(), which applies FLASH_ATTN_CY_CPU_ISA on every call):
// AMX selects the AVX-512 kernels with the bf16 pair products on AMX tiles; AVX-512 the AVX-512 kernels (plus the bf16
// pair products with AVX512-BF16); avx2 and portable the portable ones (the backward has no AVX2 kernels yet).
#include "bwd_kernels.h"
#include "cpu/cpu_features.h"

namespace fa_bwd {

const BwdKernelsF32 *select_bwd_kernels_f32() {
    if (fa_cpu::cpu_isa() == fa_cpu::CpuIsa::amx)
        if (const BwdKernelsF32 *k = bwd_amx_kernels_f32(fa_cpu::cpu_amx_emulated())) return k;
    if (fa_cpu::cpu_use_avx512())
        if (const BwdKernelsF32 *k = bwd_avx512_kernels_f32(fa_cpu::cpu_features().avx512bf16)) return k;
    return bwd_portable_kernels_f32();
}

}  // namespace fa_bwd
