// decode_kernels_avx2.cpp - AVX2 (+FMA, +F16C) decode kernels (see decode_kernels.h for the memory-order walk), for
// x86-64 CPUs without AVX-512.
//
//   fp32 FMA over the head dim, 8 lanes; fp16 widened on load with vcvtph2ps, bf16 by a 16-bit shift (exact); O += p V
//   in fp32. With 16 ymm registers a K/V vector load is shared by at most 2 query rows of a KV head (4 keys x 2 rows
//   = 8 accumulators + 4 K vectors + q); 3-4 rows take a second pass over the head's K/V vectors, from L1.
//   Partial scores are plain sums: partial[row*64 + 16g + u] = score of key g + 4u (4 floats per group; the
//   portable layout), so scores_finish is one 4x4 transpose per row.
#include <cmath>

#include "avx2_common.h"
#include "cpu_dtype.h"
#include "decode_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_AVX2_KERNELS
namespace {

using avx2::exp2_ps;
using avx2::load8_upto;

FA_TARGET_BEGIN(FA_ISA_AVX2)

template <fa_dtype DT>
void pack_q(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    float *q = static_cast<float *>(qpack);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < pitch; c += 8)
            _mm256_store_ps(q + size_t(r) * pitch + c, c < d ? load8_upto<DT>(qrows[r], 0, c, d) : _mm256_setzero_ps());
}

// [sum a0, sum a1, sum a2, sum a3]
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Rows r0..r0+R-1 of KV head at h0: the four keys' dot products with each row, R <= 2 (register budget).
template <fa_dtype DT, int R>
inline void scores_rows(const void *const *krows, int64_t h0, int d, int pitch, const float *qh, float *part) {
    const void *k0 = krows[0], *k1 = krows[1], *k2 = krows[2], *k3 = krows[3];
    __m256 acc[4][R];
    for (int u = 0; u < 4; ++u)
        for (int r = 0; r < R; ++r) acc[u][r] = _mm256_setzero_ps();
    for (int c = 0; c < d; c += 8) {
        const __m256 a0 = load8_upto<DT>(k0, h0, c, d), a1 = load8_upto<DT>(k1, h0, c, d),
                     a2 = load8_upto<DT>(k2, h0, c, d), a3 = load8_upto<DT>(k3, h0, c, d);
        for (int r = 0; r < R; ++r) {
            const __m256 qv = _mm256_load_ps(qh + r * pitch + c);
            acc[0][r] = _mm256_fmadd_ps(a0, qv, acc[0][r]);
            acc[1][r] = _mm256_fmadd_ps(a1, qv, acc[1][r]);
            acc[2][r] = _mm256_fmadd_ps(a2, qv, acc[2][r]);
            acc[3][r] = _mm256_fmadd_ps(a3, qv, acc[3][r]);
        }
    }
    for (int r = 0; r < R; ++r) _mm_store_ps(part + r * 64, hsum4(acc[0][r], acc[1][r], acc[2][r], acc[3][r]));
}

template <fa_dtype DT>
void scores_group(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                  const void *qpack, int g, float *partial) {
    const float *q = static_cast<const float *>(qpack);
    for (int hk = 0; hk < hkv; ++hk) {
        const int64_t h0 = hk * head_stride;
        for (int r = 0; r < rows; r += 2) {
            const float *qr = q + size_t(hk * rows + r) * pitch;
            float *part = partial + (hk * rows + r) * 64 + 16 * g;
            if (r + 2 <= rows) scores_rows<DT, 2>(krows, h0, d, pitch, qr, part);
            else scores_rows<DT, 1>(krows, h0, d, pitch, qr, part);
        }
    }
}

// Group g holds keys g, g+4, g+8, g+12 in its 4 floats: a 4x4 transpose puts key j in lane j.
void scores_finish(const float *partial, int n, float *s) {
    for (int row = 0; row < n; ++row) {
        const float *x = partial + row * 64;
        __m128 x0 = _mm_load_ps(x), x1 = _mm_load_ps(x + 16), x2 = _mm_load_ps(x + 32), x3 = _mm_load_ps(x + 48);
        _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
        float *sr = s + row * DECODE_BLOCK;
        _mm_store_ps(sr, x0);
        _mm_store_ps(sr + 4, x1);
        _mm_store_ps(sr + 8, x2);
        _mm_store_ps(sr + 12, x3);
    }
}

// Online-softmax step per row on its 16 scores (two vectors). x - m <= 0 exactly here (m is the max of the same
// rounded products), and exp2_ps clamps its argument anyway: huge logits cannot overflow.
void softmax(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
    const __m256 vmul = _mm256_set1_ps(mul);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // lanes past nk become -inf after the multiply (a negative softmax scale must not turn them into +inf)
    const __m256 valid0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nk), lane));
    const __m256 valid1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nk - 8), lane));
    for (int row = 0; row < n; ++row) {
        float *sr = s + row * DECODE_BLOCK;
        const __m256 x0 = _mm256_blendv_ps(neg_inf, _mm256_mul_ps(_mm256_load_ps(sr), vmul), valid0);
        const __m256 x1 = _mm256_blendv_ps(neg_inf, _mm256_mul_ps(_mm256_load_ps(sr + 8), vmul), valid1);
        const float m_new = std::fmax(m[row], avx2::hmax(_mm256_max_ps(x0, x1)));
        const __m256 shift = _mm256_set1_ps(softmax_shift(m_new));
        const __m256 p0 = exp2_ps(_mm256_sub_ps(x0, shift)), p1 = exp2_ps(_mm256_sub_ps(x1, shift));
        _mm256_store_ps(sr, p0);
        _mm256_store_ps(sr + 8, p1);
        const float alpha = advance_row(m[row], l[row], m_new, avx2::hsum(_mm256_add_ps(p0, p1)));
        if (alpha != 1.0f) {
            const __m256 a = _mm256_set1_ps(alpha);
            float *orow = o + size_t(row) * pitch;
            for (int c = 0; c < d; c += 8) _mm256_store_ps(orow + c, _mm256_mul_ps(_mm256_load_ps(orow + c), a));
        }
    }
}

// O rows r..r+R-1 (R <= 2) of KV head at h0 += sum_u p_u V_u over four keys: each O vector loaded and stored once
// per four V vectors. Columns past d read V as 0 (the O pitch is a multiple of 32, so the stores stay inside).
template <fa_dtype DT, int R>
inline void pv_rows4(const void *v0, const void *v1, const void *v2, const void *v3, int64_t h0, int d, int pitch,
                     const float *p, int pstep, float *oh) {
    __m256 pb[R][4];
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < 4; ++u) pb[r][u] = _mm256_set1_ps(p[r * DECODE_BLOCK + u * pstep]);
    for (int c = 0; c < d; c += 8) {
        const __m256 a0 = load8_upto<DT>(v0, h0, c, d), a1 = load8_upto<DT>(v1, h0, c, d),
                     a2 = load8_upto<DT>(v2, h0, c, d), a3 = load8_upto<DT>(v3, h0, c, d);
        for (int r = 0; r < R; ++r) {
            float *oc = oh + r * pitch + c;
            __m256 acc = _mm256_fmadd_ps(pb[r][0], a0, _mm256_load_ps(oc));
            acc = _mm256_fmadd_ps(pb[r][1], a1, acc);
            acc = _mm256_fmadd_ps(pb[r][2], a2, acc);
            _mm256_store_ps(oc, _mm256_fmadd_ps(pb[r][3], a3, acc));
        }
    }
}

template <fa_dtype DT>
void pv(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch, const float *p,
        int pstep, float *o) {
    int j = 0;
    for (; j + 4 <= nk; j += 4) {
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            for (int r = 0; r < rows; r += 2) {
                const float *pr = p + (hk * rows + r) * DECODE_BLOCK + j * pstep;
                float *orow = o + size_t(hk * rows + r) * pitch;
                if (r + 2 <= rows)
                    pv_rows4<DT, 2>(vrows[j], vrows[j + 1], vrows[j + 2], vrows[j + 3], h0, d, pitch, pr, pstep, orow);
                else
                    pv_rows4<DT, 1>(vrows[j], vrows[j + 1], vrows[j + 2], vrows[j + 3], h0, d, pitch, pr, pstep, orow);
            }
        }
    }
    for (; j < nk; ++j) {
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            for (int r = 0; r < rows; ++r) {
                const int row = hk * rows + r;
                const __m256 pj = _mm256_set1_ps(p[row * DECODE_BLOCK + j * pstep]);
                float *orow = o + size_t(row) * pitch;
                for (int c = 0; c < d; c += 8)
                    _mm256_store_ps(orow + c, _mm256_fmadd_ps(pj, load8_upto<DT>(vrows[j], h0, c, d),
                                                              _mm256_load_ps(orow + c)));
            }
        }
    }
}

FA_TARGET_END

const DecodeKernels k_f32 = {"avx2-f32", &pack_q<FA_F32>, &scores_group<FA_F32>, &scores_finish, &softmax,
                             &pv<FA_F32>};
const DecodeKernels k_f16 = {"avx2-f16", &pack_q<FA_F16>, &scores_group<FA_F16>, &scores_finish, &softmax,
                             &pv<FA_F16>};
const DecodeKernels k_bf16 = {"avx2-bf16", &pack_q<FA_BF16>, &scores_group<FA_BF16>, &scores_finish, &softmax,
                              &pv<FA_BF16>};

}  // namespace

const DecodeKernels *avx2_decode_kernels(fa_dtype dt) {
    return table_for(dt, &k_f32, &k_f16, &k_bf16);
}

#else

const DecodeKernels *avx2_decode_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
