// avx2_common.h - what the AVX2 kernel files (tile_kernels_avx2.cpp, decode_kernels_avx2.cpp) share: their target
// ISA, 8-element loads widened to fp32, and a vector exp2 that is safe for every input.
//
// The target-region macros (FA_TARGET_BEGIN / FA_TARGET_END) and FA_HAVE_AVX512_KERNELS (x86-64 with GCC or clang,
// i.e. "ISA target regions can be compiled here") come from avx512_common.h. Functions inside
// FA_TARGET_BEGIN(FA_ISA_AVX2) may only run after cpu_features().avx2 was checked (isa_dispatch.cpp).
#pragma once

#include <cstdint>
#include <cstring>

#include "avx512_common.h"
#include "fa_abi.h"

#ifdef FA_HAVE_AVX512_KERNELS
#define FA_HAVE_AVX2_KERNELS 1
#define FA_ISA_AVX2 "avx2,fma,f16c"

namespace fa_cpu {
namespace avx2 {

FA_TARGET_BEGIN(FA_ISA_AVX2)

// 2^x for any x: NaN stays NaN; x is clamped to [-127, 127] first, so no finite or infinite input can push the
// exponent field out of range (x <= -126.5, including -inf from masked logits, gives exactly 0; x >= 127 gives
// 2^127). x = n + f with |f| <= 1/2; 2^f by sum_k (ln2)^k/k! f^k, k <= 7 (truncation < 6e-9 relative); 2^n built
// in the exponent field. Operand order matters in the clamps: max_ps/min_ps return their SECOND operand when either
// is NaN, so a NaN logit (NaN/inf input) reaches the output as in flash_attn and torch.
inline __m256 exp2_ps(__m256 x) {
    constexpr float c[8] = {1.0f, 0.693147180559945f, 0.240226506959101f, 0.0555041086648216f,
                            0.00961812910762848f, 0.00133335581464284f, 0.000154035303933816f,
                            1.52527338040598e-05f};
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(127.0f), x);
    const __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(c[7]);
#pragma GCC unroll 8
    for (int k = 6; k >= 0; --k) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[k]));
    // biased exponent n + 127 in [0, 254]: 0 encodes +0 (the flush of x <= -126.5), 254 encodes 2^127
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// 8 elements of a row at base[idx] widened to fp32 (fp16 by vcvtph2ps, bf16 by a 16-bit shift: exact).
template <fa_dtype DT>
inline __m256 load8(const void *base, int64_t idx) {
    if (DT == FA_F32) return _mm256_loadu_ps(static_cast<const float *>(base) + idx);
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(static_cast<const uint16_t *>(base) + idx));
    if (DT == FA_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// The first n (< 8) elements at base[idx], the other lanes 0; reads nothing past element n-1 (AVX2 has no 16-bit
// masked loads, so the tail goes through a small zeroed copy).
template <fa_dtype DT>
inline __m256 load8_tail(const void *base, int64_t idx, int n) {
    constexpr size_t esz = DT == FA_F32 ? 4 : 2;
    alignas(32) unsigned char tmp[32] = {};
    std::memcpy(tmp, static_cast<const unsigned char *>(base) + idx * int64_t(esz), size_t(n) * esz);
    return load8<DT>(tmp, 0);
}

// Elements [c, c+8) of a row of d elements, zero past d.
template <fa_dtype DT>
inline __m256 load8_upto(const void *base, int64_t row0, int c, int d) {
    return d - c >= 8 ? load8<DT>(base, row0 + c) : load8_tail<DT>(base, row0 + c, d - c);
}

inline float hsum(__m256 x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax(__m256 x) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

FA_TARGET_END

}  // namespace avx2
}  // namespace fa_cpu
#endif
