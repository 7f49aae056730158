// avx512_tiles.h - the building blocks the AVX-512 tile kernels share (tile_kernels_avx512.cpp for fp32 / fp16,
// tile_kernels_avx512_bf16.cpp for bf16): the register-tile row dispatch, the accumulators, the 16x16 transposes
// between rows and the query-lane layout, and the online-softmax step (lane_kernels.h's, over the Zmm traits). All
// inline or templates inside the AVX-512 target region (avx512_common.h); reached only after isa_dispatch.cpp has
// checked the CPU.
#pragma once

#include <cmath>
#include <cstring>

#include "avx512_common.h"
#include "tile_kernels.h"

#ifdef FA_HAVE_AVX512_KERNELS
// The ISA-neutral micro-kernel and online-softmax step (shared with AVX2 and NEON), instantiated here with Zmm.
FA_TARGET_BEGIN(FA_ISA_AVX512)
#include "lane_kernels.h"
FA_TARGET_END

namespace fa_cpu {
namespace avx512_tile {

using avx512::exp2_ps_folded;
using avx512::load16;
using avx512::mask16;
using avx512::mask32;

FA_TARGET_BEGIN(FA_ISA_AVX512)

// Register-tile rows per query-vector count: R*NV accumulators + NV B vectors must fit the 32 zmm registers.
template <int NV> struct MicroRows;
template <> struct MicroRows<1> { static constexpr int value = 16; };
template <> struct MicroRows<2> { static constexpr int value = 12; };
template <> struct MicroRows<3> { static constexpr int value = 8; };
template <> struct MicroRows<4> { static constexpr int value = 6; };

// The vector operations lane_kernels.h's bodies are written over: 16 fp32 lanes, one intrinsic each.
struct Zmm {
    using vec = __m512;
    static constexpr int N = 16;
    static vec zero() { return _mm512_setzero_ps(); }
    static vec set1(float x) { return _mm512_set1_ps(x); }
    static vec load(const float *p) { return _mm512_load_ps(p); }
    static void store(float *p, vec x) { _mm512_store_ps(p, x); }
    static vec bcast(const float *p) { return _mm512_set1_ps(*p); }
    static vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
    static vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
    static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
    static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }  // b when either is NaN
    static vec min(vec a, vec b) { return _mm512_min_ps(a, b); }
    static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }  // a*b + c, one rounding
    // Elements [c, c+16) of a row of d elements, zero past d (masked: reads nothing past the row).
    template <fa_dtype DT>
    static vec load_upto(const void *base, int64_t row0, int c, int d) { return load16<DT>(base, row0 + c, mask16(d - c)); }
    static vec zero_where_neg_inf(vec x) {
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ), x, _mm512_setzero_ps());
    }
};
// ... and for the softmax, its exp2: the polynomial of degree DEG (exp2_ps_folded).
template <int DEG>
struct ZmmSoftmax : Zmm {
    static vec exp2(vec x) { return exp2_ps_folded<DEG>(x); }
};

// Row dispatch shared by the fp32 and bf16 products: Kernel<NV, SCALE_C>::tile<R> computes R rows of C with NV
// 16-lane vectors; all `rows` rows are covered by full register tiles, then 8/4/2/1-row remainders.
template <template <int, bool> class Kernel, int NV, bool SCALE_C, typename Elem>
void gemm_rows(int rows, const Elem *a, int64_t a_rs, int64_t a_ks, int kk, const Elem *b, float *c,
               const float *alpha) {
    using K = Kernel<NV, SCALE_C>;
    constexpr int R = MicroRows<NV>::value;
    int r = 0;
    for (; r + R <= rows; r += R) K::template tile<R>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
    if (R > 8 && r + 8 <= rows) { K::template tile<8>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 8; }
    if (r + 4 <= rows) { K::template tile<4>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 4; }
    if (r + 2 <= rows) { K::template tile<2>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 2; }
    if (r < rows) K::template tile<1>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
}

// C for `nv` query vectors (1..4): picks the register-tile shape at compile time.
template <template <int, bool> class Kernel, bool SCALE_C, typename Elem>
void gemm(int nv, int rows, const Elem *a, int64_t a_rs, int64_t a_ks, int kk, const Elem *b, float *c,
          const float *alpha) {
    switch (nv) {
        case 1: gemm_rows<Kernel, 1, SCALE_C>(rows, a, a_rs, a_ks, kk, b, c, alpha); break;
        case 2: gemm_rows<Kernel, 2, SCALE_C>(rows, a, a_rs, a_ks, kk, b, c, alpha); break;
        case 3: gemm_rows<Kernel, 3, SCALE_C>(rows, a, a_rs, a_ks, kk, b, c, alpha); break;
        default: gemm_rows<Kernel, 4, SCALE_C>(rows, a, a_rs, a_ks, kk, b, c, alpha); break;
    }
}

// The accumulators of a register tile C[R rows][NV vectors] (rows BLOCK_M floats apart), shared by the fp32 and bf16
// micro-kernels: C * alpha (SCALE_C, the online-softmax rescale of O^T), C as it is (SCALE_C with alpha == nullptr:
// every rescale factor is 1, the running max did not move), or zero.
template <int R, int NV, bool SCALE_C>
__attribute__((always_inline)) inline void load_acc(__m512 (&acc)[R][NV], const float *c, const float *alpha) {
    if (SCALE_C && alpha) {
        __m512 al[NV];
        for (int v = 0; v < NV; ++v) al[v] = _mm512_load_ps(alpha + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_mul_ps(_mm512_load_ps(c + r * BLOCK_M + 16 * v), al[v]);
    } else if (SCALE_C) {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_load_ps(c + r * BLOCK_M + 16 * v);
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    }
}

template <int R, int NV>
__attribute__((always_inline)) inline void store_acc(__m512 (&acc)[R][NV], float *c) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) _mm512_store_ps(c + r * BLOCK_M + 16 * v, acc[r][v]);
}

// ---- transposes between rows and the query-lane layout ----

// A step of transpose16: for k < 4, out[o_even + k] takes the even 128-bit lanes of in[i_a + k] and in[i_b + k]
// (0, 2 of each), out[o_odd + k] the odd ones (1, 3).
__attribute__((always_inline)) inline void merge_lanes4(__m512 *out, int o_even, int o_odd, const __m512 *in, int i_a,
                                                        int i_b) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
        out[o_even + k] = _mm512_shuffle_f32x4(in[i_a + k], in[i_b + k], 0x88);
        out[o_odd + k] = _mm512_shuffle_f32x4(in[i_a + k], in[i_b + k], 0xDD);
    }
}

// Transpose a 16x16 block of 32-bit elements held in 16 registers: on return x[c] holds column c of the input
// (element r of x[c] = element c of input row r). 64 shuffles per 256 elements.
inline void transpose16(__m512 x[16]) {
    __m512 t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]);
    }
    // x[4i+k], 128-bit lane L: column 4L+k of rows 4i..4i+3.
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        x[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        x[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        x[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        x[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    // Gather the four 128-bit lanes of each column: lanes (0, 2) and (1, 3) first, then merge.
    merge_lanes4(t, 0, 4, x, 0, 4);
    merge_lanes4(t, 8, 12, x, 8, 12);
    merge_lanes4(x, 0, 8, t, 0, 8);
    merge_lanes4(x, 4, 12, t, 4, 12);
}

// Words w0..w0+15 of a Q row of `n` elements as 32-bit lanes, widened to fp32 where needed; words past the row are 0.
// bf16 keeps the raw pairs (the bf16 qT is [d/2][BLOCK_M] of 32-bit pairs: word w = elements 2w, 2w+1).
template <fa_dtype DT>
struct LoadWidened {
    static __m512 words(const void *row, int w0, int n) { return load16<DT>(row, w0, mask16(n - w0)); }
};
struct LoadBf16Pairs {
    static __m512 words(const void *row, int w0, int n) {
        return _mm512_castsi512_ps(
            _mm512_maskz_loadu_epi16(mask32(n - 2 * w0), static_cast<const uint16_t *>(row) + 2 * w0));
    }
};

// qT[w][r] = word w of row r (zero past nrows and past `words`); rows are read 16 x 16 words at a time and
// transposed in registers (a scalar transpose cost ~6% of a short bf16 call).
template <class Load>
void pack_qT_words(const void *const *rows, int nrows, int nwords, int nelem, int nv, uint32_t *qT) {
    for (int g = 0; g < nv; ++g) {
        const int r0 = 16 * g;
        for (int w0 = 0; w0 < nwords; w0 += 16) {
            __m512 x[16];
#pragma GCC unroll 16
            for (int r = 0; r < 16; ++r)
                x[r] = r0 + r < nrows ? Load::words(rows[r0 + r], w0, nelem) : _mm512_setzero_ps();
            transpose16(x);
            const int nw = nwords - w0 < 16 ? nwords - w0 : 16;
            for (int c = 0; c < nw; ++c) _mm512_store_ps(reinterpret_cast<float *>(qT + (w0 + c) * BLOCK_M + r0), x[c]);
        }
    }
}

// nullptr when every rescale factor of the nv query vectors is exactly 1, i.e. no row's running max moved (the
// usual case once a few K tiles have been seen): the PV product then skips the multiply of O^T by alpha.
inline const float *rescale_or_null(const float *alpha, int nv) {
    for (int v = 0; v < nv; ++v)
        if (_mm512_cmp_ps_mask(_mm512_load_ps(alpha + 16 * v), _mm512_set1_ps(1.0f), _CMP_EQ_OQ) != 0xffff) return alpha;
    return nullptr;
}

// a * b rounded to fp32. The plain multiply intrinsic is an ordinary vector product to GCC, which contracts it with
// a following subtract into one FMA (C++ compilers fuse by default); the explicitly rounded form is opaque to that.
__attribute__((always_inline)) inline __m512 mul_rounded(__m512 a, __m512 b) {
    return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// The softmax exponents s*mul - m. m_new is a rounded product fl(s*mul); one FMA keeps the exact product, which is
// the accurate choice while the rounding of m is small, but exceeds m by up to half an ulp of it: for huge logits
// (|m| 1e9: ulp 64) that is exp2(+32) for the max key, exp2 overflow (inf, NaN) and, at |m| ~ 1e30, the max key's
// own weight flushed to 0 (a row sum of 0). So where some row's |m| >= 2^20 (ulp >= 2^-3) the product is rounded
// first (mul_rounded, then subtract): consistent with m, the max key gets exactly exp2(0) = 1.
struct FusedExponent {
    __m512 m_use, vmul;
    bool huge;
    FusedExponent(__m512 m, __m512 mul)
        : m_use(m), vmul(mul),
          huge(_mm512_cmp_ps_mask(_mm512_abs_ps(m), _mm512_set1_ps(1048576.0f), _CMP_GE_OQ) != 0) {}
    __m512 operator()(__m512 x) const {
        return huge ? _mm512_sub_ps(mul_rounded(x, vmul), m_use) : _mm512_fmsub_ps(x, vmul, m_use);
    }
};

// Online-softmax step, one 16-row vector at a time (lane::softmax_core), with the exp2 polynomial of degree DEG;
// Store writes P (pair / last: fp32 sT in place, or the bf16 key pairs of the PV product).
template <int DEG, class Store>
__attribute__((always_inline)) inline void softmax_core(float *sT, int nk, int nv, float mul, float *m, float *l,
                                                        float *alpha, const Store &store) {
    lane::softmax_core<ZmmSoftmax<DEG>, FusedExponent>(sT, nk, nv, mul, m, l, alpha, store);
}

FA_TARGET_END

// The bf16 table's kernels (tile_kernels_avx512_bf16.cpp), for the table in tile_kernels_avx512.cpp.
FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)
void pack_qT_bf16(const void *const *rows, int nrows, int d, int nv, void *qT);
void scores_bf16(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *);
void pv_bf16(const KvTile &v, int j0, int nk, int d, const void *p, int nv, const float *alpha, float *oT,
             void *scratch);
void prep_k_bf16(KvTile &t, int d);
void prep_v_bf16(KvTile &t, int d);
void softmax_p_bf16(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha, void *p);
void pack_p_bf16(const float *sT, int nk, int nv, void *p);
FA_TARGET_END

}  // namespace avx512_tile
}  // namespace fa_cpu
#endif
