// neon_common.h - what the Arm NEON kernel files (tile_kernels_neon.cpp, decode_kernels_neon.cpp) share: the
// vector-ops traits (Ops) the ISA-neutral kernel bodies (lane_kernels.h, decode_simd.h) are instantiated with,
// including 4-element loads widened to fp32, horizontal reductions and a vector exp2 that is safe for every input
// (simd_generic.h, shared with AVX2).
//
// AArch64 makes Advanced SIMD (NEON) with fp32 FMA and fp16 <-> fp32 conversion part of the base architecture (Arm
// ARM, A1.5 "Advanced SIMD and floating-point support": every Armv8-A AArch64 implementation has them), so these
// kernels need no target region and no compiler flag; cpu_features() still checks HWCAP_ASIMD so that the kernel
// choice is made from what the OS reports. FA_HAVE_NEON_KERNELS: "compiled in" (an AArch64 build).
#pragma once

#if defined(__aarch64__) && defined(__ARM_NEON)
#define FA_HAVE_NEON_KERNELS 1
#include <arm_neon.h>

#include <cmath>
#include <cstddef>
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

#include "simd_generic.h"  // the ISA-neutral helpers (exp2, widening row loads)

namespace fa_cpu {
namespace neon {

// The vector operations the ISA-neutral kernel bodies (simd_generic.h, lane_kernels.h, decode_simd.h) are written
// over: 4 fp32 lanes, one intrinsic each.
struct Ops {
    using vec = float32x4_t;
    using mask = uint32x4_t;  // all-ones / all-zeros lanes
    static constexpr int N = 4;
    // The kernel tables' names (tile and decode), by dtype: fp32, fp16, bf16.
    static constexpr const char *names[3] = {"neon-f32", "neon-f16", "neon-bf16"};
    // Register tiles of the query-lane products (lane_kernels.h, 32 q registers): 6 rows x 16 lanes = 24
    // accumulators + 4 B vectors + the A values; no 32-lane tile.
    static constexpr int PAIR_ROWS = 0;
    static constexpr int ROWS = 6;
    // Query rows of a KV head sharing a decode K/V vector load (decode_simd.h): 4 keys x 4 rows = 16 accumulators + 4
    // K vectors + q, so every row of a KV head is served in one pass over its K/V vectors.
    static constexpr int DECODE_ROWS = 4;
    static vec zero() { return vdupq_n_f32(0.0f); }
    static vec set1(float x) { return vdupq_n_f32(x); }
    static vec load(const float *p) { return vld1q_f32(p); }
    static void store(float *p, vec x) { vst1q_f32(p, x); }
    static vec bcast(const float *p) { return vld1q_dup_f32(p); }
    static vec add(vec a, vec b) { return vaddq_f32(a, b); }
    static vec sub(vec a, vec b) { return vsubq_f32(a, b); }
    static vec mul(vec a, vec b) { return vmulq_f32(a, b); }
    static vec max(vec a, vec b) { return vmaxq_f32(a, b); }  // FMAX: NaN if either is NaN
    static vec min(vec a, vec b) { return vminq_f32(a, b); }
    static vec fma(vec a, vec b, vec c) { return vfmaq_f32(c, a, b); }  // a*b + c, one rounding
    // a * b rounded to fp32 on its own: the asm barrier keeps the compiler from fusing it with a subtraction that
    // follows (GCC contracts a multiply-subtract into an FMA by default).
    static vec mul_rounded(vec a, vec b) {
        vec t = vmulq_f32(a, b);
        __asm__("" : "+w"(t));
        return t;
    }
    // x with its -inf lanes replaced by 0
    static vec zero_where_neg_inf(vec x) { return vbslq_f32(vceqq_f32(x, vdupq_n_f32(-INFINITY)), vdupq_n_f32(0.0f), x); }
    static bool all_one(vec x) { return vminvq_u32(vceqq_f32(x, vdupq_n_f32(1.0f))) != 0; }
    static mask lanes_below(int n) {
        const int32x4_t lane = {0, 1, 2, 3};
        return vcgtq_s32(vdupq_n_s32(n), lane);
    }
    static vec select(mask m, vec a, vec b) { return vbslq_f32(m, a, b); }  // a where m
    static vec round_even(vec x) { return vrndnq_f32(x); }  // round to nearest, ties to even
    // 2^n for integral n in [-127, 127]: biased exponent n + 127 in [0, 254], where 0 encodes +0 (the flush of
    // x <= -126.5 in exp2), 254 encodes 2^127. A NaN n converts to 0 (exponent 127: 1.0); exp2's polynomial is NaN
    // already then, so the product stays NaN.
    static vec pow2i(vec n) { return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23)); }
    // 4 elements of a row at base[idx] widened to fp32 (fp16 by fcvtl, bf16 by a 16-bit shift: both exact).
    template <fa_dtype DT>
    static vec load_wide(const void *base, int64_t idx) {
        if (DT == FA_F32) return vld1q_f32(static_cast<const float *>(base) + idx);
        const uint16x4_t h = vld1_u16(static_cast<const uint16_t *>(base) + idx);
        if (DT == FA_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
        return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
    }
    // Elements [c, c+4) of a row of d elements, zero past d (reads nothing past the row).
    template <fa_dtype DT>
    static vec load_upto(const void *base, int64_t row0, int c, int d) {
        return simd::load_upto<Ops, DT>(base, row0, c, d);
    }
    // 2^x for any x (the argument is clamped, NaN stays NaN; the same polynomial as AVX2's).
    static vec exp2(vec x) { return simd::exp2_clamped<Ops>(x); }
    static float hsum(vec x) { return vaddvq_f32(x); }
    static float hmax(vec x) { return vmaxvq_f32(x); }
    // p[0..4) = [sum a0, sum a1, sum a2, sum a3]
    static void store_hsum4(float *p, vec a0, vec a1, vec a2, vec a3) { vst1q_f32(p, hsum4(a0, a1, a2, a3)); }
    // [sum a0, sum a1, sum a2, sum a3] by pairwise adds (the transposed reduction of four dot products).
    static vec hsum4(vec a0, vec a1, vec a2, vec a3) { return vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3)); }
    // s[j] for j < 16 from the 4 key groups of one decode row (x + 16g holds keys g, g+4, g+8, g+12): a 4x4 transpose,
    // lanes (x0[u], x1[u], x2[u], x3[u]) = keys 4u .. 4u+3.
    static void transpose_groups(const float *x, float *s) {
        const float32x4_t x0 = vld1q_f32(x), x1 = vld1q_f32(x + 16), x2 = vld1q_f32(x + 32), x3 = vld1q_f32(x + 48);
        const float32x4_t t0 = vtrn1q_f32(x0, x1), t1 = vtrn2q_f32(x0, x1);
        const float32x4_t t2 = vtrn1q_f32(x2, x3), t3 = vtrn2q_f32(x2, x3);
        vst1q_f32(s, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
        vst1q_f32(s + 4, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
        vst1q_f32(s + 8, vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
        vst1q_f32(s + 12, vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
    }
};

}  // namespace neon
}  // namespace fa_cpu
#endif
