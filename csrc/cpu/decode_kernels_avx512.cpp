// decode_kernels_avx512.cpp - AVX-512 decode kernels (see decode_kernels.h for the memory-order walk).
//
//   fp32: vfmadd231ps over the head dim; fp16 widened on the fly with vcvtph2ps; bf16 scores with vdpbf16ps
//   (pairs over the head dim, fp32 accumulation, q kept in bf16 as given) when AVX512-BF16 is present, otherwise
//   widened by a shift; O += p * V always in fp32 (P is not rounded to bf16 here: the loop is memory bound anyway).
// Every kernel is instantiated per row count (1..DECODE_MAX_ROWS) so the rows sharing a K/V vector load stay in
// registers.
#include <cmath>
#include <cstring>

#include "avx512_common.h"
#include "cpu_dtype.h"
#include "cpu_features.h"
#include "decode_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

using avx512::exp2_ps_scaled_arg;
using avx512::load16;
using avx512::mask16;

FA_TARGET_BEGIN(FA_ISA_AVX512)

// Transposed reductions: the horizontal sums of 16 vectors (4 keys x 4 key groups of one row) in one vector, with
// 15 adds and 30 shuffles instead of 16 separate horizontal reductions. fold4 packs the sums of the 4 keys of a
// group into one vector (two rounds that halve the width and double the keys per register); finish4 folds the 4
// groups' vectors; with group g holding keys g, g+4, g+8, g+12 this leaves key j in lane j.
inline __m512 fold4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
}
inline __m512 finish4(const float *x) {
    const __m512 x0 = _mm512_load_ps(x), x1 = _mm512_load_ps(x + 16), x2 = _mm512_load_ps(x + 32),
                 x3 = _mm512_load_ps(x + 48);
    const __m512 y0 = _mm512_add_ps(_mm512_shuffle_ps(x0, x1, 0x44), _mm512_shuffle_ps(x0, x1, 0xEE));
    const __m512 y1 = _mm512_add_ps(_mm512_shuffle_ps(x2, x3, 0x44), _mm512_shuffle_ps(x2, x3, 0xEE));
    // lane 4u + g: the sum of x_g's fourth u, i.e. key g + 4u of group g = lane j for key j
    return _mm512_add_ps(_mm512_shuffle_ps(y0, y1, 0x88), _mm512_shuffle_ps(y0, y1, 0xDD));
}

template <fa_dtype DT>
void pack_q_f32(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    float *q = static_cast<float *>(qpack);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < pitch; c += 16)
            _mm512_store_ps(q + size_t(r) * pitch + c,
                            c < d ? load16<DT>(qrows[r], c, mask16(d - c))
                                  : _mm512_setzero_ps());
}

// Scores of one key group: four K rows read together, and the R rows of a KV head share every K vector, so each q
// vector load feeds four products. K is the head-dim step: WidenedK (16 elements widened to fp32, fp32 FMA) or
// Bf16PairsK (32 bf16 as 16 pairs, vdpbf16ps; in the bf16 region below). always_inline: Bf16PairsK needs a wider ISA
// than this region, which is fine once the body is inlined into a caller compiled for it.
template <class K, int R>
__attribute__((always_inline)) inline void scores_keys(const void *const *krows, int64_t head_stride, int hkv, int d,
                                                       int pitch, const typename K::QElem *q, int g, float *partial) {
    const int full = d / K::STEP, tail = d % K::STEP;
    const typename K::mask tm = K::tail_mask(tail);
    const void *k0 = krows[0], *k1 = krows[1], *k2 = krows[2], *k3 = krows[3];
    for (int hk = 0; hk < hkv; ++hk) {
        const int64_t h0 = hk * head_stride;
        const typename K::QElem *qh = q + size_t(hk) * R * pitch;
        __m512 acc[4][R];
        for (int u = 0; u < 4; ++u)
            for (int r = 0; r < R; ++r) acc[u][r] = _mm512_setzero_ps();
        for (int c = 0; c <= full; ++c) {
            if (c == full && !tail) break;
            const typename K::mask m = c < full ? K::all() : tm;
            const typename K::kvec a0 = K::load(k0, h0 + K::STEP * c, m), a1 = K::load(k1, h0 + K::STEP * c, m),
                                   a2 = K::load(k2, h0 + K::STEP * c, m), a3 = K::load(k3, h0 + K::STEP * c, m);
            for (int r = 0; r < R; ++r) {
                const typename K::kvec qv = K::load_q(qh + r * pitch + K::STEP * c);
                acc[0][r] = K::madd(acc[0][r], a0, qv);
                acc[1][r] = K::madd(acc[1][r], a1, qv);
                acc[2][r] = K::madd(acc[2][r], a2, qv);
                acc[3][r] = K::madd(acc[3][r], a3, qv);
            }
        }
        for (int r = 0; r < R; ++r)
            _mm512_store_ps(partial + (hk * R + r) * 64 + g * 16, fold4(acc[0][r], acc[1][r], acc[2][r], acc[3][r]));
    }
}

// scores_group for table K: the row count (1..DECODE_MAX_ROWS) as a template argument.
template <class K>
__attribute__((always_inline)) inline void scores_by_rows(const void *const *krows, int64_t head_stride, int hkv,
                                                          int rows, int d, int pitch, const void *qpack, int g,
                                                          float *partial) {
    const typename K::QElem *q = static_cast<const typename K::QElem *>(qpack);
    switch (rows) {
        case 1: scores_keys<K, 1>(krows, head_stride, hkv, d, pitch, q, g, partial); break;
        case 2: scores_keys<K, 2>(krows, head_stride, hkv, d, pitch, q, g, partial); break;
        case 3: scores_keys<K, 3>(krows, head_stride, hkv, d, pitch, q, g, partial); break;
        default: scores_keys<K, 4>(krows, head_stride, hkv, d, pitch, q, g, partial); break;
    }
}

// fp32 FMAs on K widened on load (fp16 by vcvtph2ps, bf16 by a shift).
template <fa_dtype DT>
struct WidenedK {
    using QElem = float;
    using kvec = __m512;
    using mask = __mmask16;
    static constexpr int STEP = 16;
    static mask all() { return __mmask16(0xffff); }
    static mask tail_mask(int tail) { return mask16(tail); }
    static kvec load(const void *base, int64_t idx, mask m) { return load16<DT>(base, idx, m); }
    static kvec load_q(const float *p) { return _mm512_load_ps(p); }
    static __m512 madd(__m512 acc, kvec a, kvec qv) { return _mm512_fmadd_ps(a, qv, acc); }
};

template <fa_dtype DT>
void scores_widen(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                  const void *qpack, int g, float *partial) {
    scores_by_rows<WidenedK<DT>>(krows, head_stride, hkv, rows, d, pitch, qpack, g, partial);
}

void scores_finish(const float *partial, int n, float *s) {
    for (int row = 0; row < n; ++row) _mm512_store_ps(s + row * DECODE_BLOCK, finish4(partial + row * 64));
}

// Online-softmax step per row on its 16 scores (one vector).
void softmax(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    const __mmask16 valid = mask16(nk);
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    const __m512 vmul = _mm512_set1_ps(mul);
    for (int row = 0; row < n; ++row) {
        // lanes past nk become -inf after the multiply (a negative softmax scale must not turn them into +inf)
        const __m512 x = _mm512_mask_mul_ps(neg_inf, valid, _mm512_load_ps(s + row * DECODE_BLOCK), vmul);
        const float m_new = std::fmax(m[row], _mm512_reduce_max_ps(x));
        const __m512 p = exp2_ps_scaled_arg(_mm512_sub_ps(x, _mm512_set1_ps(softmax_shift(m_new))));
        _mm512_store_ps(s + row * DECODE_BLOCK, p);
        const float alpha = advance_row(m[row], l[row], m_new, _mm512_reduce_add_ps(p));
        if (alpha != 1.0f) {
            const __m512 a = _mm512_set1_ps(alpha);
            float *orow = o + size_t(row) * pitch;
            for (int c = 0; c < d; c += 16) _mm512_store_ps(orow + c, _mm512_mul_ps(_mm512_load_ps(orow + c), a));
        }
    }
}

// O_row += sum_j p_j * V_j over the block, four keys per pass so each O vector is loaded and stored once per four
// V vectors (the V rows are streamed in memory order: key by key, all heads).
template <fa_dtype DT, int R>
void pv_n(const void *const *vrows, int nk, int64_t head_stride, int hkv, int d, int pitch, const float *p,
          int pstep, float *o) {
    const int chunks = (d + 15) / 16;
    const __mmask16 last = mask16(d % 16 ? d % 16 : 16);
    int j = 0;
    for (; j + 4 <= nk; j += 4) {
        const void *v0 = vrows[j], *v1 = vrows[j + 1], *v2 = vrows[j + 2], *v3 = vrows[j + 3];
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            __m512 pb[R][4];
            for (int r = 0; r < R; ++r)
                for (int u = 0; u < 4; ++u) pb[r][u] = _mm512_set1_ps(p[(hk * R + r) * DECODE_BLOCK + (j + u) * pstep]);
            float *oh = o + size_t(hk) * R * pitch;
            for (int c = 0; c < chunks; ++c) {
                const __mmask16 m = c + 1 < chunks ? __mmask16(0xffff) : last;
                __m512 a0, a1, a2, a3;
                if (m == 0xffff) {
                    a0 = load16<DT>(v0, h0 + 16 * c), a1 = load16<DT>(v1, h0 + 16 * c);
                    a2 = load16<DT>(v2, h0 + 16 * c), a3 = load16<DT>(v3, h0 + 16 * c);
                } else {
                    a0 = load16<DT>(v0, h0 + 16 * c, m), a1 = load16<DT>(v1, h0 + 16 * c, m);
                    a2 = load16<DT>(v2, h0 + 16 * c, m), a3 = load16<DT>(v3, h0 + 16 * c, m);
                }
                for (int r = 0; r < R; ++r) {
                    float *oc = oh + r * pitch + 16 * c;
                    __m512 acc = _mm512_fmadd_ps(pb[r][0], a0, _mm512_load_ps(oc));
                    acc = _mm512_fmadd_ps(pb[r][1], a1, acc);
                    acc = _mm512_fmadd_ps(pb[r][2], a2, acc);
                    _mm512_store_ps(oc, _mm512_fmadd_ps(pb[r][3], a3, acc));
                }
            }
        }
    }
    for (; j < nk; ++j) {
        const void *v0 = vrows[j];
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            float *oh = o + size_t(hk) * R * pitch;
            for (int c = 0; c < chunks; ++c) {
                const __mmask16 m = c + 1 < chunks ? __mmask16(0xffff) : last;
                const __m512 a0 = load16<DT>(v0, h0 + 16 * c, m);
                for (int r = 0; r < R; ++r) {
                    float *oc = oh + r * pitch + 16 * c;
                    const __m512 pj = _mm512_set1_ps(p[(hk * R + r) * DECODE_BLOCK + j * pstep]);
                    _mm512_store_ps(oc, _mm512_fmadd_ps(pj, a0, _mm512_load_ps(oc)));
                }
            }
        }
    }
}

template <fa_dtype DT>
void pv(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch, const float *p,
        int pstep, float *o) {
    switch (rows) {
        case 1: pv_n<DT, 1>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
        case 2: pv_n<DT, 2>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
        case 3: pv_n<DT, 3>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
        default: pv_n<DT, 4>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
    }
}

FA_TARGET_END

// ---- bf16 scores with vdpbf16ps ----
FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)

// q rows kept as bf16 (exactly as given), zero padded; `pitch` (a multiple of 32) uint16 per row.
void pack_q_bf16_pairs(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    uint16_t *q = static_cast<uint16_t *>(qpack);
    for (int r = 0; r < rows; ++r) {
        uint16_t *dst = q + size_t(r) * pitch;
        std::memset(dst, 0, size_t(pitch) * sizeof(uint16_t));
        std::memcpy(dst, qrows[r], size_t(d) * sizeof(uint16_t));
    }
}

// vdpbf16ps on bf16 pairs: 32 elements (16 pairs) of the head dim per instruction, fp32 accumulation; K rows and q
// as they are (elements past the mask read nothing and are 0).
struct Bf16PairsK {
    using QElem = uint16_t;
    using kvec = __m512bh;
    using mask = __mmask32;
    static constexpr int STEP = 32;
    static mask all() { return ~__mmask32(0); }
    static mask tail_mask(int tail) { return avx512::mask32(tail); }
    static kvec load(const void *base, int64_t idx, mask m) {
        return (__m512bh)_mm512_maskz_loadu_epi16(m, static_cast<const uint16_t *>(base) + idx);
    }
    static kvec load_q(const uint16_t *p) { return (__m512bh)_mm512_load_si512(p); }
    static __m512 madd(__m512 acc, kvec a, kvec qv) { return _mm512_dpbf16_ps(acc, a, qv); }
};

void scores_bf16_pairs(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                       const void *qpack, int g, float *partial) {
    scores_by_rows<Bf16PairsK>(krows, head_stride, hkv, rows, d, pitch, qpack, g, partial);
}

FA_TARGET_END

const DecodeKernels k_f32 = {"avx512-f32", &pack_q_f32<FA_F32>, &scores_widen<FA_F32>, &scores_finish, &softmax, &pv<FA_F32>};
const DecodeKernels k_f16 = {"avx512-f16", &pack_q_f32<FA_F16>, &scores_widen<FA_F16>, &scores_finish, &softmax, &pv<FA_F16>};
const DecodeKernels k_bf16_dp = {"avx512-bf16", &pack_q_bf16_pairs, &scores_bf16_pairs, &scores_finish, &softmax, &pv<FA_BF16>};
const DecodeKernels k_bf16_widen = {"avx512-bf16-widened", &pack_q_f32<FA_BF16>, &scores_widen<FA_BF16>, &scores_finish, &softmax,
                                    &pv<FA_BF16>};

}  // namespace

const DecodeKernels *avx512_decode_kernels(fa_dtype dt) {
    return table_for(dt, &k_f32, &k_f16, cpu_features().avx512bf16 ? &k_bf16_dp : &k_bf16_widen);
}

#else

const DecodeKernels *avx512_decode_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
