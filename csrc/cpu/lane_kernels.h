// lane_kernels.h - the query-lane tile kernels (tile_kernels.h) written once over a vector-ops traits struct V:
// avx2::Ops (tile_kernels_avx2.cpp), neon::Ops (tile_kernels_neon.cpp); the online-softmax step is also the AVX-512
// one (avx512_tiles.h, with its own exponent rule and P store) and the AVX2 one (with its own exponent rule and exp2;
// NEON uses softmax<V> below).
//
// Why one body: the AVX2 and NEON kernels are the same algorithm with the same operation order (K/V widened to fp32
// once per tile, fp32 FMA register tiles, the two-pass softmax), so the ISA only decides the instructions, which V
// names one intrinsic at a time; results stay those of the hand-written kernels, bit for bit.
// Include it INSIDE the ISA's target region (FA_TARGET_BEGIN; NEON needs none), after tile_kernels.h, <cmath> and
// <cstring>: GCC and clang give a template the target options of the region it is defined in, so the
// header includes nothing itself. One ISA per translation unit.
//
// V provides: vec, N (fp32 lanes), PAIR_ROWS / ROWS (register-tile rows of the 2 x 16-lane and 16-lane products;
// PAIR_ROWS 0 = no 2-vector tile), zero, set1, load / store (aligned), bcast, add, sub, mul, max, min,
// fma(a, b, c) = a*b + c, mul_rounded, zero_where_neg_inf, all_one, exp2, load_upto<DT>, names[3].
#pragma once

namespace fa_cpu {
namespace lane {

// C[r][0..W*N) (=|+=) sum_k A[r*a_rs + k*a_ks] * B[k*BLOCK_M + 0..W*N), r < R: R rows x W vector accumulators (c and
// b already offset to the first lane). With SCALE_C the old C is first multiplied by alpha[0..W*N) (the
// online-softmax rescale of O^T), or kept as it is when alpha is nullptr (every rescale factor is 1: the running max
// did not move). Each element is one FMA chain over k in order, whatever the tile shape. The loops over r unroll
// fully (R <= 16) so that the accumulators stay in registers.
template <class V, int R, int W, bool SCALE_C>
inline void micro(const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c, const float *alpha) {
    typename V::vec acc[R][W];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        for (int w = 0; w < W; ++w) {
            if (SCALE_C && alpha) acc[r][w] = V::mul(V::load(c + r * BLOCK_M + V::N * w), V::load(alpha + V::N * w));
            else if (SCALE_C) acc[r][w] = V::load(c + r * BLOCK_M + V::N * w);
            else acc[r][w] = V::zero();
        }
    for (int k = 0; k < kk; ++k) {
        typename V::vec bv[W];
#pragma GCC unroll 4
        for (int w = 0; w < W; ++w) bv[w] = V::load(b + k * BLOCK_M + V::N * w);
        const float *ak = a + k * a_ks;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
            const typename V::vec av = V::bcast(ak + r * a_rs);
#pragma GCC unroll 4
            for (int w = 0; w < W; ++w) acc[r][w] = V::fma(av, bv[w], acc[r][w]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
        for (int w = 0; w < W; ++w) V::store(c + r * BLOCK_M + V::N * w, acc[r][w]);
}

// All `rows` rows of C over W vectors: register tiles of R rows, then 4 (when R > 4), 2 and 1. When R = 3 would leave
// one row (64 keys or head-dim rows: 21 x 3 + 1), the last three rows plus it run as a 4-row tile over each half of
// the W vectors instead: a 1-row tile is one FMA chain per accumulator, latency-bound (perf, AVX2 d=64: its 1/64 of
// the rows took ~3% of the time), and 4 x 16 lanes ran at 90-95% of the 3 x 32-lane tile's rate where 2 x 32 lanes
// ran at 65% (Zen 5, L1-resident). Each element of C is the same FMA chain over k whatever the tile, so the split
// changes no bits.
template <class V, int W, int R, bool SCALE_C>
void gemm_rows(int rows, const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
               const float *alpha) {
    int r = 0;
    const int full = R == 3 && rows > R && rows % R == 1 ? rows - R - 1 : rows;
    for (; r + R <= full; r += R) micro<V, R, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
    if constexpr (R == 3 && W % 2 == 0) {
        if (r + 4 == rows) {
            constexpr int H = W / 2, HL = H * V::N;  // half the vectors, and their lanes
            micro<V, 4, H, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
            micro<V, 4, H, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b + HL, c + r * BLOCK_M + HL,
                                    alpha ? alpha + HL : nullptr);
            return;
        }
    }
    if constexpr (R > 4) {
        if (r + 4 <= rows) { micro<V, 4, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 4; }
    }
    if (r + 2 <= rows) { micro<V, 2, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha); r += 2; }
    if (r < rows) micro<V, 1, W, SCALE_C>(a + r * a_rs, a_rs, a_ks, kk, b, c + r * BLOCK_M, alpha);
}

// All `rows` rows of C: pairs of 16-lane vectors in PAIR_ROWS-row tiles (where V has them), then single 16-lane
// vectors in ROWS-row tiles.
template <class V, bool SCALE_C>
void gemm(int nv, int rows, const float *a, int64_t a_rs, int64_t a_ks, int kk, const float *b, float *c,
          const float *alpha) {
    constexpr int W = LANES / V::N;  // vectors per 16 lanes
    int v = 0;
    if constexpr (V::PAIR_ROWS > 0) {
        for (; v + 2 <= nv; v += 2)
            gemm_rows<V, 2 * W, V::PAIR_ROWS, SCALE_C>(rows, a, a_rs, a_ks, kk, b + LANES * v, c + LANES * v,
                                                       alpha ? alpha + LANES * v : nullptr);
    }
    for (; v < nv; ++v)
        gemm_rows<V, W, V::ROWS, SCALE_C>(rows, a, a_rs, a_ks, kk, b + LANES * v, c + LANES * v,
                                          alpha ? alpha + LANES * v : nullptr);
}

// nullptr when every rescale factor of the nv query vectors is exactly 1 (no row's running max moved): the PV
// product then skips the multiply of O^T by alpha.
template <class V>
inline const float *rescale_or_null(const float *alpha, int nv) {
    for (int w = 0; w < nv * (LANES / V::N); ++w)
        if (!V::all_one(V::load(alpha + V::N * w))) return alpha;
    return nullptr;
}

// qT[c][r] = Q row r, element c, widened to fp32; 0 for rows r >= nrows (lanes up to nv*16). Once per query tile
// and work item, so plain loops do.
template <class V, fa_dtype DT>
void pack_qT(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    float *qT = static_cast<float *>(qT_);
    const int lanes = nv * LANES;
    for (int c = 0; c < d; ++c) std::memset(qT + c * BLOCK_M + nrows, 0, sizeof(float) * size_t(lanes - nrows));
    for (int r = 0; r < nrows; ++r) {
        alignas(64) float row[HEADDIM_PAD];
        for (int c = 0; c < d; c += V::N) V::store(row + c, V::template load_upto<DT>(rows[r], 0, c, d));
        for (int c = 0; c < d; ++c) qT[c * BLOCK_M + r] = row[c];
    }
}

// K/V tiles as contiguous fp32 rows (stride widened_stride), widened once per K/V tile and work item: the user's
// rows are often KiBs apart (row stride = nheads * headdim); the contiguous copy keeps the tile in L1/L2 while the
// micro-kernels sweep it.
template <class V>
inline int widened_stride(int d) { return (d + V::N - 1) & ~(V::N - 1); }

template <class V, fa_dtype DT>
void prep(KvTile &t, int d) {
    const int ws = widened_stride<V>(d);
    float *dst = static_cast<float *>(t.packed);
    for (int j = 0; j < t.nk; ++j)
        for (int c = 0; c < d; c += V::N) V::store(dst + j * ws + c, V::template load_upto<DT>(t.rows, j * t.stride, c, d));
}

template <class V>
void scores(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *) {
    // S^T[j][lanes] = sum_c K[j][c] * qT[c][lanes]: A = K rows (row stride ws, k stride 1).
    const int ws = widened_stride<V>(d);
    gemm<V, false>(nv, nk, static_cast<const float *>(k.packed) + j0 * ws, ws, 1, d, static_cast<const float *>(qT),
                   sT, nullptr);
}

template <class V>
void pv(const KvTile &v, int j0, int nk, int d, const void *pT, int nv, const float *alpha, float *oT, void *) {
    // O^T[c][lanes] = alpha*O^T + sum_j V[j][c] * P^T[j][lanes]: A = V^T (row stride 1, k stride ws).
    const int ws = widened_stride<V>(d);
    gemm<V, true>(nv, d, static_cast<const float *>(v.packed) + j0 * ws, 1, ws, nk, static_cast<const float *>(pT),
                  oT, rescale_or_null<V>(alpha, nv));
}

// The exponent s*mul - m of the softmax with the product rounded to fp32 first (mul_rounded, then subtract): m is
// the max of the same rounded products, so the argument is <= 0 exactly and the row max gets p = 1 for any logit
// size. A fused s*mul - m would not: for huge logits (softmax_scale 1e10: m ~ 1e11, ulp 8192) its residue for the
// max key is thousands either way, i.e. p = 0 for every key (O = 0) or an overflowing exp2.
template <class V>
struct RoundedExponent {
    typename V::vec m_use, vmul;
    RoundedExponent(typename V::vec m, typename V::vec mul) : m_use(m), vmul(mul) {}
    typename V::vec operator()(typename V::vec s) const { return V::sub(V::mul_rounded(s, vmul), m_use); }
};

// P stays fp32, in sT itself.
template <class V>
struct StoreInPlace {
    void pair(float *col, int, int j, typename V::vec p0, typename V::vec p1) const {
        V::store(col + j * BLOCK_M, p0);
        V::store(col + (j + 1) * BLOCK_M, p1);
    }
    void last(float *col, int, int j, typename V::vec p0) const { V::store(col + j * BLOCK_M, p0); }
};

// Online-softmax step, V::N query rows (lanes) at a time. Pass 1 only finds the max of the raw scores (mul > 0
// commutes with max; a negative mul uses the min; two chains for latency); pass 2 computes p = exp2(Exponent(s)),
// with Exponent built from (m_use, mul), sums it in fp32 and hands each pair of key rows (j, j+1) to Store, which
// writes P in the format the PV kernel reads (fp32 sT in place, or bf16 key pairs in one pass with no second sweep
// over sT). always_inline: Store may need a wider ISA than the region this is defined in (AVX-512 bf16), which is
// fine once the body is inlined into a caller compiled for it.
template <class V, class Exponent, class Store>
__attribute__((always_inline)) inline void softmax_core(float *sT, int nk, int nv, float mul, float *m, float *l,
                                                        float *alpha, const Store &store) {
    using vec = typename V::vec;
    const vec vmul = V::set1(mul);
    for (int w = 0; w < nv * (LANES / V::N); ++w) {
        float *col = sT + V::N * w;
        const vec m_old = V::load(m + V::N * w);
        vec ext0, ext1;
        int j = 0;
        if (mul >= 0.0f) {
            ext0 = ext1 = V::set1(-INFINITY);
            for (; j + 2 <= nk; j += 2) {
                ext0 = V::max(ext0, V::load(col + j * BLOCK_M));
                ext1 = V::max(ext1, V::load(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = V::max(ext0, V::load(col + j * BLOCK_M));
            ext0 = V::max(ext0, ext1);
        } else {
            ext0 = ext1 = V::set1(INFINITY);
            for (; j + 2 <= nk; j += 2) {
                ext0 = V::min(ext0, V::load(col + j * BLOCK_M));
                ext1 = V::min(ext1, V::load(col + (j + 1) * BLOCK_M));
            }
            if (j < nk) ext0 = V::min(ext0, V::load(col + j * BLOCK_M));
            ext0 = V::min(ext0, ext1);
        }
        // A NaN extreme (a NaN score) makes m NaN, so the row's output is NaN, as in flash_attn and torch.
        const vec m_new = V::max(m_old, V::mul(ext0, vmul));
        // Rows that have seen only masked keys keep m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        const vec m_use = V::zero_where_neg_inf(m_new);
        const vec a = V::exp2(V::sub(m_old, m_use));
        const Exponent expo(m_use, vmul);
        vec sum0 = V::zero(), sum1 = V::zero();
        for (j = 0; j + 2 <= nk; j += 2) {  // two independent chains hide the exp latency
            const vec p0 = V::exp2(expo(V::load(col + j * BLOCK_M)));
            const vec p1 = V::exp2(expo(V::load(col + (j + 1) * BLOCK_M)));
            store.pair(col, w, j, p0, p1);
            sum0 = V::add(sum0, p0);
            sum1 = V::add(sum1, p1);
        }
        if (j < nk) {
            const vec p0 = V::exp2(expo(V::load(col + j * BLOCK_M)));
            store.last(col, w, j, p0);
            sum0 = V::add(sum0, p0);
        }
        V::store(alpha + V::N * w, a);
        V::store(l + V::N * w, V::fma(V::load(l + V::N * w), a, V::add(sum0, sum1)));
        V::store(m + V::N * w, m_new);
    }
}

template <class V>
void softmax(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    softmax_core<V, RoundedExponent<V>>(sT, nk, nv, mul, m, l, alpha, StoreInPlace<V>{});
}

// V's kernel tables by dtype (fp32, fp16, bf16; named V::names): the lane layout only (few-row tiles use it too),
// P fp32, and O written out by the driver's scalar loop (write_rows = nullptr). Constant data, so picking one
// (outside the target region) runs no ISA code. Order: name, pack_qT, scores, softmax, pv, row layout (pack_q_rows,
// scores_rows, pv_rows), then prep_k, prep_v, softmax_p, pack_p, write_rows.
template <class V>
struct Tables {
    template <fa_dtype DT>
    static constexpr TileKernels<float> one(const char *name) {
        return TileKernels<float>{name,     &pack_qT<V, DT>, &scores<V>, &softmax<V>, &pv<V>, nullptr, nullptr,
                                  nullptr,  &prep<V, DT>,    &prep<V, DT>, nullptr,   nullptr, nullptr};
    }
    static constexpr TileKernels<float> k[3] = {one<FA_F32>(V::names[0]), one<FA_F16>(V::names[1]),
                                                one<FA_BF16>(V::names[2])};
};

}  // namespace lane
}  // namespace fa_cpu
