// avx512_common.h - what the AVX-512 kernel files (forward, decode, backward) share: target-region macros, lane
// masks, widening loads and the vector exp2 variants.
//
// Include it only from x86-64 builds (FA_HAVE_AVX512_KERNELS is defined then). Functions defined between
// FA_TARGET_BEGIN(isa) and FA_TARGET_END are compiled for that ISA without any -march flag; they may only be
// called after runtime CPU-feature dispatch (cpu_features.h) has checked the CPU.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FA_HAVE_AVX512_KERNELS 1
#include <immintrin.h>

#include <cstdint>

#include "exp2_poly.h"
#include "fa_abi.h"  // fa_dtype

// Regions of functions compiled for an extra ISA. GCC uses target pragmas; clang (Linux, Intel Macs) needs an
// attribute applied to every function of the region.
#define FA_STR(x) #x
#if defined(__clang__)
#define FA_TARGET_BEGIN(isa) _Pragma(FA_STR(clang attribute push(__attribute__((target(isa))), apply_to = function)))
#define FA_TARGET_END _Pragma("clang attribute pop")
#else
// GCC 12 reports false "may be used uninitialized" warnings inside its own AVX-512 intrinsic headers
// (the _mm512_undefined_* idiom) when they are inlined under a target pragma.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define FA_TARGET_BEGIN(isa) _Pragma("GCC push_options") _Pragma(FA_STR(GCC target(isa)))
#define FA_TARGET_END _Pragma("GCC pop_options")
#endif
#define FA_ISA_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"
#define FA_ISA_AVX512_BF16 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512bf16"

namespace fa_cpu {
namespace avx512 {

FA_TARGET_BEGIN(FA_ISA_AVX512)

// Lanes [0, n) of a 16- / 32-lane mask; every lane for n >= 16 / 32, none for n <= 0.
inline __mmask16 mask16(int n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}
inline __mmask32 mask32(int n) { return n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u); }

// 16 consecutive elements of a row (fp32, fp16 or bf16 storage) at element `idx`, widened to fp32: all 16, or the
// lanes of m (the others read nothing and are 0).
template <fa_dtype DT>
inline __m512 load16(const void *base, int64_t idx) {
    if (DT == FA_F32) return _mm512_loadu_ps(static_cast<const float *>(base) + idx);
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(static_cast<const uint16_t *>(base) + idx));
    if (DT == FA_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16 -> fp32 is a shift
}
template <fa_dtype DT>
inline __m512 load16(const void *base, int64_t idx, __mmask16 m) {
    if (DT == FA_F32) return _mm512_maskz_loadu_ps(m, static_cast<const float *>(base) + idx);
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t *>(base) + idx);
    if (DT == FA_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Two vector 2^x, each kept bit-for-bit where it is used (changing one would change that path's results):
//   exp2_ps_scaled_arg    decode (decode_kernels_avx512.cpp): f ln2 first, then e^y's degree-7 Taylor polynomial.
//   exp2_ps_folded<DEG>   forward tiles (tile_kernels_avx512.cpp): ln2 powers folded into the coefficients, DEG 4..7.
// Both: x = n + f with |f| <= 1/2, the polynomial for 2^f, then 2^n by vscalefps, which also flushes very negative
// exponents (masked logits, clamped to -150) to exactly 0. Operand order matters in the clamp: max_ps returns its
// second operand when either is NaN, so a NaN logit (NaN/inf input) stays NaN and reaches the output, as in
// flash_attn and torch, instead of being clamped into a zero weight.

// 2^x for x <= 128, relative error < 2e-9.
inline __m512 exp2_ps_scaled_arg(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 y = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(0.69314718055994531f));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// 2^x for x <= 128 by sum_k (ln2)^k/k! f^k, k <= DEG (no multiply by ln2). Truncation error (relative): degree 7
// < 1e-8 (fp32 results); degree 5 < 3e-6; degree 4 < 5e-5, for use where P is rounded to bf16 (relative step 4e-3)
// right after, so the cheaper polynomial costs no accuracy there (and changes the row sum by < 5e-5).
template <int DEG>
inline __m512 exp2_ps_folded(__m512 x) {
    static_assert(DEG >= 4 && DEG <= 7, "exp2 polynomial degree");
    constexpr const float *c = EXP2_POLY;  // (ln2)^k / k!
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(c[DEG]);
#pragma GCC unroll 8
    for (int k = DEG - 1; k >= 0; --k) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c[k]));
    return _mm512_scalef_ps(p, n);
}

FA_TARGET_END

FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)

// 16 bf16 pairs (a[i], b[i]) of two fp32 vectors, rounded to nearest even, a[i] in the low half of word i: the
// operand layout of vdpbf16ps (forward P^T over key pairs, backward Pd^T / dX^T over query-row pairs).
inline __m512i interleave_bf16(__m512 a, __m512 b) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

FA_TARGET_END

}  // namespace avx512
}  // namespace fa_cpu
#endif
