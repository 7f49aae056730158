// tile_kernels_avx512.cpp - AVX-512 kernels for the query-lane layout of tile_kernels.h.
//
// Compiled for any x86-64 target; the AVX-512 code lives in target regions (FA_TARGET_BEGIN) and is only reached after
// isa_dispatch.cpp has checked the CPU (so no -march flag and no illegal instruction on older CPUs).
//   fp32: micro-kernels C[R rows][NV*16 lanes] += A[r][k] (broadcast from the user's K or V rows) * B[k][lanes].
//   bf16: the same shape with vdpbf16ps, which multiplies PAIRS of bf16 and accumulates in fp32 (2x the fp32 FMA
//         rate): S^T pairs over the head dim (adjacent in K rows, so K is read in place), O^T pairs over keys
//         (V rows and P are interleaved into pairs per tile).
//   fp16: K/V tiles are widened to fp32 with vcvtph2ps (F16C) into scratch, then the fp32 micro-kernels run.
//   softmax: vectorized online-softmax step with a polynomial exp2 (error < 2e-9 relative before rounding).
#include <cmath>
#include <cstring>

#include "cpu_dtype.h"
#include "tile_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FA_HAVE_AVX512_KERNELS 1
#include <immintrin.h>

// Regions of functions compiled for an extra ISA. GCC uses target pragmas; clang (Linux, Intel Macs) needs an
// attribute applied to every function of the region.
#define FA_STR(x) #x
#if defined(__clang__)
#define FA_TARGET_BEGIN(isa) _Pragma(FA_STR(clang attribute push(__attribute__((target(isa))), apply_to = function)))
#define FA_TARGET_END _Pragma("clang attribute pop")
#else
// GCC 12 reports false "may be used uninitialized" warnings inside its own AVX-512 intrinsic headers
// (the _mm512_undefined_* idiom) when they are inlined under a target pragma.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define FA_TARGET_BEGIN(isa) _Pragma("GCC push_options") _Pragma(FA_STR(GCC target(isa)))
#define FA_TARGET_END _Pragma("GCC pop_options")
#endif
#define FA_ISA_AVX512 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"
#define FA_ISA_AVX512_BF16 "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512bf16"
#endif

namespace fa_cpu {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

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
// With SCALE_C, the old C is first multiplied by alpha[lanes] (the online-softmax rescale of O^T).
template <int R, int NV, bool SCALE_C>
inline void micro_f32(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
                      const float *alpha) {
    __m512 acc[R][NV];
    if (SCALE_C) {
        __m512 al[NV];
        for (int v = 0; v < NV; ++v) al[v] = _mm512_load_ps(alpha + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_mul_ps(_mm512_load_ps(c + r * BLOCK_M + 16 * v), al[v]);
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

// ---- fp32 ----

void pack_qT_f32(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    float *qT = static_cast<float *>(qT_);
    const int lanes = nv * LANES;
    for (int r = 0; r < lanes; ++r) {
        const float *q = r < nrows ? static_cast<const float *>(rows[r]) : nullptr;
        for (int k = 0; k < d; ++k) qT[k * BLOCK_M + r] = q ? q[k] : 0.0f;
    }
}

// Copy nk rows of d floats into a contiguous tile with 64-byte aligned rows. The user's rows are often 2-8 KiB
// apart (row stride = nheads * headdim), which maps a whole K/V tile onto a few L1 sets; a contiguous copy keeps the
// tile resident in L1/L2 while the micro-kernels sweep it. Costs ~3% of the tile's FLOPs.
inline int widened_stride(int d) { return (d + 15) & ~15; }

inline const float *contiguous_tile_f32(const float *src, int64_t stride, int nk, int d, float *dst) {
    const int ws = widened_stride(d);
    for (int j = 0; j < nk; ++j) {
        const float *s = src + j * stride;
        float *o = dst + j * ws;
        int c = 0;
        for (; c + 16 <= d; c += 16) _mm512_store_ps(o + c, _mm512_loadu_ps(s + c));
        if (c < d) {
            const __mmask16 tail = __mmask16((1u << (d - c)) - 1u);
            _mm512_store_ps(o + c, _mm512_maskz_loadu_ps(tail, s + c));
        }
    }
    return dst;
}

void scores_f32(const void *k, int64_t kstride, int nk, int d, const void *qT, int nv, float *sT, void *scratch) {
    // S^T[j][lanes] = sum_c K[j][c] * qT[c][lanes]: A = K rows (row stride ws, k stride 1).
    const float *kt = contiguous_tile_f32(static_cast<const float *>(k), kstride, nk, d, static_cast<float *>(scratch));
    gemm<MicroF32, false>(nv, nk, kt, widened_stride(d), 1, d, static_cast<const float *>(qT), sT, nullptr);
}

void pv_f32(const void *v, int64_t vstride, int nk, int d, const float *pT, int nv, const float *alpha, float *oT,
            void *scratch) {
    // O^T[c][lanes] = alpha*O^T + sum_j V[j][c] * P^T[j][lanes]: A = V^T (row stride 1, k stride ws).
    const float *vt = contiguous_tile_f32(static_cast<const float *>(v), vstride, nk, d, static_cast<float *>(scratch));
    gemm<MicroF32, true>(nv, d, vt, 1, widened_stride(d), nk, pT, oT, alpha);
}

// 2^x for x <= 128: split x = n + f with |f| <= 1/2, 2^f = e^(f ln2) by its Taylor polynomial of degree DEG, then
// scale by 2^n with vscalefps, which also flushes very negative exponents (masked logits, clamped to -150) to
// exactly 0. Truncation error (relative): degree 7 < 2e-9 (fp32 results); degree 5 < 3e-6, used where P is rounded
// to bf16 (relative step 4e-3) right after, so the cheaper polynomial costs no accuracy there.
template <int DEG>
inline __m512 exp2_ps(__m512 x) {
    static_assert(DEG == 5 || DEG == 7, "exp2 polynomial degree");
    // Operand order matters: max_ps returns its second operand when either is NaN, so a NaN score (NaN/inf input)
    // stays NaN and reaches the output, as in flash_attn and torch, instead of being clamped into a zero weight.
    x = _mm512_max_ps(_mm512_set1_ps(-150.0f), x);
    const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 y = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(0.69314718055994531f));
    __m512 p;
    if (DEG == 7) {
        p = _mm512_set1_ps(1.0f / 5040.0f);
        p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 720.0f));
        p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 120.0f));
    } else {
        p = _mm512_set1_ps(1.0f / 120.0f);
    }
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// Online-softmax step, one 16-row vector at a time. Pass 1 only finds the max of the raw scores (mul > 0 commutes
// with max; a negative mul uses the min); pass 2 computes p = exp2(s*mul - m) with one FMA, stores it and sums it.
template <int DEG>
void softmax_f32(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    const __m512 vmul = _mm512_set1_ps(mul);
    const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
    for (int v = 0; v < nv; ++v) {
        float *col = sT + 16 * v;
        const __m512 m_old = _mm512_load_ps(m + 16 * v);
        __m512 raw_ext;  // max of the raw scores, or min when a negative softmax_scale flips the order
        if (mul >= 0.0f) {
            raw_ext = neg_inf;
            for (int j = 0; j < nk; ++j) raw_ext = _mm512_max_ps(raw_ext, _mm512_load_ps(col + j * BLOCK_M));
        } else {
            raw_ext = _mm512_set1_ps(INFINITY);
            for (int j = 0; j < nk; ++j) raw_ext = _mm512_min_ps(raw_ext, _mm512_load_ps(col + j * BLOCK_M));
        }
        const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(raw_ext, vmul));
        // Rows that have seen only masked keys keep m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        const __m512 m_use = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ), m_new,
                                                  _mm512_setzero_ps());
        const __m512 a = exp2_ps<DEG>(_mm512_sub_ps(m_old, m_use));
        __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
        int j = 0;
        for (; j + 2 <= nk; j += 2) {  // two independent chains hide the exp latency
            const __m512 p0 = exp2_ps<DEG>(_mm512_fmsub_ps(_mm512_load_ps(col + j * BLOCK_M), vmul, m_use));
            const __m512 p1 = exp2_ps<DEG>(_mm512_fmsub_ps(_mm512_load_ps(col + (j + 1) * BLOCK_M), vmul, m_use));
            _mm512_store_ps(col + j * BLOCK_M, p0);
            _mm512_store_ps(col + (j + 1) * BLOCK_M, p1);
            sum0 = _mm512_add_ps(sum0, p0);
            sum1 = _mm512_add_ps(sum1, p1);
        }
        if (j < nk) {
            const __m512 p0 = exp2_ps<DEG>(_mm512_fmsub_ps(_mm512_load_ps(col + j * BLOCK_M), vmul, m_use));
            _mm512_store_ps(col + j * BLOCK_M, p0);
            sum0 = _mm512_add_ps(sum0, p0);
        }
        _mm512_store_ps(alpha + 16 * v, a);
        _mm512_store_ps(l + 16 * v, _mm512_fmadd_ps(_mm512_load_ps(l + 16 * v), a, _mm512_add_ps(sum0, sum1)));
        _mm512_store_ps(m + 16 * v, m_new);
    }
}

// ---- fp16: widen to fp32, then the fp32 kernels ----

inline void f16_row_to_f32(const uint16_t *src, int d, float *dst) {
    int c = 0;
    for (; c + 16 <= d; c += 16)
        _mm512_storeu_ps(dst + c, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + c))));
    if (c < d) {
        const __mmask16 tail = __mmask16((1u << (d - c)) - 1u);
        _mm512_mask_storeu_ps(dst + c, tail, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail, src + c)));
    }
}

void pack_qT_f16(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    float *qT = static_cast<float *>(qT_);
    float tmp[HEADDIM_PAD];
    const int lanes = nv * LANES;
    for (int r = 0; r < lanes; ++r) {
        if (r < nrows) {
            f16_row_to_f32(static_cast<const uint16_t *>(rows[r]), d, tmp);
            for (int k = 0; k < d; ++k) qT[k * BLOCK_M + r] = tmp[k];
        } else {
            for (int k = 0; k < d; ++k) qT[k * BLOCK_M + r] = 0.0f;
        }
    }
}

void scores_f16(const void *k, int64_t kstride, int nk, int d, const void *qT, int nv, float *sT, void *scratch) {
    float *kf = static_cast<float *>(scratch);
    const int ws = widened_stride(d);
    for (int j = 0; j < nk; ++j) f16_row_to_f32(static_cast<const uint16_t *>(k) + j * kstride, d, kf + j * ws);
    gemm<MicroF32, false>(nv, nk, kf, ws, 1, d, static_cast<const float *>(qT), sT, nullptr);
}

void pv_f16(const void *v, int64_t vstride, int nk, int d, const float *pT, int nv, const float *alpha, float *oT,
            void *scratch) {
    float *vf = static_cast<float *>(scratch);
    const int ws = widened_stride(d);
    for (int j = 0; j < nk; ++j) f16_row_to_f32(static_cast<const uint16_t *>(v) + j * vstride, d, vf + j * ws);
    gemm<MicroF32, true>(nv, d, vf, 1, ws, nk, pT, oT, alpha);
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
    if (SCALE_C) {
        __m512 al[NV];
        for (int v = 0; v < NV; ++v) al[v] = _mm512_load_ps(alpha + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_mul_ps(_mm512_load_ps(c + r * BLOCK_M + 16 * v), al[v]);
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
// (x86 is little-endian: element 2kp in the low half), so rows are copied a word at a time with no per-element tests.
void pack_qT_bf16(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    uint32_t *qT = static_cast<uint32_t *>(qT_);
    const int lanes = nv * LANES;
    const int full_pairs = d / 2;
    const int kpairs = (d + 1) / 2;
    for (int r = 0; r < lanes; ++r) {
        if (r >= nrows) {
            for (int kp = 0; kp < kpairs; ++kp) qT[kp * BLOCK_M + r] = 0;
            continue;
        }
        const uint16_t *q = static_cast<const uint16_t *>(rows[r]);
        for (int kp = 0; kp < full_pairs; ++kp) {
            uint32_t pair;
            std::memcpy(&pair, q + 2 * kp, 4);
            qT[kp * BLOCK_M + r] = pair;
        }
        if (d & 1) qT[full_pairs * BLOCK_M + r] = q[d - 1];  // odd head dim: last element, zero pad in the high half
    }
}

void scores_bf16(const void *k, int64_t kstride, int nk, int d, const void *qT, int nv, float *sT, void *scratch) {
    const uint16_t *kb = static_cast<const uint16_t *>(k);
    int64_t ks = kstride;
    if (d & 1) {
        // Odd head dim: the last pair would read one element past the row; stage rows with a zero pad instead.
        uint16_t *staged = static_cast<uint16_t *>(scratch);
        const int ws = d + 1;
        for (int j = 0; j < nk; ++j) {
            std::memcpy(staged + j * ws, kb + j * kstride, size_t(d) * 2);
            staged[j * ws + d] = 0;
        }
        kb = staged;
        ks = ws;
    }
    gemm<MicroBf16, false>(nv, nk, kb, ks, 2, (d + 1) / 2, static_cast<const uint16_t *>(qT), sT, nullptr);
}

// Interleave 16+16 fp32 values into 16 bf16 pairs (a[i], b[i]), rounding to nearest even.
inline __m512i interleave_bf16(__m512 a, __m512 b) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

void pv_bf16(const void *v, int64_t vstride, int nk, int d, const float *pT, int nv, const float *alpha, float *oT,
             void *scratch) {
    const int kpairs = (nk + 1) / 2;
    const int dp = (d + 31) & ~31;  // V pair rows padded to whole 32-column blocks
    // P^T as bf16 pairs over keys: [kpairs][BLOCK_M][2].
    uint16_t *pp = static_cast<uint16_t *>(scratch);
    // V as bf16 pairs over keys: [kpairs][dp][2], after pp.
    uint16_t *vp = pp + size_t(BLOCK_N / 2 + 1) * BLOCK_M * 2;
    for (int kp = 0; kp < kpairs; ++kp) {
        const int j0 = 2 * kp, j1 = 2 * kp + 1;
        for (int w = 0; w < nv; ++w) {
            const __m512 a = _mm512_load_ps(pT + j0 * BLOCK_M + 16 * w);
            const __m512 b = j1 < nk ? _mm512_load_ps(pT + j1 * BLOCK_M + 16 * w) : _mm512_setzero_ps();
            _mm512_store_si512(pp + (kp * BLOCK_M + 16 * w) * 2, interleave_bf16(a, b));
        }
        const uint16_t *v0 = static_cast<const uint16_t *>(v) + j0 * vstride;
        const uint16_t *v1 = static_cast<const uint16_t *>(v) + j1 * vstride;
        uint16_t *dst = vp + size_t(kp) * dp * 2;
        const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7,
                                                38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
        const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
        for (int c = 0; c < d; c += 32) {
            const int n = d - c < 32 ? d - c : 32;
            const __mmask32 m = n == 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1u);
            const __m512i x0 = _mm512_maskz_loadu_epi16(m, v0 + c);
            const __m512i x1 = j1 < nk ? _mm512_maskz_loadu_epi16(m, v1 + c) : _mm512_setzero_si512();
            _mm512_store_si512(dst + 2 * c, _mm512_permutex2var_epi16(x0, lo_idx, x1));
            _mm512_store_si512(dst + 2 * c + 32, _mm512_permutex2var_epi16(x0, hi_idx, x1));
        }
    }
    // O^T[c][lanes] += sum_kp dot2(V pair (kp, c), P pair [kp][lanes]): A pair (r=c, kp) at vp + c*2 + kp*dp*2.
    gemm<MicroBf16, true>(nv, d, vp, 2, int64_t(dp) * 2, kpairs, pp, oT, alpha);
}

FA_TARGET_END

const TileKernels<float> k_f32 = {"avx512-f32", &pack_qT_f32, &scores_f32, &softmax_f32<7>, &pv_f32,
                                  &pack_q_rows<FA_F32>, &scores_rows<FA_F32>, &pv_rows<FA_F32>};
const TileKernels<float> k_f16 = {"avx512-f16", &pack_qT_f16, &scores_f16, &softmax_f32<7>, &pv_f16,
                                  &pack_q_rows<FA_F16>, &scores_rows<FA_F16>, &pv_rows<FA_F16>};
const TileKernels<float> k_bf16 = {"avx512-bf16", &pack_qT_bf16, &scores_bf16, &softmax_f32<5>, &pv_bf16,
                                   &pack_q_rows<FA_BF16>, &scores_rows<FA_BF16>, &pv_rows<FA_BF16>};

}  // namespace

bool cpu_has_avx512bf16();

const TileKernels<float> *avx512_kernels(fa_dtype dt) {
    switch (dt) {
        case FA_F32: return &k_f32;
        case FA_F16: return &k_f16;
        case FA_BF16: return cpu_has_avx512bf16() ? &k_bf16 : nullptr;  // else: portable bf16
        default: return nullptr;
    }
}

#else

const TileKernels<float> *avx512_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
