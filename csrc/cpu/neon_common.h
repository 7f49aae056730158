// neon_common.h - what the Arm NEON kernel files (tile_kernels_neon.cpp, decode_kernels_neon.cpp) share: 4-element
// loads widened to fp32, horizontal reductions and a vector exp2 that is safe for every input.
//
// AArch64 makes Advanced SIMD (NEON) with fp32 FMA and fp16 <-> fp32 conversion part of the base architecture (Arm
// ARM, A1.5 "Advanced SIMD and floating-point support": every Armv8-A AArch64 implementation has them), so these
// kernels need no target region and no compiler flag; cpu_features() still checks HWCAP_ASIMD so that the kernel
// choice is made from what the OS reports. FA_HAVE_NEON_KERNELS: "compiled in" (an AArch64 build).
#pragma once

#if defined(__aarch64__) && defined(__ARM_NEON)
#define FA_HAVE_NEON_KERNELS 1
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "fa_abi.h"

// Regions of functions compiled for the bf16 extension (FEAT_BF16: BFDOT, Armv8.6-A, optional from Armv8.2-A), which
// may only run after cpu_features().neon_bf16 was checked. GCC takes a target pragma; clang an attribute applied to
// every function of the region.
#define FA_NEON_STR(x) #x
#if defined(__clang__)
#define FA_NEON_BF16_BEGIN \
    _Pragma(FA_NEON_STR(clang attribute push(__attribute__((target("bf16"))), apply_to = function)))
#define FA_NEON_BF16_END _Pragma("clang attribute pop")
#else
#define FA_NEON_BF16_BEGIN _Pragma("GCC push_options") _Pragma(FA_NEON_STR(GCC target("arch=armv8.2-a+bf16")))
#define FA_NEON_BF16_END _Pragma("GCC pop_options")
#endif

namespace fa_cpu {
namespace neon {

// 2^x for any x: NaN stays NaN (FMAX/FMIN propagate NaN on AArch64); x is clamped to [-127, 127] first, so no finite
// or infinite input can push the exponent field out of range (x <= -126.5, including -inf from masked logits, gives
// exactly 0; x >= 127 gives 2^127). x = n + f with |f| <= 1/2; 2^f by sum_k (ln2)^k/k! f^k, k <= 7 (truncation
// < 6e-9 relative); 2^n built in the exponent field. The same polynomial as avx2_common.h's exp2_ps.
inline float32x4_t exp2_ps(float32x4_t x) {
    constexpr float c[8] = {1.0f, 0.693147180559945f, 0.240226506959101f, 0.0555041086648216f,
                            0.00961812910762848f, 0.00133335581464284f, 0.000154035303933816f,
                            1.52527338040598e-05f};
    x = vmaxq_f32(vdupq_n_f32(-127.0f), x);
    x = vminq_f32(vdupq_n_f32(127.0f), x);
    const float32x4_t n = vrndnq_f32(x);  // round to nearest, ties to even
    const float32x4_t f = vsubq_f32(x, n);
    float32x4_t p = vdupq_n_f32(c[7]);
    for (int k = 6; k >= 0; --k) p = vfmaq_f32(vdupq_n_f32(c[k]), p, f);
    // biased exponent n + 127 in [0, 254]: 0 encodes +0 (the flush of x <= -126.5), 254 encodes 2^127. A NaN n
    // converts to 0 (exponent 127: 1.0), and p is NaN already, so the product stays NaN.
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

// 4 elements of a row at base[idx] widened to fp32 (fp16 by fcvtl, bf16 by a 16-bit shift: both exact).
template <fa_dtype DT>
inline float32x4_t load4(const void *base, int64_t idx) {
    if (DT == FA_F32) return vld1q_f32(static_cast<const float *>(base) + idx);
    if (DT == FA_F16) {
        const uint16x4_t h = vld1_u16(static_cast<const uint16_t *>(base) + idx);
        return vcvt_f32_f16(vreinterpret_f16_u16(h));
    }
    const uint16x4_t h = vld1_u16(static_cast<const uint16_t *>(base) + idx);
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

// The first n (< 4) elements at base[idx], the other lanes 0; reads nothing past element n-1.
template <fa_dtype DT>
inline float32x4_t load4_tail(const void *base, int64_t idx, int n) {
    constexpr size_t esz = DT == FA_F32 ? 4 : 2;
    alignas(16) unsigned char tmp[16] = {};
    std::memcpy(tmp, static_cast<const unsigned char *>(base) + idx * int64_t(esz), size_t(n) * esz);
    return load4<DT>(tmp, 0);
}

// Elements [c, c+4) of a row of d elements, zero past d.
template <fa_dtype DT>
inline float32x4_t load4_upto(const void *base, int64_t row0, int c, int d) {
    return d - c >= 4 ? load4<DT>(base, row0 + c) : load4_tail<DT>(base, row0 + c, d - c);
}

// [sum a0, sum a1, sum a2, sum a3] by pairwise adds (the transposed reduction of four dot products).
inline float32x4_t hsum4(float32x4_t a0, float32x4_t a1, float32x4_t a2, float32x4_t a3) {
    return vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3));
}

}  // namespace neon
}  // namespace fa_cpu
#endif
