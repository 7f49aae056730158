// bwd_kernels_avx512.cpp - AVX-512 kernels of the CPU backward (the table of bwd_kernels.h).
//
// The package is built for the baseline ISA; this code sits in the target regions of csrc/cpu/avx512_common.h and is
// only called after select_bwd_kernels_f32 has checked the CPU (cpu_features.h), so older CPUs never execute it.
//
// product: register-blocked micro-kernel C[R rows][NV x 16 columns] kept in zmm registers while t runs over the
// reduction: per step NV vector loads of a B row, R broadcasts of A, R*NV FMAs. R*NV accumulators + NV B vectors
// fit the 32 registers (NV = 4 -> R = 6: 24 + 4). Columns beyond n are masked off in loads and stores, so any head
// dim works. Each output element is summed over t in increasing order, whatever the tile split.
// bf16 (AVX512-BF16): scores_bf16 (S, dPd) and accumulate_bf16 (dV, dK, dQ with Pd / dX rounded to bf16) are the same
// register tiles with vdpbf16ps on pairs of the reduction index; the pair_* / round_* helpers build those operands.
#include "bwd_kernels.h"

#include <cstdint>
#include <cstring>

#include "bwd_tile_math.h"
#include "cpu/avx512_common.h"  // FA_TARGET_BEGIN / FA_ISA_*, FA_HAVE_AVX512_KERNELS

namespace fa_bwd {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

FA_TARGET_BEGIN(FA_ISA_AVX512)

#define FA_BWD_ALWAYS_INLINE inline __attribute__((always_inline))

// Rows of the register tile for NV column vectors: R*NV + NV <= 32 registers.
template <int NV> struct TileRows;
template <> struct TileRows<1> { static constexpr int value = 16; };
template <> struct TileRows<2> { static constexpr int value = 10; };
template <> struct TileRows<3> { static constexpr int value = 7; };
template <> struct TileRows<4> { static constexpr int value = 6; };

// C[R][NV*16] (+)= sum_t A[r*a_rs + t*a_ks] * B[t*b_rs + :]; with MASKED, `last` masks the columns of the last
// vector (plain loads otherwise: a masked load cannot fold into anything and costs more on some cores).
template <int R, int NV, bool ACC, bool MASKED>
FA_BWD_ALWAYS_INLINE void micro(int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs,
                                float *c, int64_t c_rs, __mmask16 last) {
    __m512 acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
            const __mmask16 m = v == NV - 1 ? last : (__mmask16)0xffff;
            acc[r][v] = ACC ? _mm512_maskz_loadu_ps(m, c + r * c_rs + 16 * v) : _mm512_setzero_ps();
        }
    for (int t = 0; t < kk; ++t) {
        const float *brow = b + t * b_rs;
        const float *acol = a + t * a_ks;
        __m512 bv[NV];
        for (int v = 0; v < NV - 1; ++v) bv[v] = _mm512_loadu_ps(brow + 16 * v);
        const float *btail = brow + 16 * (NV - 1);
        bv[NV - 1] = MASKED ? _mm512_maskz_loadu_ps(last, btail) : _mm512_loadu_ps(btail);
        for (int r = 0; r < R; ++r) {
            const __m512 ar = _mm512_set1_ps(acol[r * a_rs]);
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
            const __mmask16 m = v == NV - 1 ? last : (__mmask16)0xffff;
            _mm512_mask_storeu_ps(c + r * c_rs + 16 * v, m, acc[r][v]);
        }
}

// All m rows of one column chunk: full register tiles, then 8/4/2/1-row remainders.
template <int NV, bool ACC, bool MASKED>
void chunk_rows_masked(int m, int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs, float *c,
                int64_t c_rs, __mmask16 last) {
    constexpr int R = TileRows<NV>::value;
    int r = 0;
    for (; r + R <= m; r += R) micro<R, NV, ACC, MASKED>(kk, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
    if (R > 8 && r + 8 <= m) {
        micro<8, NV, ACC, MASKED>(kk, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
        r += 8;
    }
    if (R > 4 && r + 4 <= m) {
        micro<4, NV, ACC, MASKED>(kk, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
        r += 4;
    }
    if (r + 2 <= m) {
        micro<2, NV, ACC, MASKED>(kk, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
        r += 2;
    }
    if (r < m) micro<1, NV, ACC, MASKED>(kk, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
}

template <int NV, bool ACC>
void chunk_rows(int m, int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs, float *c,
                int64_t c_rs, __mmask16 last) {
    if (last == (__mmask16)0xffff) chunk_rows_masked<NV, ACC, false>(m, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, last);
    else chunk_rows_masked<NV, ACC, true>(m, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, last);
}

template <bool ACC>
void product_impl(int m, int n, int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs,
                  float *c, int64_t c_rs) {
    // Column chunks of up to 64 (4 vectors); B rows of a chunk are reused by every row tile from L1.
    for (int col = 0; col < n; col += 64) {
        const int cols = n - col < 64 ? n - col : 64;
        const int nv = (cols + 15) / 16;
        const int tail = cols - 16 * (nv - 1);
        const __mmask16 last = (__mmask16)(tail == 16 ? 0xffffu : ((1u << tail) - 1u));
        const float *bc = b + col;
        float *cc = c + col;
        switch (nv) {
        case 1: chunk_rows<1, ACC>(m, kk, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        case 2: chunk_rows<2, ACC>(m, kk, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        case 3: chunk_rows<3, ACC>(m, kk, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        default: chunk_rows<4, ACC>(m, kk, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        }
    }
}

void product(int m, int n, int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs,
             float *c, int64_t c_rs, bool accumulate) {
    if (accumulate) product_impl<true>(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs);
    else product_impl<false>(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs);
}

// exp(x) = 2^k exp(r): k = round(x log2 e), r = x - k ln 2 with ln 2 split in a short high part (k * hi exact) and a
// low part, exp(r) on |r| <= ln2/2 by a degree-6 polynomial (about 1 ulp), 2^k applied with vscalefps, which
// underflows gracefully to 0. Inputs are clamped to [-104, 0] first so r stays small: every use is a probability
// P = exp(score - lse) <= 1, whose exponent exceeds 0 only by rounding (huge logits: the fp32 score and LSE are
// each rounded to a unit that can be 64 or more), and exp of that would be a weight above 1 or inf (then NaN);
// max/min take x as the second operand, which keeps NaN inputs NaN.
FA_BWD_ALWAYS_INLINE __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_setzero_ps(), x);
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

void softmax_grad(float *s, float *dp, const float *lse, const float *delta, int nrows, float scale) {
    static_assert(kBlockK % 16 == 0, "tile width is a whole number of vectors");
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int r = 0; r < nrows; ++r) {
        float *sr = s + (size_t)r * kBlockK;
        float *dr = dp + (size_t)r * kBlockK;
        const __m512 vlse = _mm512_set1_ps(lse[r]);
        const __m512 vdelta = _mm512_set1_ps(delta[r]);
        for (int c = 0; c < kBlockK; c += 16) {
            const __m512 p = exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(sr + c), vscale, vlse));
            const __m512 ds = _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dr + c), vdelta));
            _mm512_storeu_ps(sr + c, p);
            _mm512_storeu_ps(dr + c, _mm512_mul_ps(ds, vscale));
        }
    }
}

void exp_row(float *x) {
    for (int c = 0; c < kBlockK; c += 16) _mm512_storeu_ps(x + c, exp_ps(_mm512_loadu_ps(x + c)));
}

FA_TARGET_END

FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)

// Register tile R rows x 4 vectors (64 columns) of out; per step t one bf16 pair of each A row (a 32-bit broadcast)
// times 16 pairs per B vector, summed in fp32 by vdpbf16ps.
template <int R>
FA_BWD_ALWAYS_INLINE void micro_bf16(int kk2, const uint16_t *a, int64_t a_rs, const uint16_t *bt2, float *out) {
    __m512 acc[R][4];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int t = 0; t < kk2; ++t) {
        const uint16_t *brow = bt2 + (size_t)t * kBlockK * 2;
        __m512i bv[4];
        for (int v = 0; v < 4; ++v) bv[v] = _mm512_loadu_si512(brow + 32 * v);
        for (int r = 0; r < R; ++r) {
            uint32_t pair;
            std::memcpy(&pair, a + r * a_rs + 2 * t, 4);
            const __m512i ar = _mm512_set1_epi32((int)pair);
            for (int v = 0; v < 4; ++v)
                acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)ar, (__m512bh)bv[v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + r * kBlockK + 16 * v, acc[r][v]);
}

void scores_bf16(int m, int kk2, const uint16_t *a, int64_t a_rs, const uint16_t *bt2, float *out) {
    static_assert(kBlockK == 64, "the bf16 register tile covers 64 columns");
    int r = 0;
    for (; r + 6 <= m; r += 6) micro_bf16<6>(kk2, a + r * a_rs, a_rs, bt2, out + r * kBlockK);
    if (r + 4 <= m) {
        micro_bf16<4>(kk2, a + r * a_rs, a_rs, bt2, out + r * kBlockK);
        r += 4;
    }
    if (r + 2 <= m) {
        micro_bf16<2>(kk2, a + r * a_rs, a_rs, bt2, out + r * kBlockK);
        r += 2;
    }
    if (r < m) micro_bf16<1>(kk2, a + r * a_rs, a_rs, bt2, out + r * kBlockK);
}

// ---- dV, dK, dQ with bf16 left operands (BwdKernelsF32::accumulate_bf16) ----

// C[R][NV*16] += sum_t dot2(A pair (r, t), B pair row t); with MASKED, `last` masks the pairs/columns of the last
// vector.
template <int R, int NV, bool MASKED>
FA_BWD_ALWAYS_INLINE void micro_pairs(int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b,
                                      int64_t b_rs, float *c, int64_t c_rs, __mmask16 last) {
    __m512 acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v)
            acc[r][v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : (__mmask16)0xffff, c + r * c_rs + 16 * v);
    for (int t = 0; t < kk2; ++t) {
        const uint16_t *brow = b + t * b_rs;
        __m512i bv[NV];
        for (int v = 0; v < NV - 1; ++v) bv[v] = _mm512_loadu_si512(brow + 32 * v);
        bv[NV - 1] = MASKED ? _mm512_maskz_loadu_epi32(last, brow + 32 * (NV - 1))
                            : _mm512_loadu_si512(brow + 32 * (NV - 1));
        const uint32_t *acol = a + t * a_ks;
        for (int r = 0; r < R; ++r) {
            const __m512i ar = _mm512_set1_epi32((int)acol[r * a_rs]);
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)ar, (__m512bh)bv[v]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v)
            _mm512_mask_storeu_ps(c + r * c_rs + 16 * v, v == NV - 1 ? last : (__mmask16)0xffff, acc[r][v]);
}

template <int NV, bool MASKED>
void pair_rows_chunk(int m, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b, int64_t b_rs,
                     float *c, int64_t c_rs, __mmask16 last) {
    constexpr int R = TileRows<NV>::value;
    int r = 0;
    for (; r + R <= m; r += R) micro_pairs<R, NV, MASKED>(kk2, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
    if (R > 8 && r + 8 <= m) {
        micro_pairs<8, NV, MASKED>(kk2, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
        r += 8;
    }
    if (R > 4 && r + 4 <= m) {
        micro_pairs<4, NV, MASKED>(kk2, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
        r += 4;
    }
    if (r + 2 <= m) {
        micro_pairs<2, NV, MASKED>(kk2, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
        r += 2;
    }
    if (r < m) micro_pairs<1, NV, MASKED>(kk2, a + r * a_rs, a_rs, a_ks, b, b_rs, c + r * c_rs, c_rs, last);
}

template <int NV>
void pair_rows_chunk_any(int m, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b,
                         int64_t b_rs, float *c, int64_t c_rs, __mmask16 last) {
    if (last == (__mmask16)0xffff) pair_rows_chunk<NV, false>(m, kk2, a, a_rs, a_ks, b, b_rs, c, c_rs, last);
    else pair_rows_chunk<NV, true>(m, kk2, a, a_rs, a_ks, b, b_rs, c, c_rs, last);
}

void accumulate_bf16(int m, int n, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b,
                     int64_t b_rs, float *c, int64_t c_rs) {
    for (int col = 0; col < n; col += 64) {  // column chunks of up to 4 vectors, as product()
        const int cols = n - col < 64 ? n - col : 64;
        const int nv = (cols + 15) / 16;
        const int tail = cols - 16 * (nv - 1);
        const __mmask16 last = (__mmask16)(tail == 16 ? 0xffffu : ((1u << tail) - 1u));
        const uint16_t *bc = b + 2 * col;
        float *cc = c + col;
        switch (nv) {
        case 1: pair_rows_chunk_any<1>(m, kk2, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        case 2: pair_rows_chunk_any<2>(m, kk2, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        case 3: pair_rows_chunk_any<3>(m, kk2, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        default: pair_rows_chunk_any<4>(m, kk2, a, a_rs, a_ks, bc, b_rs, cc, c_rs, last); break;
        }
    }
}

void pair_tile_rows_bf16(const float *x, int rows, uint32_t *out) {
    for (int t = 0; 2 * t < rows; ++t) {
        const float *x0 = x + (size_t)(2 * t) * kBlockK;
        const bool has1 = 2 * t + 1 < rows;
        for (int c = 0; c < kBlockK; c += 16) {
            const __m512 v1 = has1 ? _mm512_loadu_ps(x0 + kBlockK + c) : _mm512_setzero_ps();
            _mm512_storeu_si512(out + (size_t)t * kBlockK + c,
                                fa_cpu::avx512::interleave_bf16(_mm512_loadu_ps(x0 + c), v1));
        }
    }
}

void round_tile_bf16(const float *x, int rows, int ncols, uint16_t *out) {
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < kBlockK; c += 16)
            _mm256_storeu_si256((__m256i *)(out + (size_t)r * kBlockK + c),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + (size_t)r * kBlockK + c)));
        if ((ncols & 1) && ncols < kBlockK) out[(size_t)r * kBlockK + ncols] = 0;
    }
}

void pair_rows_bf16(const uint16_t *x, int64_t x_rs, int rows, int n, uint16_t *out, int64_t out_rs) {
    const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                            38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    for (int t = 0; 2 * t < rows; ++t) {
        const uint16_t *x0 = x + (2 * t) * x_rs;
        const bool has1 = 2 * t + 1 < rows;
        uint16_t *dst = out + t * out_rs;
        for (int e = 0; e < n; e += 32) {
            const int left = n - e;
            const __mmask32 m = left >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << left) - 1);
            const __m512i v0 = _mm512_maskz_loadu_epi16(m, x0 + e);
            const __m512i v1 = has1 ? _mm512_maskz_loadu_epi16(m, x0 + x_rs + e) : _mm512_setzero_si512();
            const int lo_words = left >= 16 ? 16 : left;          // pairs of elements e .. e+15
            const int hi_words = left >= 32 ? 16 : (left > 16 ? left - 16 : 0);
            const __mmask32 mlo = lo_words == 16 ? ~(__mmask32)0 : (((__mmask32)1 << (2 * lo_words)) - 1);
            const __mmask32 mhi = hi_words == 16 ? ~(__mmask32)0 : (((__mmask32)1 << (2 * hi_words)) - 1);
            _mm512_mask_storeu_epi16(dst + 2 * e, mlo, _mm512_permutex2var_epi16(v0, lo_idx, v1));
            if (hi_words > 0) _mm512_mask_storeu_epi16(dst + 2 * e + 32, mhi, _mm512_permutex2var_epi16(v0, hi_idx, v1));
        }
    }
}

FA_TARGET_END

const BwdKernelsF32 kAvx512 = {"avx512 (fp32 FMA register tiles)", product, softmax_grad, exp_row, nullptr,
                               nullptr, nullptr, nullptr, nullptr};
const BwdKernelsF32 kAvx512Bf16 = {"avx512 (fp32 FMA register tiles; bf16 products by vdpbf16ps)", product,
                                   softmax_grad, exp_row, scores_bf16, accumulate_bf16, pair_tile_rows_bf16,
                                   round_tile_bf16, pair_rows_bf16};

}  // namespace

const BwdKernelsF32 *bwd_avx512_kernels_f32(bool with_bf16) { return with_bf16 ? &kAvx512Bf16 : &kAvx512; }
#else
const BwdKernelsF32 *bwd_avx512_kernels_f32(bool) { return nullptr; }
#endif

}  // namespace fa_bwd
