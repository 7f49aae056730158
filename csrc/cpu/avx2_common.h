// avx2_common.h - what the AVX2 kernel files (tile_kernels_avx2.cpp, decode_kernels_avx2.cpp) share: their target
// ISA and the vector-ops traits (Ops) the ISA-neutral kernel bodies (lane_kernels.h, decode_simd.h) are instantiated
// with, including 8-element loads widened to fp32 and a vector exp2 that is safe for every input (both from
// simd_generic.h, shared with NEON).
//
// The target-region macros (FA_TARGET_BEGIN / FA_TARGET_END) and FA_HAVE_AVX512_KERNELS (x86-64 with GCC or clang,
// i.e. "ISA target regions can be compiled here") come from avx512_common.h. Functions inside
// FA_TARGET_BEGIN(FA_ISA_AVX2) may only run after cpu_features().avx2 was checked (isa_dispatch.cpp).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "avx512_common.h"
#include "fa_abi.h"

#ifdef FA_HAVE_AVX512_KERNELS
#define FA_HAVE_AVX2_KERNELS 1
#define FA_ISA_AVX2 "avx2,fma,f16c"

// The ISA-neutral helpers (exp2, widening row loads), given the AVX2 target by this region.
FA_TARGET_BEGIN(FA_ISA_AVX2)
#include "simd_generic.h"
FA_TARGET_END

namespace fa_cpu {
namespace avx2 {

FA_TARGET_BEGIN(FA_ISA_AVX2)

// The vector operations the ISA-neutral kernel bodies (simd_generic.h, lane_kernels.h, decode_simd.h) are written
// over: 8 fp32 lanes, one intrinsic each, so those bodies compile to what hand-written AVX2 would be.
struct Ops {
    using vec = __m256;
    using mask = __m256;  // all-ones / all-zeros lanes
    static constexpr int N = 8;
    // The kernel tables' names (tile and decode), by dtype: fp32, fp16, bf16.
    static constexpr const char *names[3] = {"avx2-f32", "avx2-f16", "avx2-bf16"};
    // Register tiles of the query-lane products (lane_kernels.h, 16 ymm registers): 3 rows x 32 lanes (12
    // accumulators + 4 B vectors + 1 broadcast: 17 values, the compiler re-reads one from L1; measured ~8% faster
    // than 6 x 16 lanes alone on Zen 4: fewer loads per FMA), an odd last 16-lane vector 6 rows x 16 lanes.
    static constexpr int PAIR_ROWS = 3;
    static constexpr int ROWS = 6;
    // Query rows of a KV head sharing a decode K/V vector load (decode_simd.h): 4 keys x 2 rows = 8 accumulators + 4
    // K vectors + q; 3-4 rows take a second pass over the head's K/V vectors, from L1.
    static constexpr int DECODE_ROWS = 2;
    static vec zero() { return _mm256_setzero_ps(); }
    static vec set1(float x) { return _mm256_set1_ps(x); }
    static vec load(const float *p) { return _mm256_load_ps(p); }
    static void store(float *p, vec x) { _mm256_store_ps(p, x); }
    static vec bcast(const float *p) { return _mm256_broadcast_ss(p); }
    static vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
    static vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
    static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
    static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }  // b when either is NaN
    static vec min(vec a, vec b) { return _mm256_min_ps(a, b); }  // b when either is NaN
    static vec fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }  // a*b + c, one rounding
    // a * b rounded to fp32 on its own: the asm barrier keeps the compiler from fusing it with a subtraction that
    // follows (GCC contracts vector multiply-subtract into an FMA by default).
    static vec mul_rounded(vec a, vec b) {
        vec t = _mm256_mul_ps(a, b);
        __asm__("" : "+x"(t));
        return t;
    }
    // x with its -inf lanes replaced by 0
    static vec zero_where_neg_inf(vec x) {
        return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
    }
    static bool all_one(vec x) { return _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(1.0f), _CMP_EQ_OQ)) == 0xff; }
    static mask lanes_below(int n) {
        return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    }
    static vec select(mask m, vec a, vec b) { return _mm256_blendv_ps(b, a, m); }  // a where m
    static vec round_even(vec x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    // 2^n for integral n in [-127, 127]: biased exponent n + 127 in [0, 254], where 0 encodes +0 (the flush of
    // x <= -126.5 in exp2), 254 encodes 2^127
    static vec pow2i(vec n) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    }
    // 8 elements of a row at base[idx] widened to fp32 (fp16 by vcvtph2ps, bf16 by a 16-bit shift: exact).
    template <fa_dtype DT>
    static vec load_wide(const void *base, int64_t idx) {
        if (DT == FA_F32) return _mm256_loadu_ps(static_cast<const float *>(base) + idx);
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(static_cast<const uint16_t *>(base) + idx));
        if (DT == FA_F16) return _mm256_cvtph_ps(h);
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    // Elements [c, c+8) of a row of d elements, zero past d (reads nothing past the row).
    template <fa_dtype DT>
    static vec load_upto(const void *base, int64_t row0, int c, int d) {
        return simd::load_upto<Ops, DT>(base, row0, c, d);
    }
    // 2^x for any x (the argument is clamped, NaN stays NaN).
    static vec exp2(vec x) { return simd::exp2_clamped<Ops>(x); }
    static float hsum(vec x) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
    }
    static float hmax(vec x) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
    }
    // p[0..4) = [sum a0, sum a1, sum a2, sum a3]
    static void store_hsum4(float *p, vec a0, vec a1, vec a2, vec a3) {
        const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        _mm_store_ps(p, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    }
    // s[j] for j < 16 from the 4 key groups of one decode row (x + 16g holds keys g, g+4, g+8, g+12): a 4x4 transpose.
    static void transpose_groups(const float *x, float *s) {
        __m128 x0 = _mm_load_ps(x), x1 = _mm_load_ps(x + 16), x2 = _mm_load_ps(x + 32), x3 = _mm_load_ps(x + 48);
        _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
        _mm_store_ps(s, x0);
        _mm_store_ps(s + 4, x1);
        _mm_store_ps(s + 8, x2);
        _mm_store_ps(s + 12, x3);
    }
};

FA_TARGET_END

}  // namespace avx2
}  // namespace fa_cpu
#endif
