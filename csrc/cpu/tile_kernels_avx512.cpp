// tile_kernels_avx512.cpp - AVX-512 kernels for the query-lane layout of tile_kernels.h.
//
// Compiled for any x86-64 target; the AVX-512 code lives in target regions (FA_TARGET_BEGIN) and is only reached after
// isa_dispatch.cpp has checked the CPU (so no -march flag and no illegal instruction on older CPUs).
//   fp32: micro-kernels C[R rows][NV*16 lanes] += A[r][k] (broadcast from the prepared K or V tile) * B[k][lanes].
//   bf16: the same shape with vdpbf16ps (tile_kernels_avx512_bf16.cpp).
//   fp16: K/V tiles are widened to fp32 with vcvtph2ps (F16C) once per work item, then the fp32 micro-kernels run.
//   softmax, and Q in / O out through 16x16 register transposes: avx512_tiles.h, shared with the bf16 kernels.
//   Row layout (decode): the scores and PV of a few query rows against K/V rows read in place.
#include <cmath>
#include <cstring>

#include "avx512_tiles.h"
#include "cpu_dtype.h"
#include "cpu_features.h"
#include "tile_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

using namespace avx512_tile;

FA_TARGET_BEGIN(FA_ISA_AVX512)

// The fp32 micro-kernel (lane::micro over Zmm: C[R rows][NV*16 lanes] (=|+=) A[r][k] broadcast * B[k][lanes]) as a
// gemm() kernel.
template <int NV, bool SCALE_C>
struct MicroF32 {
    template <int R>
    static void tile(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c, const float *alpha) {
        lane::micro<Zmm, R, NV, SCALE_C>(a, a_rs, a_ks, kk, b, c, alpha);
    }
};

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

// ---- fp32 ----

void pack_qT_f32(const void *const *rows, int nrows, int d, int nv, void *qT) {
    pack_qT_words<LoadWidened<FA_F32>>(rows, nrows, d, d, nv, static_cast<uint32_t *>(qT));
}

// K/V tiles as contiguous fp32 rows, 64-byte aligned, prepared once per work item (lane::prep; fp16 widened by
// vcvtph2ps on the way). The user's rows are often 2-8 KiB apart (row stride = nheads * headdim), which maps a whole
// K/V tile onto a few L1 sets; the contiguous copy keeps the tile resident in L1/L2 while the micro-kernels sweep it.
inline int widened_stride(int d) { return lane::widened_stride<Zmm>(d); }

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
    pack_qT_words<LoadWidened<FA_F16>>(rows, nrows, d, d, nv, static_cast<uint32_t *>(qT));
}

// P stays fp32 in sT (fp32/fp16 tables, and before dropout).
template <int DEG>
void softmax_f32(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    softmax_core<DEG>(sT, nk, nv, mul, m, l, alpha, lane::StoreInPlace<Zmm>{});
}

// ---- row layout (decode: at most ROW_LAYOUT_MAX_ROWS query rows per tile), any storage type ----

template <fa_dtype DT>
void pack_q_rows(const void *const *rows, int nrows, int d, float *qR) {
    for (int r = 0; r < nrows; ++r)
        for (int c = 0; c < HEADDIM_PAD; c += 16)
            _mm512_store_ps(qR + r * HEADDIM_PAD + c,
                            c < d ? load16<DT>(rows[r], c, mask16(d - c)) : _mm512_setzero_ps());
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
            const __m512 kv = load16<DT>(k, j * kstride + c, mask16(d - c));
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
        for (int u = 0; u < U; ++u) msk[u] = c0 + 16 * u < d ? mask16(d - c0 - 16 * u) : __mmask16(0);
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

// Order: name, pack_qT, scores, softmax, pv, row layout (pack_q_rows, scores_rows, pv_rows), then
// prep_k, prep_v, softmax_p, pack_p, write_rows.
const TileKernels<float> k_f32 = {"avx512-f32", &pack_qT_f32, &scores_f32, &softmax_f32<7>, &pv_f32,
                                  &pack_q_rows<FA_F32>, &scores_rows<FA_F32>, &pv_rows<FA_F32>,
                                  &lane::prep<Zmm, FA_F32>, &lane::prep<Zmm, FA_F32>, nullptr, nullptr, &write_rows<FA_F32>};
// fp16 runs the fp32 products on K/V widened once per work item (lane::prep<Zmm, FA_F16>).
const TileKernels<float> k_f16 = {"avx512-f16", &pack_qT_f16, &scores_f32, &softmax_f32<7>, &pv_f32,
                                  &pack_q_rows<FA_F16>, &scores_rows<FA_F16>, &pv_rows<FA_F16>,
                                  &lane::prep<Zmm, FA_F16>, &lane::prep<Zmm, FA_F16>, nullptr, nullptr, &write_rows<FA_F16>};
const TileKernels<float> k_bf16 = {"avx512-bf16", &pack_qT_bf16, &scores_bf16, &softmax_f32<5>, &pv_bf16,
                                   &pack_q_rows<FA_BF16>, &scores_rows<FA_BF16>, &pv_rows<FA_BF16>,
                                   &prep_k_bf16, &prep_v_bf16, &softmax_p_bf16, &pack_p_bf16, &write_rows<FA_BF16>};

}  // namespace

const TileKernels<float> *avx512_kernels(fa_dtype dt) {
    return table_for(dt, &k_f32, &k_f16, cpu_features().avx512bf16 ? &k_bf16 : nullptr);  // else: portable bf16
}

#else

const TileKernels<float> *avx512_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
