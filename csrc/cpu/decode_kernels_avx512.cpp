// decode_kernels_avx512.cpp - AVX-512 decode kernels (see decode_kernels.h for the memory-order walk).
//
//   fp32: vfmadd231ps over the head dim; fp16 widened on the fly with vcvtph2ps; bf16 scores with vdpbf16ps
//   (pairs over the head dim, fp32 accumulation, q kept in bf16 as given) when AVX512-BF16 is present, otherwise
//   widened by a shift. O += P V in fp32 FMAs on widened V, except with AVX512-BF16 for bf16: vdpbf16ps over key
//   pairs with P rounded to bf16 (as flash_attn does before that product), half the instructions per V byte.
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

// Transposed reductions: the lane-wise reductions (sum or max: Op) of 16 vectors in one vector, 15 ops and 30
// shuffles instead of 16 separate horizontal reductions. fold4 packs the reductions of 4 vectors (a group) into one
// (two rounds that halve the width and double the vectors per register); finish4 folds the 4 groups' vectors; with
// group g holding vectors g, g+4, g+8, g+12 (the scores: keys of group g) this leaves vector j's in lane j.
struct AddOp {
    static __m512 f(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
};
struct MaxOp {
    // b when either is NaN: a NaN block max leaves the running max as it was (std::fmax's rule), while the row's
    // NaN weights still poison its sum
    static __m512 f(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }
};
template <class Op = AddOp>
inline __m512 fold4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 w0 = Op::f(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
    const __m512 w1 = Op::f(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
    return Op::f(_mm512_shuffle_f32x4(w0, w1, 0x88), _mm512_shuffle_f32x4(w0, w1, 0xDD));
}
template <class Op = AddOp>
inline __m512 finish4(__m512 x0, __m512 x1, __m512 x2, __m512 x3) {
    const __m512 y0 = Op::f(_mm512_shuffle_ps(x0, x1, 0x44), _mm512_shuffle_ps(x0, x1, 0xEE));
    const __m512 y1 = Op::f(_mm512_shuffle_ps(x2, x3, 0x44), _mm512_shuffle_ps(x2, x3, 0xEE));
    // lane 4u + g: the reduction of x_g's fourth u, i.e. vector g + 4u of group g = lane j for vector j
    return Op::f(_mm512_shuffle_ps(y0, y1, 0x88), _mm512_shuffle_ps(y0, y1, 0xDD));
}
inline __m512 finish4(const float *x) {
    return finish4(_mm512_load_ps(x), _mm512_load_ps(x + 16), _mm512_load_ps(x + 32), _mm512_load_ps(x + 48));
}

// Software prefetch of the next block (rows[4..7], see decode_kernels.h), one KV head at a time from inside the
// loops over heads, so the requests are spread over the arithmetic: the lines of head row h0 (elements) of each
// of the four keys. Measured on Zen 5 (1 thread, fp16/bf16 d128, 8 KV heads): 1.6-2x the K/V rate from L3 and DRAM;
// prefetching all of a group's next rows in one burst before the kernel gained nothing, nor did 2-4 blocks ahead.
inline void prefetch_next(const void *const *rows, int64_t h0, int d, int esize) {
    if (!rows[4]) return;
    for (int u = 0; u < 4; ++u) {
        // every line of [start, start + d*esize), from the start's line boundary. __builtin_prefetch, not
        // _mm_prefetch: GCC 12 at -O2 emitted nothing for _mm_prefetch inside this target region
        const char *start = static_cast<const char *>(rows[4 + u]) + h0 * esize;
        for (int off = -int(reinterpret_cast<uintptr_t>(start) & 63); off < d * esize; off += 64)
            __builtin_prefetch(start + off, 0, 3);  // prefetcht0
    }
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
        prefetch_next(krows, h0, d, K::ESIZE);
        __m512 acc[4][R];
        for (int u = 0; u < 4; ++u)
            for (int r = 0; r < R; ++r) acc[u][r] = _mm512_setzero_ps();
        const auto step = [&](int c, typename K::kvec a0, typename K::kvec a1, typename K::kvec a2,
                              typename K::kvec a3) __attribute__((always_inline)) {
            for (int r = 0; r < R; ++r) {
                const typename K::kvec qv = K::load_q(qh + r * pitch + K::STEP * c);
                acc[0][r] = K::madd(acc[0][r], a0, qv);
                acc[1][r] = K::madd(acc[1][r], a1, qv);
                acc[2][r] = K::madd(acc[2][r], a2, qv);
                acc[3][r] = K::madd(acc[3][r], a3, qv);
            }
        };
        // whole steps by plain loads (fp16: vcvtph2ps takes them as its memory operand), the tail masked
        for (int c = 0; c < full; ++c) {
            const int64_t i = h0 + K::STEP * c;
            step(c, K::load(k0, i), K::load(k1, i), K::load(k2, i), K::load(k3, i));
        }
        if (tail) {
            const int64_t i = h0 + K::STEP * full;
            step(full, K::load(k0, i, tm), K::load(k1, i, tm), K::load(k2, i, tm), K::load(k3, i, tm));
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
    static constexpr int ESIZE = DT == FA_F32 ? 4 : 2;  // bytes per stored element
    static mask tail_mask(int tail) { return mask16(tail); }
    static kvec load(const void *base, int64_t idx) { return load16<DT>(base, idx); }
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

// v[i] reduced over its 16 lanes into lane i, for 16 vectors (fold4 per group, then finish4).
template <class Op>
inline __m512 reduce16(const __m512 *v) {
    __m512 w[4];
    for (int g = 0; g < 4; ++g) w[g] = fold4<Op>(v[g], v[g + 4], v[g + 8], v[g + 12]);
    return finish4<Op>(w[0], w[1], w[2], w[3]);
}

// bf16 P for pv_bf16_pairs: the row's 16 weights rounded to bf16 (nearest even) as the pairs (j, j+4) of the group
// layout, pair (j, j+4) in float slot j for j in 0..3 and 8..11 (slots 4..7 and 12..15 are left alone); the low
// half of each 32-bit pair is key j: the operand layout of vdpbf16ps.
FA_TARGET_END
FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)
inline void store_p_pairs(float *srow, __m512 p) {
    const __m256i b = (__m256i)_mm512_cvtneps_pbh(p);
    const __m256i pairs = _mm256_unpacklo_epi16(b, _mm256_bsrli_epi128(b, 8));  // (0,4)..(3,7) | (8,12)..(11,15)
    _mm_store_si128(reinterpret_cast<__m128i *>(srow), _mm256_castsi256_si128(pairs));
    _mm_store_si128(reinterpret_cast<__m128i *>(srow + 8), _mm256_extracti128_si256(pairs, 1));
}
FA_TARGET_END
FA_TARGET_BEGIN(FA_ISA_AVX512)

// Online-softmax step, 16 rows at a time: the rows' block maxima, running maxima, rescale factors and row sums as
// vectors (lane i = row i) by transposed reductions; per row only its exp2 vector (the row-by-row form spent more
// time in serial horizontal reductions and scalar exp2 than in the exponentials). P_PAIRS: P is stored as
// store_p_pairs' bf16 pairs (the row sums are of the fp32 weights, as flash_attn's: only the product P V uses P in
// the input dtype).
template <bool P_PAIRS>
__attribute__((always_inline)) inline void softmax_rows(float *s, int n, int nk, float mul, float *m, float *l,
                                                        float *o, int d, int pitch) {
    const __mmask16 valid = mask16(nk);
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    const __m512 vmul = _mm512_set1_ps(mul);
    for (int r0 = 0; r0 < n; r0 += 16) {
        const int nr = n - r0 < 16 ? n - r0 : 16;
        const __mmask16 rows = mask16(nr);
        float *sr = s + size_t(r0) * DECODE_BLOCK;
        __m512 x[16];
        // lanes past nk become -inf after the multiply (a negative softmax scale must not turn them into +inf)
        for (int i = 0; i < 16; ++i)
            x[i] = i < nr ? _mm512_mask_mul_ps(neg_inf, valid, _mm512_load_ps(sr + i * DECODE_BLOCK), vmul) : neg_inf;
        const __m512 m_old = _mm512_mask_loadu_ps(neg_inf, rows, m + r0);
        const __m512 m_new = _mm512_max_ps(reduce16<MaxOp>(x), m_old);
        // softmax_shift: 0 where a row has seen only masked keys, so that its exp2 gives 0, not NaN
        const __m512 shift = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ), m_new,
                                                  _mm512_setzero_ps());
        alignas(64) float sh[16];
        _mm512_store_ps(sh, shift);
        for (int i = 0; i < 16; ++i) {
            x[i] = i < nr ? exp2_ps_scaled_arg(_mm512_sub_ps(x[i], _mm512_set1_ps(sh[i]))) : _mm512_setzero_ps();
            if (i < nr) {
                if (P_PAIRS) store_p_pairs(sr + i * DECODE_BLOCK, x[i]);
                else _mm512_store_ps(sr + i * DECODE_BLOCK, x[i]);
            }
        }
        const __m512 alpha = exp2_ps_scaled_arg(_mm512_sub_ps(m_old, shift));  // advance_row's factor
        const __m512 l_new = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(rows, l + r0), alpha, reduce16<AddOp>(x));
        _mm512_mask_storeu_ps(m + r0, rows, m_new);
        _mm512_mask_storeu_ps(l + r0, rows, l_new);
        // O is rescaled only where the running max moved (most blocks: none); NaN != 1 rescales too, as before
        alignas(64) float al[16];
        _mm512_store_ps(al, alpha);
        for (unsigned moved = _mm512_mask_cmp_ps_mask(rows, alpha, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ); moved;
             moved &= moved - 1) {
            const int i = __builtin_ctz(moved);
            const __m512 a = _mm512_set1_ps(al[i]);
            float *orow = o + size_t(r0 + i) * pitch;
            for (int c = 0; c < d; c += 16) _mm512_store_ps(orow + c, _mm512_mul_ps(_mm512_load_ps(orow + c), a));
        }
    }
}

void softmax(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    softmax_rows<false>(s, n, nk, mul, m, l, o, d, pitch);
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
            if (j == 0) prefetch_next(vrows, h0, d, int(dtype_size(DT)));  // vrows[4..7]: nk <= 4 here
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
    static constexpr int ESIZE = 2;
    static mask tail_mask(int tail) { return avx512::mask32(tail); }
    static kvec load(const void *base, int64_t idx) {
        return (__m512bh)_mm512_loadu_si512(static_cast<const uint16_t *>(base) + idx);
    }
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

// The bf16 table's softmax: P as bf16 pairs for pv_bf16_pairs.
void softmax_p_pairs(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    softmax_rows<true>(s, n, nk, mul, m, l, o, d, pitch);
}

// O += P V with vdpbf16ps over key pairs: P rounded to bf16 as flash_attn does before its P V product (the weights
// are in [0, 1], relative step 2^-9), V as stored, so one instruction does two keys' products for 16 columns, with
// no widening of V. The group's keys u = 0..3 (block keys g + 4u) pair as (0, 1) and (2, 3), their P pair words
// at p[0] and p[2 * pstep] of a row (store_p_pairs); a key past nk is a zero vector (its row is a repeated one, whose
// inf or NaN must not reach O through a zero weight). V pairs: vpermt2w interleaves two keys' 32 columns into the
// pairs of columns c..c+15 and c+16..c+31.
template <int R>
void pv_pairs_n(const void *const *vrows, int nk, int64_t head_stride, int hkv, int d, int pitch, const float *p,
                int pstep, float *o) {
    const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                            37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
    const uint16_t *v[4];
    for (int u = 0; u < 4; ++u) v[u] = static_cast<const uint16_t *>(vrows[u]);
    const bool pair_b = nk > 2;
    const __mmask32 key1 = nk > 1 ? ~__mmask32(0) : 0, key3 = nk > 3 ? ~__mmask32(0) : 0;
    for (int hk = 0; hk < hkv; ++hk) {
        const int64_t h0 = hk * head_stride;
        __m512bh wa[R], wb[R];
        for (int r = 0; r < R; ++r) {
            const float *pr = p + (hk * R + r) * DECODE_BLOCK;
            wa[r] = (__m512bh)_mm512_set1_ps(pr[0]);
            wb[r] = (__m512bh)_mm512_set1_ps(pr[2 * pstep]);
        }
        float *oh = o + size_t(hk) * R * pitch;
        prefetch_next(vrows, h0, d, 2);
        for (int c = 0; c < d; c += 32) {
            const __mmask32 m = avx512::mask32(d - c);
            const __m512i a0 = _mm512_maskz_loadu_epi16(m, v[0] + h0 + c);
            const __m512i a1 = _mm512_maskz_loadu_epi16(m & key1, v[1] + h0 + c);
            const __m512bh alo = (__m512bh)_mm512_permutex2var_epi16(a0, lo_idx, a1);
            const __m512bh ahi = (__m512bh)_mm512_permutex2var_epi16(a0, hi_idx, a1);
            __m512bh blo = alo, bhi = ahi;
            if (pair_b) {
                const __m512i b0 = _mm512_maskz_loadu_epi16(m, v[2] + h0 + c);
                const __m512i b1 = _mm512_maskz_loadu_epi16(m & key3, v[3] + h0 + c);
                blo = (__m512bh)_mm512_permutex2var_epi16(b0, lo_idx, b1);
                bhi = (__m512bh)_mm512_permutex2var_epi16(b0, hi_idx, b1);
            }
            const __mmask16 mlo = mask16(d - c), mhi = mask16(d - c - 16);
            for (int r = 0; r < R; ++r) {
                float *oc = oh + r * pitch + c;
                __m512 x = _mm512_dpbf16_ps(_mm512_maskz_load_ps(mlo, oc), alo, wa[r]);
                __m512 y = _mm512_dpbf16_ps(_mm512_maskz_load_ps(mhi, oc + 16), ahi, wa[r]);
                if (pair_b) {
                    x = _mm512_dpbf16_ps(x, blo, wb[r]);
                    y = _mm512_dpbf16_ps(y, bhi, wb[r]);
                }
                _mm512_mask_store_ps(oc, mlo, x);
                _mm512_mask_store_ps(oc + 16, mhi, y);
            }
        }
    }
}

void pv_pairs(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch,
              const float *p, int pstep, float *o) {
    switch (rows) {
        case 1: pv_pairs_n<1>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
        case 2: pv_pairs_n<2>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
        case 3: pv_pairs_n<3>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
        default: pv_pairs_n<4>(vrows, nk, head_stride, hkv, d, pitch, p, pstep, o); break;
    }
}

FA_TARGET_END

const DecodeKernels k_f32 = {"avx512-f32", &pack_q_f32<FA_F32>, &scores_widen<FA_F32>, &scores_finish, &softmax, &pv<FA_F32>};
const DecodeKernels k_f16 = {"avx512-f16", &pack_q_f32<FA_F16>, &scores_widen<FA_F16>, &scores_finish, &softmax, &pv<FA_F16>};
const DecodeKernels k_bf16_dp = {"avx512-bf16", &pack_q_bf16_pairs, &scores_bf16_pairs, &scores_finish, &softmax_p_pairs,
                                 &pv_pairs};
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
