// tile_kernels_avx512_bf16.cpp - the bf16 kernels of the AVX-512 table (tile_kernels_avx512.cpp has the others and
// the tables): vdpbf16ps multiplies PAIRS of bf16 and accumulates in fp32 (2x the fp32 FMA rate). S^T pairs over the
// head dim (adjacent in K rows), O^T pairs over keys (V interleaved into key pairs once per K/V tile and work item;
// P written as key pairs by the fused softmax).
#include <cstring>

#include "avx512_tiles.h"

#ifdef FA_HAVE_AVX512_KERNELS
namespace fa_cpu {
namespace avx512_tile {

FA_TARGET_BEGIN(FA_ISA_AVX512_BF16)


// C[r][lanes] (=|+=) sum_kp dot2(A pair (r, kp), B pair [kp][lanes]). A pair (r, kp) is the 32-bit word at
// a + r*a_rs + kp*a_ks (in uint16 units); B is [kp][BLOCK_M][2] bf16. Accumulation is fp32.
template <int R, int NV, bool SCALE_C>
inline void micro_bf16(const uint16_t *a, int64_t a_rs, int64_t a_ks, int kpairs, const uint16_t *b, float *c,
                       const float *alpha) {
    __m512 acc[R][NV];
    load_acc<R, NV, SCALE_C>(acc, c, alpha);
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
    store_acc<R, NV>(acc, c);
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

}  // namespace avx512_tile
}  // namespace fa_cpu
#endif
