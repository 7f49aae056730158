// simd_generic.h - the vector helpers the AVX2 and NEON kernels share, written once over a small vector-ops traits
// struct V (avx2::Ops in avx2_common.h, neon::Ops in neon_common.h): a vector exp2 that is safe for every input and
// the widening row loads with a zero-filled tail.
//
// Why a textual template and not two copies: both ISAs run the same arithmetic, operation by operation, so one body
// keeps them from drifting apart; each ISA still gets its own instructions because every V:: call is one intrinsic.
// Include it only after V is defined and, on x86, INSIDE the ISA's target region (FA_TARGET_BEGIN): GCC and clang give
// a template the target options of the region it is defined in, and these bodies call V's intrinsics. One ISA per
// translation unit (the header is included once). It includes nothing itself for the same reason (a system header
// inside a target region would be compiled for that ISA), except exp2_poly.h, which holds constants only.
#pragma once

#include "exp2_poly.h"

namespace fa_cpu {
namespace simd {

// 2^x for any x: NaN stays NaN; x is clamped to [-127, 127] first, so no finite or infinite input can push the
// exponent field out of range (x <= -126.5, including -inf from masked logits, gives exactly 0; x >= 127 gives
// 2^127). x = n + f with |f| <= 1/2; 2^f by sum_k (ln2)^k/k! f^k, k <= 7 (truncation < 6e-9 relative); 2^n built
// in the exponent field (V::pow2i). Operand order matters in the clamps: x86 max_ps/min_ps return their SECOND
// operand when either is NaN (AArch64 FMAX/FMIN propagate it either way), so a NaN logit (NaN/inf input) reaches
// the output as in flash_attn and torch.
template <class V>
inline typename V::vec exp2_clamped(typename V::vec x) {
    constexpr const float *c = EXP2_POLY;
    x = V::max(V::set1(-127.0f), x);
    x = V::min(V::set1(127.0f), x);
    const typename V::vec n = V::round_even(x);
    const typename V::vec f = V::sub(x, n);
    typename V::vec p = V::set1(c[7]);
#pragma GCC unroll 8
    for (int k = 6; k >= 0; --k) p = V::fma(p, f, V::set1(c[k]));
    return V::mul(p, V::pow2i(n));
}

// The first n (< V::N) elements at base[idx], the other lanes 0; reads nothing past element n-1 (16-bit masked
// loads are missing on both ISAs, so the tail goes through a small zeroed copy).
template <class V, fa_dtype DT>
inline typename V::vec load_tail(const void *base, int64_t idx, int n) {
    constexpr size_t esz = DT == FA_F32 ? 4 : 2;
    alignas(64) unsigned char tmp[4 * V::N] = {};
    std::memcpy(tmp, static_cast<const unsigned char *>(base) + idx * int64_t(esz), size_t(n) * esz);
    return V::template load_wide<DT>(tmp, 0);
}

// Elements [c, c + V::N) of a row of d elements starting at base[row0], widened to fp32, zero past d.
template <class V, fa_dtype DT>
inline typename V::vec load_upto(const void *base, int64_t row0, int c, int d) {
    return d - c >= V::N ? V::template load_wide<DT>(base, row0 + c) : load_tail<V, DT>(base, row0 + c, d - c);
}

}  // namespace simd
}  // namespace fa_cpu
