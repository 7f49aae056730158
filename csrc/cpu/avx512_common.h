// avx512_common.h - what the AVX-512 kernel files share: target-region macros and a vector exp2.
//
// Include it only from x86-64 builds (FA_HAVE_AVX512_KERNELS is defined then). Functions defined between
// FA_TARGET_BEGIN(isa) and FA_TARGET_END are compiled for that ISA without any -march flag; they may only be
// called after runtime CPU-feature dispatch (isa_dispatch.cpp) has checked the CPU.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FA_HAVE_AVX512_KERNELS 1
#include <immintrin.h>

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
#define FA_TARGET_BEGIN(isa) _Pragma("GCC push_options") _Pragma(FA_STR(GCC target(isa)))
#define FA_TARGET_END _Pragma("GCC pop_options")
#endif
#define FA_ISA_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"
#define FA_ISA_AVX512_BF16 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512bf16"

namespace fa_cpu {
namespace avx512 {

FA_TARGET_BEGIN(FA_ISA_AVX512)

// 2^x for x <= 128: x = n + f with |f| <= 1/2, 2^f = e^(f ln2) by its degree-7 Taylor polynomial (relative error
// < 2e-9), scaled by 2^n with vscalefps, which also flushes very negative exponents (masked logits, clamped to
// -150) to exactly 0. max_ps returns its second operand when either is NaN, so a NaN logit stays NaN.
inline __m512 exp2_ps(__m512 x) {
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

FA_TARGET_END

}  // namespace avx512
}  // namespace fa_cpu
#endif
