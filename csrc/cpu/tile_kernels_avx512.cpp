// tile_kernels_avx512.cpp - AVX-512 kernels for the query-lane layout of tile_kernels.h.
//
// Compiled for any x86-64 target; the AVX-512 code lives in target regions (FA_TARGET_BEGIN) and is only reached after
// isa_dispatch.cpp has checked the CPU (so no -march flag and no illegal instruction on older CPUs).
//   fp32: micro-kernels C[R rows][NV*16 lanes] += A[r][k] (broadcast from the prepared K or V tile) * B[k][lanes].
//   bf16: the same shape with vdpbf16ps, which multiplies PAIRS of bf16 and accumulates in fp32 (2x the fp32 FMA
//         rate): S^T pairs over the head dim (adjacent in K rows), O^T pairs over keys (V interleaved into key pairs
//         once per K/V tile and work item; P written as key pairs by the fused softmax).
//   fp16: K/V tiles are widened to fp32 with vcvtph2ps (F16C) once per work item, then the fp32 micro-kernels run.
//   softmax: vectorized online-softmax step with a polynomial exp2 (exp2_ps_folded, avx512_common.h).
//   Q in and O out: 16x16 register transposes between rows and the query-lane layout.
#include <cmath>
#include <cstring>

#include "avx512_common.h"
#include "cpu_dtype.h"
#include "cpu_features.h"
#include "tile_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

using avx512::exp2_ps_folded;

FA_TARGET_BEGIN(FA_ISA_AVX512)

// Register-tile rows per query-vector count: R*NV accumulators + NV B vectors must fit the 32 zmm registers.
template <int NV> struct MicroRows;
template <> struct MicroRows<1> { static constexpr int value = 16; };
template <> struct MicroRows<2> { static constexpr int value = 12; };
template <> struct MicroRows<3> { static constexpr int value = 8; };
template <> struct MicroRows<4> { static constexpr int value = 6; };

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

// C[r][lanes] (=|+=) sum_k A[r*a_rs + k*a_ks] * B[k*BLOCK_M + lanes], r < R, lanes < NV*16.
// With SCALE_C, the old C is first multiplied by alpha[lanes] (the online-softmax rescale of O^T), or kept as it is
// when alpha is nullptr.
template <int R, int NV, bool SCALE_C>
inline void micro_f32(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
                      const float *alpha) {
    __m512 acc[R][NV];
    if (SCALE_C && alpha) {
        __m512 al[NV];
        for (int v = 0; v < NV; ++v) al[v] = _mm512_load_ps(alpha + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_mul_ps(_mm512_load_ps(c + r * BLOCK_M + 16 * v), al[v]);
    } else if (SCALE_C) {  // alpha == nullptr: every rescale factor is 1 (the running max did not move)
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_load_ps(c + r * BLOCK_M + 16 * v);
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    }
    for (int k = 0; k < kk; ++k) {
        __m512 bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + k * BLOCK_M + 16 * v);
        const float *ak = a + k * a_ks;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const __m512 av = _mm512_set1_ps(ak[r * a_rs]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) _mm512_store_ps(c + r * BLOCK_M + 16 * v, acc[r][v]);
}

// micro_f32 as a gemm() kernel.
template <int NV, bool SCALE_C>
struct MicroF32 {
    template <int R>
    static void tile(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c, const float *alpha) {
        micro_f32<R, NV, SCALE_C>(a, a_rs, a_ks, kk, b, c, alpha);
    }
};

// ---- transposes between rows and the query-lane layout ----

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
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
        t[k] = _mm512_shuffle_f32x4(x[k], x[4 + k], 0x88);
        t[4 + k] = _mm512_shuffle_f32x4(x[k], x[4 + k], 0xDD);
        t[8 + k] = _mm512_shuffle_f32x4(x[8 + k], x[12 + k], 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(x[8 + k], x[12 + k], 0xDD);
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
        x[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        x[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xDD);
        x[4 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0x88);
        x[12 + k] = _mm512_shuffle_f32x4(t[4 + k], t[12 + k], 0xDD);
    }
}

inline __mmask16 mask16(int n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u); }
inline __mmask32 mask32(int n) { return n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1u); }

// Words w0..w0+15 of a Q row of `n` elements as 32-bit lanes, widened to fp32 where needed; words past the row are 0.
// bf16 keeps the raw pairs (the bf16 qT is [d/2][BLOCK_M] of 32-bit pairs: word w = elements 2w, 2w+1).
struct LoadF32 {
    static __m512 words(const void *row, int w0, int n) {
        return _mm512_maskz_loadu_ps(mask16(n - w0), static_cast<const float *>(row) + w0);
    }
};
struct LoadF16 {
    static __m512 words(const void *row, int w0, int n) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(n - w0), static_cast<const uint16_t *>(row) + w0));
    }
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

// ---- the transposing write-out: out_rows[r][c] = oT[c][r] * inv_l[r] ----

// fp32 -> bf16 with round-to-nearest-even and quiet NaNs, bit-identical to f32_to_bf16 (cpu_dtype.h).
inline __m256i f32_to_bf16_16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

// Masked stores only for a partial last chunk: full chunks use plain stores (cheaper than masked ones on Zen 4).
template <fa_dtype DT>
inline void store_row16(void *row, int c0, int n, __m512 x) {
    if (DT == FA_F32) {
        float *dst = static_cast<float *>(row) + c0;
        if (n >= 16) _mm512_storeu_ps(dst, x);
        else _mm512_mask_storeu_ps(dst, mask16(n), x);
    } else {
        const __m256i h = DT == FA_F16 ? _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                                       : f32_to_bf16_16(x);
        uint16_t *dst = static_cast<uint16_t *>(row) + c0;
        if (n >= 16) _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst), h);
        else _mm256_mask_storeu_epi16(dst, mask16(n), h);
    }
}

template <fa_dtype DT>
void write_rows(const float *oT, int nrows, int d, const float *inv_l, void *const *out_rows) {
    for (int r0 = 0; r0 < nrows; r0 += 16) {
        const __m512 inv = _mm512_load_ps(inv_l + r0);
        const int nr = nrows - r0 < 16 ? nrows - r0 : 16;
        for (int c0 = 0; c0 < d; c0 += 16) {
            const int nc = d - c0 < 16 ? d - c0 : 16;
            __m512 x[16];
#pragma GCC unroll 16
            for (int c = 0; c < 16; ++c)
                x[c] = c < nc ? _mm512_mul_ps(_mm512_load_ps(oT + (c0 + c) * BLOCK_M + r0), inv) : _mm512_setzero_ps();
            transpose16(x);
            for (int r = 0; r < nr; ++r) store_row16<DT>(out_rows[r0 + r], c0, nc, x[r]);
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

// ---- fp32 ----

void pack_qT_f32(const void *const *rows, int nrows, int d, int nv, void *qT) {
    pack_qT_words<LoadF32>(rows, nrows, d, d, nv, static_cast<uint32_t *>(qT));
}

// K/V tiles as contiguous fp32 rows, 64-byte aligned, prepared once per work item. The user's rows are often 2-8 KiB
// apart (row stride = nheads * headdim), which maps a whole K/V tile onto a few L1 sets; the contiguous copy keeps the
// tile resident in L1/L2 while the micro-kernels sweep it.
inline int widened_stride(int d) { return (d + 15) & ~15; }

void prep_f32(KvTile &t, int d) {
    const int ws = widened_stride(d);
    float *dst = static_cast<float *>(t.packed);
    for (int j = 0; j < t.nk; ++j) {
        const float *s = static_cast<const float *>(t.rows) + j * t.stride;
        for (int c = 0; c < d; c += 16) _mm512_store_ps(dst + j * ws + c, _mm512_maskz_loadu_ps(mask16(d - c), s + c));
    }
}

// fp16 K/V widened to fp32 once per work item (vcvtph2ps), then the fp32 kernels.
void prep_f16(KvTile &t, int d) {
    const int ws = widened_stride(d);
    float *dst = static_cast<float *>(t.packed);
    for (int j = 0; j < t.nk; ++j) {
        const uint16_t *s = static_cast<const uint16_t *>(t.rows) + j * t.stride;
        for (int c = 0; c < d; c += 16)
            _mm512_store_ps(dst + j * ws + c, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(d - c), s + c)));
    }
}

void scores_f32(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *) {
    // S^T[j][lanes] = sum_c K[j][c] * qT[c][lanes]: A = K rows (row stride ws, k stride 1).
    const int ws = widened_stride(d);
    const float *kt = static_cast<const float *>(k.packed) + j0 * ws;
    gemm<MicroF32, false>(nv, nk, kt, ws, 1, d, static_cast<const float *>(qT), sT, nullptr);
}

void pv_f32(const KvTile &v, int j0, int nk, int d, const void *pT, int nv, const float *alpha, float *oT, void *) {
    // O^T[c][lanes] = alpha*O^T + sum_j V[j][c] * P^T[j][lanes]: A = V^T (row stride 1, k stride ws).
    const int ws = widened_stride(d);
    const float *vt = static_cast<const float *>(v.packed) + j0 * ws;
    gemm<MicroF32, true>(nv, d, vt, 1, ws, nk, static_cast<const float *>(pT), oT, rescale_or_null(alpha, nv));
}

void pack_qT_f16(const void *const *rows, int nrows, int d, int nv, void *qT) {
    pack_qT_words<LoadF16>(rows, nrows, d, d, nv, static_cast<uint32_t *>(qT));
}

// Online-softmax step, one 16-row vector at a time. Pass 1 only finds the max of the raw scores (mul > 0 commutes
// with max; a negative mul uses the min); pass 2 computes p = exp2(s*mul - m), sums it in fp32 and
// hands each pair of key rows (j, j+1) to Store, which writes P in the format the PV kernel reads (fp32 sT in
// place, or bf16 key pairs in one pass with no second sweep over sT). always_inline: Store may need a wider ISA
// than this region (bf16), which is fine once the body is inlined into a caller compiled for it.
// a * b rounded to fp32. The plain multiply intrinsic is an ordinary vector product to GCC, which contracts it with
// a following subtract into one FMA (C++ compilers fuse by default); the explicitly rounded form is opaque to that.
__attribute__((always_inline)) inline __m512 mul_rounded(__m512 a, __m512 b) {
    return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

template <int DEG, class Store>
__attribute__((always_inline)) inline void softmax_core(float *sT, int nk, int nv, float mul, float *m, float *l,
                                                        float *alpha, const Store &store) {
    const __m512 vmul = _mm512_set1_ps(mul);
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    for (int v = 0; v < nv; ++v) {
        float *col = sT + 16 * v;
        const __m512 m_old = _mm512_load_ps(m + 16 * v);
        // max of the raw scores, or min when a negative softmax_scale flips the order; two chains for latency
        __m512 ext0, ext1;
        int j = 0;
        if (mul >= 0.0f) {
            ext0 = ext1 = neg_inf;
            for (; j + 2 <= nk; j += 2) {
                ext0 = _mm512_max_ps(ext0, _mm512_load_ps(col + j * BLOCK_M));
                ext1 = _mm512_max_ps(ext1, _mm512_load_ps(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = _mm512_max_ps(ext0, _mm512_load_ps(col + j * BLOCK_M));
            ext0 = _mm512_max_ps(ext0, ext1);
        } else {
            ext0 = ext1 = _mm512_set1_ps(INFINITY);
            for (; j + 2 <= nk; j += 2) {
                ext0 = _mm512_min_ps(ext0, _mm512_load_ps(col + j * BLOCK_M));
                ext1 = _mm512_min_ps(ext1, _mm512_load_ps(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = _mm512_min_ps(ext0, _mm512_load_ps(col + j * BLOCK_M));
            ext0 = _mm512_min_ps(ext0, ext1);
        }
        const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(ext0, vmul));
        // Rows that have seen only masked keys keep m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        const __m512 m_use = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ), m_new,
                                                  _mm512_setzero_ps());
        const __m512 a = exp2_ps_folded<DEG>(_mm512_sub_ps(m_old, m_use));
        // Exponents s*mul - m. m_new is a rounded product fl(s*mul); one FMA keeps the exact product, which is the
        // accurate choice while the rounding of m is small, but exceeds m by up to half an ulp of it: for huge logits
        // (|m| 1e9: ulp 64) that is exp2(+32) for the max key, exp2 overflow (inf, NaN) and, at |m| ~ 1e30, the max
        // key's own weight flushed to 0 (a row sum of 0). So where some row's |m| >= 2^20 (ulp >= 2^-3) the product
        // is rounded first (mul_rounded, then subtract): consistent with m, the max key gets exactly exp2(0) = 1.
        const bool huge = _mm512_cmp_ps_mask(_mm512_abs_ps(m_use), _mm512_set1_ps(1048576.0f), _CMP_GE_OQ) != 0;
        const auto expo = [&](const float *src) {
            const __m512 x = _mm512_load_ps(src);
            return huge ? _mm512_sub_ps(mul_rounded(x, vmul), m_use) : _mm512_fmsub_ps(x, vmul, m_use);
        };
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        for (j = 0; j + 2 <= nk; j += 2) {  // two independent chains hide the exp latency
            const __m512 p0 = exp2_ps_folded<DEG>(expo(col + j * BLOCK_M));
            const __m512 p1 = exp2_ps_folded<DEG>(expo(col + (j + 1) * BLOCK_M));
            store.pair(col, v, j, p0, p1);
            sum0 = _mm512_add_ps(sum0, p0);
            sum1 = _mm512_add_ps(sum1, p1);
        }
        if (j < nk) {
            const __m512 p0 = exp2_ps_folded<DEG>(expo(col + j * BLOCK_M));
            store.last(col, v, j, p0);
            sum0 = _mm512_add_ps(sum0, p0);
        }
        _mm512_store_ps(alpha + 16 * v, a);
        _mm512_store_ps(l + 16 * v, _mm512_fmadd_ps(_mm512_load_ps(l + 16 * v), a, _mm512_add_ps(sum0, sum1)));
        _mm512_store_ps(m + 16 * v, m_new);
    }
}

// P stays fp32 in sT (fp32/fp16 tables, and before dropout).
struct StoreF32InPlace {
    void pair(float *col, int, int j, __m512 p0, __m512 p1) const {
        _mm512_store_ps(col + j * BLOCK_M, p0);
        _mm512_store_ps(col + (j + 1) * BLOCK_M, p1);
    }
    void last(float *col, int, int j, __m512 p0) const { _mm512_store_ps(col + j * BLOCK_M, p0); }
};

template <int DEG>
void softmax_f32(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    softmax_core<DEG>(sT, nk, nv, mul, m, l, alpha, StoreF32InPlace{});
}

// ---- row layout (decode: at most ROW_LAYOUT_MAX_ROWS query rows per tile), any storage type ----

// 16 consecutive elements of a row widened to fp32; lanes outside `m` read nothing and are 0.
template <fa_dtype DT>
inline __m512 load16(const void *base, int64_t idx, __mmask16 m) {
    if (DT == FA_F32) return _mm512_maskz_loadu_ps(m, static_cast<const float *>(base) + idx);
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t *>(base) + idx);
    if (DT == FA_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16 -> fp32 is a shift
}

inline __mmask16 chunk_mask(int d, int c) { return d - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (d - c)) - 1u); }

template <fa_dtype DT>
void pack_q_rows(const void *const *rows, int nrows, int d, float *qR) {
    for (int r = 0; r < nrows; ++r)
        for (int c = 0; c < HEADDIM_PAD; c += 16)
            _mm512_store_ps(qR + r * HEADDIM_PAD + c,
                            c < d ? load16<DT>(rows[r], c, chunk_mask(d, c)) : _mm512_setzero_ps());
}

// Decode streams K and V rows that are nheads*headdim elements apart, usually one row per 4 KiB page, where the
// hardware prefetchers (which stop at page boundaries) cannot follow. Prefetch rows this far ahead instead; past
// the tile end these are the next tile's rows in a dense cache (prefetches never fault, so a paged cache or the
// last tile only wastes a few hints).
constexpr int ROW_PREFETCH_DISTANCE = 32;

template <fa_dtype DT>
inline void prefetch_row(const void *base, int64_t idx, int d) {
    const char *p = static_cast<const char *>(base) + idx * int64_t(DT == FA_F32 ? 4 : 2);
    const int bytes = d * (DT == FA_F32 ? 4 : 2);
    for (int off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

template <fa_dtype DT, int NR>
void scores_rows_n(const void *k, int64_t kstride, int nk, int d, const float *qR, float *sT) {
    for (int j = 0; j < nk; ++j) {
        prefetch_row<DT>(k, (j + ROW_PREFETCH_DISTANCE) * kstride, d);
        __m512 acc[NR];
        for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
        for (int c = 0; c < d; c += 16) {
            const __m512 kv = load16<DT>(k, j * kstride + c, chunk_mask(d, c));
            for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(kv, _mm512_load_ps(qR + r * HEADDIM_PAD + c), acc[r]);
        }
        float *s = sT + j * BLOCK_M;
        _mm512_store_ps(s, _mm512_setzero_ps());  // unused lanes hold 0, never stale data
        for (int r = 0; r < NR; ++r) s[r] = _mm512_reduce_add_ps(acc[r]);
    }
}

template <fa_dtype DT>
void scores_rows(const void *k, int64_t kstride, int nk, int d, const float *qR, int nrows, float *sT) {
    switch (nrows) {
        case 1: scores_rows_n<DT, 1>(k, kstride, nk, d, qR, sT); break;
        case 2: scores_rows_n<DT, 2>(k, kstride, nk, d, qR, sT); break;
        case 3: scores_rows_n<DT, 3>(k, kstride, nk, d, qR, sT); break;
        default: scores_rows_n<DT, 4>(k, kstride, nk, d, qR, sT); break;
    }
}

// oR[r][c] = alpha[r]*oR[r][c] + sum_j P[j][r] * V[j][c], 64 columns (4 vectors) x NR rows in registers.
template <fa_dtype DT, int NR>
void pv_rows_n(const void *v, int64_t vstride, int nk, int d, const float *pT, const float *alpha, float *oR) {
    constexpr int U = 4;
    for (int c0 = 0; c0 < d; c0 += 16 * U) {
        __m512 acc[NR][U];
        __mmask16 msk[U];
        for (int u = 0; u < U; ++u) msk[u] = c0 + 16 * u < d ? chunk_mask(d, c0 + 16 * u) : __mmask16(0);
        for (int r = 0; r < NR; ++r) {
            const __m512 a = _mm512_set1_ps(alpha[r]);
            for (int u = 0; u < U; ++u) acc[r][u] = _mm512_mul_ps(_mm512_load_ps(oR + r * HEADDIM_PAD + c0 + 16 * u), a);
        }
        for (int j = 0; j < nk; ++j) {
            if (c0 == 0) prefetch_row<DT>(v, (j + ROW_PREFETCH_DISTANCE) * vstride, d);
            __m512 vv[U];
            for (int u = 0; u < U; ++u) vv[u] = load16<DT>(v, j * vstride + c0 + 16 * u, msk[u]);
            for (int r = 0; r < NR; ++r) {
                const __m512 pj = _mm512_set1_ps(pT[j * BLOCK_M + r]);
                for (int u = 0; u < U; ++u) acc[r][u] = _mm512_fmadd_ps(pj, vv[u], acc[r][u]);
            }
        }
        for (int r = 0; r < NR; ++r)
            for (int u = 0; u < U; ++u)
                if (c0 + 16 * u < HEADDIM_PAD) _mm512_store_ps(oR + r * HEADDIM_PAD + c0 + 16 * u, acc[r][u]);
    }
}

template <fa_dtype DT>
void pv_rows(const void *v, int64_t vstride, int nk, int d, const float *pT, int nrows, const float *alpha,
             float *oR) {
    switch (nrows) {
        case 1: pv_rows_n<DT, 1>(v, vstride, nk, d, pT, alpha, oR); break;
        case 2: pv_rows_n<DT, 2>(v, vstride, nk, d, pT, alpha, oR); break;
        case 3: pv_rows_n<DT, 3>(v, vstride, nk, d, pT, alpha, oR); break;
        default: pv_rows_n<DT, 4>(v, vstride, nk, d, pT, alpha, oR); break;
    }
}

FA_TARGET_END

// ---- bf16 with vdpbf16ps ----
FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)

// C[r][lanes] (=|+=) sum_kp dot2(A pair (r, kp), B pair [kp][lanes]). A pair (r, kp) is the 32-bit word at
// a + r*a_rs + kp*a_ks (in uint16 units); B is [kp][BLOCK_M][2] bf16. Accumulation is fp32.
template <int R, int NV, bool SCALE_C>
inline void micro_bf16(const uint16_t *a, int64_t a_rs, int64_t a_ks, int kpairs, const uint16_t *b, float *c,
                       const float *alpha) {
    __m512 acc[R][NV];
    if (SCALE_C && alpha) {
        __m512 al[NV];
        for (int v = 0; v < NV; ++v) al[v] = _mm512_load_ps(alpha + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_mul_ps(_mm512_load_ps(c + r * BLOCK_M + 16 * v), al[v]);
    } else if (SCALE_C) {  // alpha == nullptr: every rescale factor is 1 (the running max did not move)
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_load_ps(c + r * BLOCK_M + 16 * v);
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    }
    for (int kp = 0; kp < kpairs; ++kp) {
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_load_si512(b + (kp * BLOCK_M + 16 * v) * 2);
        const uint16_t *ak = a + kp * a_ks;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            int32_t pair;
            std::memcpy(&pair, ak + r * a_rs, 4);
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], bv[v], av);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) _mm512_store_ps(c + r * BLOCK_M + 16 * v, acc[r][v]);
}

// micro_bf16 as a gemm() kernel (kk counts bf16 pairs).
template <int NV, bool SCALE_C>
struct MicroBf16 {
    template <int R>
    static void tile(const uint16_t *a, int64_t a_rs, int64_t a_ks, int kp, const uint16_t *b, float *c,
                     const float *alpha) {
        micro_bf16<R, NV, SCALE_C>(a, a_rs, a_ks, kp, b, c, alpha);
    }
};

// qT as [d/2][BLOCK_M][2] bf16 pairs (the head dim padded to even with zeros). A pair of a Q row is one 32-bit word
// (x86 is little-endian: element 2kp in the low half), so this is the 32-bit transpose of the Q rows.
void pack_qT_bf16(const void *const *rows, int nrows, int d, int nv, void *qT) {
    pack_qT_words<LoadBf16Pairs>(rows, nrows, (d + 1) / 2, d, nv, static_cast<uint32_t *>(qT));
}

// K rows copied contiguously (64-byte rows, an odd head dim padded with a zero), once per work item: the pairs are
// then read from L1 instead of rows 2-8 KiB apart that share a few L1 sets.
inline int bf16_row_stride(int d) { return (d + 31) & ~31; }

void prep_k_bf16(KvTile &t, int d) {
    const int ws = bf16_row_stride(d);
    uint16_t *dst = static_cast<uint16_t *>(t.packed);
    for (int j = 0; j < t.nk; ++j) {
        const uint16_t *s = static_cast<const uint16_t *>(t.rows) + j * t.stride;
        for (int c = 0; c < d; c += 32)
            _mm512_store_si512(dst + j * ws + c, _mm512_maskz_loadu_epi16(mask32(d - c), s + c));
    }
}

void scores_bf16(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *) {
    const int ws = bf16_row_stride(d);
    const uint16_t *kb = static_cast<const uint16_t *>(k.packed) + j0 * ws;
    gemm<MicroBf16, false>(nv, nk, kb, ws, 2, (d + 1) / 2, static_cast<const uint16_t *>(qT), sT, nullptr);
}

using avx512::interleave_bf16;

// P^T as bf16 pairs over keys, [kpairs][BLOCK_M] 32-bit words (key 2kp in the low half): the B operand of the PV
// product. An odd last key is paired with a zero.
struct StoreBf16Pairs {
    uint32_t *pp;
    void pair(float *, int v, int j, __m512 p0, __m512 p1) const {
        _mm512_store_si512(pp + (j / 2) * BLOCK_M + 16 * v, interleave_bf16(p0, p1));
    }
    void last(float *, int v, int j, __m512 p0) const {
        _mm512_store_si512(pp + (j / 2) * BLOCK_M + 16 * v, interleave_bf16(p0, _mm512_setzero_ps()));
    }
};

// The softmax step writing P directly as bf16 pairs (flash_attn rounds P to the input dtype before the PV product).
// The exp2 polynomial is degree 4: its error (< 5e-5) is far below the bf16 rounding of P (4e-3).
void softmax_p_bf16(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha, void *p) {
    softmax_core<4>(sT, nk, nv, mul, m, l, alpha, StoreBf16Pairs{static_cast<uint32_t *>(p)});
}

// fp32 P (after dropout) to bf16 pairs.
void pack_p_bf16(const float *sT, int nk, int nv, void *p) {
    uint32_t *pp = static_cast<uint32_t *>(p);
    for (int j = 0; j < nk; j += 2)
        for (int v = 0; v < nv; ++v) {
            const __m512 a = _mm512_load_ps(sT + j * BLOCK_M + 16 * v);
            const __m512 b = j + 1 < nk ? _mm512_load_ps(sT + (j + 1) * BLOCK_M + 16 * v) : _mm512_setzero_ps();
            _mm512_store_si512(pp + (j / 2) * BLOCK_M + 16 * v, interleave_bf16(a, b));
        }
}

// V rows j < nk as bf16 pairs over keys, [kpairs][dp] 32-bit words (dp = d padded to 32 columns): word (kp, c) =
// (V[2kp][c], V[2kp+1][c]); an odd last key is paired with a zero.
inline int v_pair_cols(int d) { return (d + 31) & ~31; }

void pair_v_rows(const uint16_t *v, int64_t vstride, int nk, int d, uint16_t *vp) {
    const int dp = v_pair_cols(d);
    const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                            38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    for (int kp = 0; kp < (nk + 1) / 2; ++kp) {
        const int j0 = 2 * kp, j1 = 2 * kp + 1;
        const uint16_t *v0 = v + j0 * vstride;
        const uint16_t *v1 = v + j1 * vstride;
        uint16_t *dst = vp + size_t(kp) * dp * 2;
        for (int c = 0; c < d; c += 32) {
            const __mmask32 m = mask32(d - c);
            const __m512i x0 = _mm512_maskz_loadu_epi16(m, v0 + c);
            const __m512i x1 = j1 < nk ? _mm512_maskz_loadu_epi16(m, v1 + c) : _mm512_setzero_si512();
            _mm512_store_si512(dst + 2 * c, _mm512_permutex2var_epi16(x0, lo_idx, x1));
            _mm512_store_si512(dst + 2 * c + 32, _mm512_permutex2var_epi16(x0, hi_idx, x1));
        }
    }
}

void prep_v_bf16(KvTile &t, int d) {
    pair_v_rows(static_cast<const uint16_t *>(t.rows), t.stride, t.nk, d, static_cast<uint16_t *>(t.packed));
}

void pv_bf16(const KvTile &v, int j0, int nk, int d, const void *p, int nv, const float *alpha, float *oT,
             void *scratch) {
    const int kpairs = (nk + 1) / 2;
    const int dp = v_pair_cols(d);
    const uint16_t *vp;
    if (j0 % 2 == 0 && (nk % 2 == 0 || j0 + nk == v.nk)) {
        // Keys j0.. start a pair of the prepared tile, and an odd count ends where the tile's zero pad is.
        vp = static_cast<const uint16_t *>(v.packed) + size_t(j0 / 2) * dp * 2;
    } else {
        // The query tile's band starts or ends inside a pair (local windows, causal diagonals with odd offsets):
        // pair these keys on their own, so that a key outside the band never meets a zero P (0 * inf = NaN).
        uint16_t *own = static_cast<uint16_t *>(scratch);
        pair_v_rows(static_cast<const uint16_t *>(v.rows) + j0 * v.stride, v.stride, nk, d, own);
        vp = own;
    }
    // O^T[c][lanes] += sum_kp dot2(V pair (kp, c), P pair [kp][lanes]): A pair (r=c, kp) at vp + c*2 + kp*dp*2.
    gemm<MicroBf16, true>(nv, d, vp, 2, int64_t(dp) * 2, kpairs, static_cast<const uint16_t *>(p), oT,
                          rescale_or_null(alpha, nv));
}

FA_TARGET_END

// Order: name, pack_qT, scores, softmax, pv, row layout (pack_q_rows, scores_rows, pv_rows), then
// prep_k, prep_v, softmax_p, pack_p, write_rows.
const TileKernels<float> k_f32 = {"avx512-f32", &pack_qT_f32, &scores_f32, &softmax_f32<7>, &pv_f32,
                                  &pack_q_rows<FA_F32>, &scores_rows<FA_F32>, &pv_rows<FA_F32>,
                                  &prep_f32, &prep_f32, nullptr, nullptr, &write_rows<FA_F32>};
// fp16 runs the fp32 products on K/V widened once per work item (prep_f16).
const TileKernels<float> k_f16 = {"avx512-f16", &pack_qT_f16, &scores_f32, &softmax_f32<7>, &pv_f32,
                                  &pack_q_rows<FA_F16>, &scores_rows<FA_F16>, &pv_rows<FA_F16>,
                                  &prep_f16, &prep_f16, nullptr, nullptr, &write_rows<FA_F16>};
const TileKernels<float> k_bf16 = {"avx512-bf16", &pack_qT_bf16, &scores_bf16, &softmax_f32<5>, &pv_bf16,
                                   &pack_q_rows<FA_BF16>, &scores_rows<FA_BF16>, &pv_rows<FA_BF16>,
                                   &prep_k_bf16, &prep_v_bf16, &softmax_p_bf16, &pack_p_bf16, &write_rows<FA_BF16>};

}  // namespace

const TileKernels<float> *avx512_kernels(fa_dtype dt) {
    switch (dt) {
        case FA_F32: return &k_f32;
        case FA_F16: return &k_f16;
        case FA_BF16: return cpu_features().avx512bf16 ? &k_bf16 : nullptr;  // else: portable bf16
        default: return nullptr;
    }
}

#else

const TileKernels<float> *avx512_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
