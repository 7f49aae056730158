// tile_kernels_neon.cpp - Arm NEON (AArch64 Advanced SIMD) kernels for the query-lane layout of tile_kernels.h.
//
// Compiled in AArch64 builds only (neon_common.h); chosen at run time by isa_dispatch.cpp.
//   The layout is the AVX-512 one (LANES = 16 query rows per "vector", BLOCK_M = 64): each 16-lane vector is four
//   128-bit q registers here.
//   Products: micro-kernels C[R rows][16 lanes] += A[r][k] (from the prepared K or V tile, by-element FMLA) *
//   B[k][lanes], 6 rows x 4 q registers = 24 accumulators + 4 B vectors + the A values: 30 of the 32 registers.
//   fp16 K/V widened to fp32 with fcvtl, bf16 by a 16-bit shift (exact), once per K/V tile and work item; Q the same
//   way when packed. So every dtype runs the fp32 products (P stays fp32; the bf16 dot-product extension BFDOT is not
//   used yet).
//   Softmax: 4 lanes at a time, exp2 by neon::exp2_ps (clamped: safe for any logit).
//   O out: the driver's scalar write-out (write_rows = nullptr); few-row tiles use the lane layout too.
// Speed on real Arm hardware has never been measured: these kernels were built with a cross compiler and checked
// under user-mode emulation (qemu-aarch64) only.
#include <cmath>
#include <cstring>

#include "cpu_dtype.h"
#include "neon_common.h"
#include "tile_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_NEON_KERNELS
namespace {

using neon::exp2_ps;
using neon::load4_upto;

constexpr int QREGS = LANES / 4;  // 128-bit registers per 16-lane vector

// C[r][0..16) (=|+=) sum_k A[r*a_rs + k*a_ks] * B[k*BLOCK_M + 0..16), r < R (c and b already offset to the
// 16-lane vector). With SCALE_C the old C is first multiplied by alpha[0..16) (the online-softmax rescale of O^T),
// or kept as it is when alpha is nullptr.
template <int R, bool SCALE_C>
inline void micro(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c, const float *alpha) {
    float32x4_t acc[R][QREGS];
    for (int r = 0; r < R; ++r)
        for (int w = 0; w < QREGS; ++w) {
            if (SCALE_C && alpha) acc[r][w] = vmulq_f32(vld1q_f32(c + r * BLOCK_M + 4 * w), vld1q_f32(alpha + 4 * w));
            else if (SCALE_C) acc[r][w] = vld1q_f32(c + r * BLOCK_M + 4 * w);
            else acc[r][w] = vdupq_n_f32(0.0f);
        }
    for (int k = 0; k < kk; ++k) {
        float32x4_t bv[QREGS];
        for (int w = 0; w < QREGS; ++w) bv[w] = vld1q_f32(b + k * BLOCK_M + 4 * w);
        const float *ak = a + k * a_ks;
        for (int r = 0; r < R; ++r) {
            const float av = ak[r * a_rs];
            for (int w = 0; w < QREGS; ++w) acc[r][w] = vfmaq_n_f32(acc[r][w], bv[w], av);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int w = 0; w < QREGS; ++w) vst1q_f32(c + r * BLOCK_M + 4 * w, acc[r][w]);
}

// All `rows` rows of C, every 16-lane vector, in 6-row tiles (then 4/2/1).
template <bool SCALE_C>
void gemm(int nv, int rows, const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
          const float *alpha) {
    for (int v = 0; v < nv; ++v) {
        const float *bv = b + LANES * v;
        float *cv = c + LANES * v;
        const float *al = alpha ? alpha + LANES * v : nullptr;
        int r = 0;
        for (; r + 6 <= rows; r += 6) micro<6, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, bv, cv + r * BLOCK_M, al);
        if (r + 4 <= rows) { micro<4, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, bv, cv + r * BLOCK_M, al); r += 4; }
        if (r + 2 <= rows) { micro<2, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, bv, cv + r * BLOCK_M, al); r += 2; }
        if (r < rows) micro<1, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, bv, cv + r * BLOCK_M, al);
    }
}

// nullptr when every rescale factor of the nv query vectors is exactly 1 (no row's running max moved): the PV
// product then skips the multiply of O^T by alpha.
inline const float *rescale_or_null(const float *alpha, int nv) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    for (int w = 0; w < nv * QREGS; ++w)
        if (vminvq_u32(vceqq_f32(vld1q_f32(alpha + 4 * w), one)) == 0) return alpha;
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
        alignas(16) float row[HEADDIM_PAD];
        for (int c = 0; c < d; c += 4) vst1q_f32(row + c, load4_upto<DT>(rows[r], 0, c, d));
        for (int c = 0; c < d; ++c) qT[c * BLOCK_M + r] = row[c];
    }
}

// K/V tiles as contiguous fp32 rows (stride widened_stride), widened once per K/V tile and work item: the user's
// rows are often KiBs apart (row stride = nheads * headdim); the contiguous copy keeps the tile in L1/L2 while the
// micro-kernels sweep it.
inline int widened_stride(int d) { return (d + 3) & ~3; }

template <fa_dtype DT>
void prep(KvTile &t, int d) {
    const int ws = widened_stride(d);
    float *dst = static_cast<float *>(t.packed);
    for (int j = 0; j < t.nk; ++j)
        for (int c = 0; c < d; c += 4) vst1q_f32(dst + j * ws + c, load4_upto<DT>(t.rows, j * t.stride, c, d));
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
// follows (GCC contracts a multiply-subtract into an FMA by default).
inline float32x4_t mul_rounded(float32x4_t s, float32x4_t mul) {
    float32x4_t t = vmulq_f32(s, mul);
    __asm__("" : "+w"(t));
    return t;
}

// Online-softmax step, 4 query rows (lanes) at a time. Pass 1 finds the max of the raw scores (mul > 0 commutes with
// max; a negative mul uses the min); pass 2 replaces sT by p = exp2(round(s*mul) - m) and sums it. m is the max of
// the same rounded products, so the argument is <= 0 exactly and the row max gets p = 1 for any logit size (see
// tile_kernels_avx2.cpp for why a fused s*mul - m would not).
void softmax(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    const float32x4_t vmul = vdupq_n_f32(mul);
    const float32x4_t neg_inf = vdupq_n_f32(-INFINITY);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    for (int w = 0; w < nv * QREGS; ++w) {
        float *col = sT + 4 * w;
        const float32x4_t m_old = vld1q_f32(m + 4 * w);
        float32x4_t ext0, ext1;  // two chains for latency
        int j = 0;
        if (mul >= 0.0f) {
            ext0 = ext1 = neg_inf;
            for (; j + 2 <= nk; j += 2) {
                ext0 = vmaxq_f32(ext0, vld1q_f32(col + j * BLOCK_M));
                ext1 = vmaxq_f32(ext1, vld1q_f32(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = vmaxq_f32(ext0, vld1q_f32(col + j * BLOCK_M));
            ext0 = vmaxq_f32(ext0, ext1);
        } else {
            ext0 = ext1 = vdupq_n_f32(INFINITY);
            for (; j + 2 <= nk; j += 2) {
                ext0 = vminq_f32(ext0, vld1q_f32(col + j * BLOCK_M));
                ext1 = vminq_f32(ext1, vld1q_f32(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = vminq_f32(ext0, vld1q_f32(col + j * BLOCK_M));
            ext0 = vminq_f32(ext0, ext1);
        }
        // FMAX propagates a NaN extreme (a NaN score), so the row's output is NaN, as on the x86 paths and in torch.
        const float32x4_t m_new = vmaxq_f32(m_old, vmulq_f32(ext0, vmul));
        // Rows that have seen only masked keys keep m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        const float32x4_t m_use = vbslq_f32(vceqq_f32(m_new, neg_inf), zero, m_new);
        const float32x4_t a = exp2_ps(vsubq_f32(m_old, m_use));
        float32x4_t sum0 = zero, sum1 = zero;
        for (j = 0; j + 2 <= nk; j += 2) {  // two independent chains hide the exp latency
            const float32x4_t p0 = exp2_ps(vsubq_f32(mul_rounded(vld1q_f32(col + j * BLOCK_M), vmul), m_use));
            const float32x4_t p1 = exp2_ps(vsubq_f32(mul_rounded(vld1q_f32(col + (j + 1) * BLOCK_M), vmul), m_use));
            vst1q_f32(col + j * BLOCK_M, p0);
            vst1q_f32(col + (j + 1) * BLOCK_M, p1);
            sum0 = vaddq_f32(sum0, p0);
            sum1 = vaddq_f32(sum1, p1);
        }
        if (j < nk) {
            const float32x4_t p0 = exp2_ps(vsubq_f32(mul_rounded(vld1q_f32(col + j * BLOCK_M), vmul), m_use));
            vst1q_f32(col + j * BLOCK_M, p0);
            sum0 = vaddq_f32(sum0, p0);
        }
        vst1q_f32(alpha + 4 * w, a);
        vst1q_f32(l + 4 * w, vfmaq_f32(vaddq_f32(sum0, sum1), vld1q_f32(l + 4 * w), a));
        vst1q_f32(m + 4 * w, m_new);
    }
}

// Order: name, pack_qT, scores, softmax, pv, row layout (pack_q_rows, scores_rows, pv_rows), then
// prep_k, prep_v, softmax_p, pack_p, write_rows.
template <fa_dtype DT>
constexpr TileKernels<float> table(const char *name) {
    return TileKernels<float>{name,     &pack_qT<DT>, &scores, &softmax, &pv, nullptr, nullptr, nullptr,
                              &prep<DT>, &prep<DT>,   nullptr, nullptr,  nullptr};
}
const TileKernels<float> k_f32 = table<FA_F32>("neon-f32");
const TileKernels<float> k_f16 = table<FA_F16>("neon-f16");
const TileKernels<float> k_bf16 = table<FA_BF16>("neon-bf16");

}  // namespace

const TileKernels<float> *neon_kernels(fa_dtype dt) { return table_for(dt, &k_f32, &k_f16, &k_bf16); }

#else

const TileKernels<float> *neon_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
