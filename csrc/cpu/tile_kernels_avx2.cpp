// tile_kernels_avx2.cpp - AVX2 (+FMA, +F16C) kernels for the query-lane layout of tile_kernels.h, for x86-64 CPUs
// without AVX-512.
//
// Compiled for any x86-64 target; the AVX2 code lives in FA_TARGET_BEGIN(FA_ISA_AVX2) regions and is only reached
// after isa_dispatch.cpp has checked the CPU (no -march flag, no illegal instruction on older CPUs).
//   The layout is the AVX-512 one (LANES = 16 query rows per "vector", BLOCK_M = 64): each 16-lane vector is two
//   8-lane ymm registers here.
//   Products: micro-kernels C[R rows][32 lanes] += A[r][k] (broadcast from the prepared K or V tile) * B[k][lanes],
//   3 rows x 4 ymm = 12 accumulators + 4 B vectors + 1 broadcast (17 values for 16 ymm registers: the compiler re-reads
//   one from L1); an odd last 16-lane vector uses 6 rows x 2 ymm. fp32 FMA. The 32-lane
//   tile measured ~8% faster than 6 x 16 lanes alone on Zen 4 (fewer loads per FMA).
//   fp16 K/V widened to fp32 with vcvtph2ps, bf16 by a 16-bit shift (exact), once per K/V tile and work item; Q the
//   same way when packed. So every dtype runs the fp32 products (AVX2 has no bf16 dot product; P stays fp32).
//   Softmax: 8 lanes at a time, exp2 by avx2::exp2_ps (clamped: safe for any logit).
//   O out: the driver's scalar write-out (write_rows = nullptr); few-row tiles use the lane layout too.
#include <cmath>
#include <cstring>

#include "avx2_common.h"
#include "cpu_dtype.h"
#include "tile_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_AVX2_KERNELS
namespace {

using avx2::exp2_ps;
using avx2::load8_upto;

FA_TARGET_BEGIN(FA_ISA_AVX2)

// C[r][0..8W) (=|+=) sum_k A[r*a_rs + k*a_ks] * B[k*BLOCK_M + 0..8W), r < R: R rows x W ymm accumulators (c and b
// already offset to the first lane). With SCALE_C the old C is first multiplied by alpha[0..8W) (the online-softmax
// rescale of O^T), or kept as it is when alpha is nullptr (every rescale factor is 1: the running max did not move).
template <int R, int W, bool SCALE_C>
inline void micro(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c, const float *alpha) {
    __m256 acc[R][W];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
        for (int w = 0; w < W; ++w) {
            if (SCALE_C && alpha)
                acc[r][w] = _mm256_mul_ps(_mm256_load_ps(c + r * BLOCK_M + 8 * w), _mm256_load_ps(alpha + 8 * w));
            else if (SCALE_C) acc[r][w] = _mm256_load_ps(c + r * BLOCK_M + 8 * w);
            else acc[r][w] = _mm256_setzero_ps();
        }
    for (int k = 0; k < kk; ++k) {
        __m256 bv[W];
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) bv[w] = _mm256_load_ps(b + k * BLOCK_M + 8 * w);
        const float *ak = a + k * a_ks;
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            const __m256 av = _mm256_broadcast_ss(ak + r * a_rs);
#pragma GCC unroll 4
            for (int w = 0; w < W; ++w) acc[r][w] = _mm256_fmadd_ps(av, bv[w], acc[r][w]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
        for (int w = 0; w < W; ++w) _mm256_store_ps(c + r * BLOCK_M + 8 * w, acc[r][w]);
}

// All `rows` rows of C over W ymm vectors: register tiles of the most rows the 16 ymm registers hold (R*W
// accumulators + W B vectors + the broadcast: 3 rows of 4, 6 rows of 2), then 4 (W = 2), 2 and 1 rows.
template <int W, bool SCALE_C>
void gemm_cols(int rows, const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
               const float *alpha) {
    constexpr int R = W == 4 ? 3 : 6;
    int r = 0;
    for (; r + R <= rows; r += R) micro<R, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
    if constexpr (W == 2) {
        if (r + 4 <= rows) { micro<4, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 4; }
    }
    if (r + 2 <= rows) { micro<2, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 2; }
    if (r < rows) micro<1, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
}

// All `rows` rows of C: pairs of 16-lane vectors (4 ymm per row), then an odd last vector (2 ymm per row).
template <bool SCALE_C>
void gemm(int nv, int rows, const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
          const float *alpha) {
    int v = 0;
    for (; v + 2 <= nv; v += 2)
        gemm_cols<4, SCALE_C>(rows, a, a_rs, a_ks, kk, b + 16 * v, c + 16 * v, alpha ? alpha + 16 * v : nullptr);
    for (; v < nv; ++v)
        gemm_cols<2, SCALE_C>(rows, a, a_rs, a_ks, kk, b + 16 * v, c + 16 * v, alpha ? alpha + 16 * v : nullptr);
}

// nullptr when every rescale factor of the nv query vectors is exactly 1 (no row's running max moved): the PV
// product then skips the multiply of O^T by alpha.
inline const float *rescale_or_null(const float *alpha, int nv) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int w = 0; w < 2 * nv; ++w)
        if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_load_ps(alpha + 8 * w), one, _CMP_EQ_OQ)) != 0xff) return alpha;
    return nullptr;
}

// qT[c][r] = Q row r, element c, widened to fp32; 0 for rows r >= nrows (lanes up to nv*16). Once per query tile
// and work item, so plain loops do.
template <fa_dtype DT>
void pack_qT(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    float *qT = static_cast<float *>(qT_);
    const int lanes = nv * LANES;
    for (int c = 0; c < d; ++c) std::memset(qT + c * BLOCK_M + nrows, 0, sizeof(float) * size_t(lanes - nrows));
    for (int r = 0; r < nrows; ++r) {
        alignas(32) float row[HEADDIM_PAD];
        for (int c = 0; c < d; c += 8) _mm256_store_ps(row + c, load8_upto<DT>(rows[r], 0, c, d));
        for (int c = 0; c < d; ++c) qT[c * BLOCK_M + r] = row[c];
    }
}

// K/V tiles as contiguous fp32 rows (stride widened_stride), widened once per K/V tile and work item. The user's
// rows are often KiBs apart (row stride = nheads * headdim); the contiguous copy keeps the tile in L1/L2 while the
// micro-kernels sweep it.
inline int widened_stride(int d) { return (d + 7) & ~7; }

template <fa_dtype DT>
void prep(KvTile &t, int d) {
    const int ws = widened_stride(d);
    float *dst = static_cast<float *>(t.packed);
    for (int j = 0; j < t.nk; ++j)
        for (int c = 0; c < d; c += 8) _mm256_store_ps(dst + j * ws + c, load8_upto<DT>(t.rows, j * t.stride, c, d));
}

void scores(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *) {
    // S^T[j][lanes] = sum_c K[j][c] * qT[c][lanes]: A = K rows (row stride ws, k stride 1).
    const int ws = widened_stride(d);
    gemm<false>(nv, nk, static_cast<const float *>(k.packed) + j0 * ws, ws, 1, d, static_cast<const float *>(qT), sT,
                nullptr);
}

void pv(const KvTile &v, int j0, int nk, int d, const void *pT, int nv, const float *alpha, float *oT, void *) {
    // O^T[c][lanes] = alpha*O^T + sum_j V[j][c] * P^T[j][lanes]: A = V^T (row stride 1, k stride ws).
    const int ws = widened_stride(d);
    gemm<true>(nv, d, static_cast<const float *>(v.packed) + j0 * ws, 1, ws, nk, static_cast<const float *>(pT), oT,
               rescale_or_null(alpha, nv));
}

// s * mul rounded to fp32 on its own: the asm barrier keeps the compiler from fusing it with the subtraction that
// follows (GCC contracts vector multiply-subtract into an FMA by default).
inline __m256 mul_rounded(__m256 s, __m256 mul) {
    __m256 t = _mm256_mul_ps(s, mul);
    __asm__("" : "+x"(t));
    return t;
}

// Online-softmax step, 8 query rows (lanes) at a time. Pass 1 finds the max of the raw scores (mul > 0 commutes with
// max; a negative mul uses the min); pass 2 replaces sT by p = exp2(round(s*mul) - m) and sums it. m is the max of
// the same rounded products, so the argument is <= 0 exactly and the row max gets p = 1 for any logit size. A fused
// s*mul - m would not: for huge logits (softmax_scale 1e10: m ~ 1e11, ulp 8192) its residue for the max key is
// thousands either way, i.e. p = 0 for every key (O = 0) or an overflowing exp2.
void softmax(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    const __m256 vmul = _mm256_set1_ps(mul);
    const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
    const __m256 zero = _mm256_setzero_ps();
    for (int w = 0; w < 2 * nv; ++w) {
        float *col = sT + 8 * w;
        const __m256 m_old = _mm256_load_ps(m + 8 * w);
        __m256 ext0, ext1;  // two chains for latency
        int j = 0;
        if (mul >= 0.0f) {
            ext0 = ext1 = neg_inf;
            for (; j + 2 <= nk; j += 2) {
                ext0 = _mm256_max_ps(ext0, _mm256_load_ps(col + j * BLOCK_M));
                ext1 = _mm256_max_ps(ext1, _mm256_load_ps(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = _mm256_max_ps(ext0, _mm256_load_ps(col + j * BLOCK_M));
            ext0 = _mm256_max_ps(ext0, ext1);
        } else {
            ext0 = ext1 = _mm256_set1_ps(INFINITY);
            for (; j + 2 <= nk; j += 2) {
                ext0 = _mm256_min_ps(ext0, _mm256_load_ps(col + j * BLOCK_M));
                ext1 = _mm256_min_ps(ext1, _mm256_load_ps(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = _mm256_min_ps(ext0, _mm256_load_ps(col + j * BLOCK_M));
            ext0 = _mm256_min_ps(ext0, ext1);
        }
        const __m256 m_new = _mm256_max_ps(m_old, _mm256_mul_ps(ext0, vmul));
        // Rows that have seen only masked keys keep m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        const __m256 m_use = _mm256_blendv_ps(m_new, zero, _mm256_cmp_ps(m_new, neg_inf, _CMP_EQ_OQ));
        const __m256 a = exp2_ps(_mm256_sub_ps(m_old, m_use));
        __m256 sum0 = zero, sum1 = zero;
        for (j = 0; j + 2 <= nk; j += 2) {  // two independent chains hide the exp latency
            const __m256 p0 =
                exp2_ps(_mm256_sub_ps(mul_rounded(_mm256_load_ps(col + j * BLOCK_M), vmul), m_use));
            const __m256 p1 =
                exp2_ps(_mm256_sub_ps(mul_rounded(_mm256_load_ps(col + (j + 1) * BLOCK_M), vmul), m_use));
            _mm256_store_ps(col + j * BLOCK_M, p0);
            _mm256_store_ps(col + (j + 1) * BLOCK_M, p1);
            sum0 = _mm256_add_ps(sum0, p0);
            sum1 = _mm256_add_ps(sum1, p1);
        }
        if (j < nk) {
            const __m256 p0 =
                exp2_ps(_mm256_sub_ps(mul_rounded(_mm256_load_ps(col + j * BLOCK_M), vmul), m_use));
            _mm256_store_ps(col + j * BLOCK_M, p0);
            sum0 = _mm256_add_ps(sum0, p0);
        }
        _mm256_store_ps(alpha + 8 * w, a);
        _mm256_store_ps(l + 8 * w, _mm256_fmadd_ps(_mm256_load_ps(l + 8 * w), a, _mm256_add_ps(sum0, sum1)));
        _mm256_store_ps(m + 8 * w, m_new);
    }
}

FA_TARGET_END

// Order: name, pack_qT, scores, softmax, pv, row layout (pack_q_rows, scores_rows, pv_rows), then
// prep_k, prep_v, softmax_p, pack_p, write_rows.
template <fa_dtype DT>
constexpr TileKernels<float> table(const char *name) {
    return TileKernels<float>{name,     &pack_qT<DT>, &scores, &softmax, &pv, nullptr, nullptr, nullptr,
                              &prep<DT>, &prep<DT>,   nullptr, nullptr,  nullptr};
}
const TileKernels<float> k_f32 = table<FA_F32>("avx2-f32");
const TileKernels<float> k_f16 = table<FA_F16>("avx2-f16");
const TileKernels<float> k_bf16 = table<FA_BF16>("avx2-bf16");

}  // namespace

const TileKernels<float> *avx2_kernels(fa_dtype dt) {
    return table_for(dt, &k_f32, &k_f16, &k_bf16);
}

#else

const TileKernels<float> *avx2_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
