// decode_simd.h - the decode kernels (decode_kernels.h) written once over a vector-ops traits struct V: avx2::Ops
// (decode_kernels_avx2.cpp) and neon::Ops (decode_kernels_neon.cpp), with the same operation order as the
// hand-written kernels they replace, so each ISA's results are unchanged bit for bit.
//
//   fp32 FMA over the head dim, V::N lanes; fp16 / bf16 widened on load (V::load_upto); O += p V in fp32. A K/V vector
//   load is shared by up to V::DECODE_ROWS query rows of a KV head (4 keys x rows accumulators + 4 K vectors + q must
//   fit the register file: 2 rows of 16 ymm, 4 rows of 32 q registers); more rows take another pass, from L1.
//   Partial scores are plain sums: partial[row*64 + 16g + u] = score of key g + 4u (4 floats per group; the portable
//   layout), so scores_finish is one 4x4 transpose per row (V::transpose_groups).
// Include it INSIDE the ISA's target region (FA_TARGET_BEGIN; NEON needs none), after decode_kernels.h, cpu_dtype.h
// and <type_traits>: GCC and clang give a template the target options of the region it is defined in, so the header
// includes nothing itself. One ISA per translation unit.
//
// V provides, besides what simd_generic.h's V has: DECODE_ROWS, mask, lanes_below(n) (lanes i < n), select(m, a, b)
// (a where m), hmax, hsum, store_hsum4(p, a0..a3) (p[u] = sum of a_u's lanes), transpose_groups(partial row, s row).
#pragma once

namespace fa_cpu {
namespace decode_simd {

template <class V, fa_dtype DT>
void pack_q(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    float *q = static_cast<float *>(qpack);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < pitch; c += V::N)
            V::store(q + size_t(r) * pitch + c, c < d ? V::template load_upto<DT>(qrows[r], 0, c, d) : V::zero());
}

// Calls f(std::integral_constant<int, R>{}) with R = rows (1..MAXR <= DECODE_MAX_ROWS): the row count is known to
// the compiler (registers, unrolling).
template <int MAXR, typename F>
inline void with_rows(int rows, F &&f) {
    static_assert(MAXR >= 1 && MAXR <= 4 && DECODE_MAX_ROWS == 4, "with_rows covers 1..4 rows");
    if constexpr (MAXR >= 4) {
        if (rows >= 4) return f(std::integral_constant<int, 4>{});
    }
    if constexpr (MAXR >= 3) {
        if (rows == 3) return f(std::integral_constant<int, 3>{});
    }
    if constexpr (MAXR >= 2) {
        if (rows >= 2) return f(std::integral_constant<int, 2>{});
    }
    f(std::integral_constant<int, 1>{});
}

// The rows of each KV head in passes of at most MAXR: f(R, first row of the pass (hk*rows + r), h0 = hk*head_stride).
template <int MAXR, typename F>
inline void row_passes(int hkv, int rows, int64_t head_stride, F &&f) {
    for (int hk = 0; hk < hkv; ++hk)
        for (int r = 0; r < rows; r += MAXR)
            with_rows<MAXR>(rows - r, [&](auto R) { f(R, hk * rows + r, hk * head_stride); });
}

// scores_group's walk: rows_kernel(R, h0, q rows of the pass, partial of the pass) per pass of R rows.
template <int MAXR, typename QElem, typename RowsKernel>
inline void scores_heads(const void *qpack, int64_t head_stride, int hkv, int rows, int pitch, int g, float *partial,
                         RowsKernel &&rows_kernel) {
    const QElem *q = static_cast<const QElem *>(qpack);
    row_passes<MAXR>(hkv, rows, head_stride, [&](auto R, int row0, int64_t h0) {
        rows_kernel(R, h0, q + size_t(row0) * pitch, partial + row0 * 64 + 16 * g);
    });
}

// Rows 0..R-1 of the KV head at h0: the four keys' dot products with each row.
template <class V, fa_dtype DT, int R>
inline void scores_rows(const void *const *krows, int64_t h0, int d, int pitch, const float *qh, float *part) {
    typename V::vec acc[4][R];
    for (int u = 0; u < 4; ++u)
        for (int r = 0; r < R; ++r) acc[u][r] = V::zero();
    for (int c = 0; c < d; c += V::N) {
        typename V::vec a[4];
        for (int u = 0; u < 4; ++u) a[u] = V::template load_upto<DT>(krows[u], h0, c, d);
        for (int r = 0; r < R; ++r) {
            const typename V::vec qv = V::load(qh + r * pitch + c);
            for (int u = 0; u < 4; ++u) acc[u][r] = V::fma(a[u], qv, acc[u][r]);
        }
    }
    for (int r = 0; r < R; ++r) V::store_hsum4(part + r * 64, acc[0][r], acc[1][r], acc[2][r], acc[3][r]);
}

template <class V, fa_dtype DT>
void scores_group(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                  const void *qpack, int g, float *partial) {
    scores_heads<V::DECODE_ROWS, float>(qpack, head_stride, hkv, rows, pitch, g, partial,
                                        [&](auto R, int64_t h0, const float *qr, float *part) {
                                            scores_rows<V, DT, decltype(R)::value>(krows, h0, d, pitch, qr, part);
                                        });
}

// Group g holds keys g, g+4, g+8, g+12 in its 4 floats: a 4x4 transpose puts key j in lane j.
template <class V>
void scores_finish(const float *partial, int n, float *s) {
    for (int row = 0; row < n; ++row) V::transpose_groups(partial + row * 64, s + row * DECODE_BLOCK);
}

// Online-softmax step per row on its 16 scores (DECODE_BLOCK / V::N vectors). x - m <= 0 exactly here (m is the max
// of the same rounded products), and exp2 clamps its argument anyway: huge logits cannot overflow.
template <class V>
void softmax(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    using vec = typename V::vec;
    constexpr int W = DECODE_BLOCK / V::N;
    const vec neg_inf = V::set1(-INFINITY);
    const vec vmul = V::set1(mul);
    // lanes past nk become -inf after the multiply (a negative softmax scale must not turn them into +inf)
    typename V::mask valid[W];
    for (int w = 0; w < W; ++w) valid[w] = V::lanes_below(nk - V::N * w);
    for (int row = 0; row < n; ++row) {
        float *sr = s + row * DECODE_BLOCK;
        vec x[W], top[W];
        for (int w = 0; w < W; ++w) top[w] = x[w] = V::select(valid[w], V::mul(V::load(sr + V::N * w), vmul), neg_inf);
        for (int width = W; width > 1; width /= 2)  // pairwise: max(x0, x1), then max(max(x0, x1), max(x2, x3))
            for (int i = 0; i < width / 2; ++i) top[i] = V::max(top[2 * i], top[2 * i + 1]);
        const float m_new = std::fmax(m[row], V::hmax(top[0]));
        const vec shift = V::set1(softmax_shift(m_new));
        vec sum = V::zero();
        for (int w = 0; w < W; ++w) {
            const vec p = V::exp2(V::sub(x[w], shift));
            V::store(sr + V::N * w, p);
            sum = w == 0 ? p : V::add(sum, p);
        }
        const float alpha = advance_row(m[row], l[row], m_new, V::hsum(sum));
        if (alpha != 1.0f) {  // once the running max settles (most blocks) O needs no rescale
            const vec a = V::set1(alpha);
            float *orow = o + size_t(row) * pitch;
            for (int c = 0; c < d; c += V::N) V::store(orow + c, V::mul(V::load(orow + c), a));
        }
    }
}

// O rows 0..R-1 of the KV head at h0 += sum_u p_u V_u over four keys: each O vector loaded and stored once per four
// V vectors. Columns past d read V as 0 (the O pitch is a multiple of 32, so the stores stay inside).
template <class V, fa_dtype DT, int R>
inline void pv_rows4(const void *const *v, int64_t h0, int d, int pitch, const float *p, int pstep, float *oh) {
    typename V::vec pb[R][4];
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < 4; ++u) pb[r][u] = V::set1(p[r * DECODE_BLOCK + u * pstep]);
    for (int c = 0; c < d; c += V::N) {
        typename V::vec a[4];
        for (int u = 0; u < 4; ++u) a[u] = V::template load_upto<DT>(v[u], h0, c, d);
        for (int r = 0; r < R; ++r) {
            float *oc = oh + r * pitch + c;
            typename V::vec acc = V::fma(pb[r][0], a[0], V::load(oc));
            for (int u = 1; u < 4; ++u) acc = V::fma(pb[r][u], a[u], acc);
            V::store(oc, acc);
        }
    }
}

template <class V, fa_dtype DT>
void pv(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch, const float *p,
        int pstep, float *o) {
    int j = 0;
    for (; j + 4 <= nk; j += 4)
        row_passes<V::DECODE_ROWS>(hkv, rows, head_stride, [&](auto R, int row0, int64_t h0) {
            pv_rows4<V, DT, decltype(R)::value>(vrows + j, h0, d, pitch, p + row0 * DECODE_BLOCK + j * pstep, pstep,
                                                o + size_t(row0) * pitch);
        });
    for (; j < nk; ++j) {
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            for (int r = 0; r < rows; ++r) {
                const int row = hk * rows + r;
                const typename V::vec pj = V::set1(p[row * DECODE_BLOCK + j * pstep]);
                float *orow = o + size_t(row) * pitch;
                for (int c = 0; c < d; c += V::N)
                    V::store(orow + c, V::fma(pj, V::template load_upto<DT>(vrows[j], h0, c, d), V::load(orow + c)));
            }
        }
    }
}

// V's kernel tables by dtype (fp32, fp16, bf16; named V::names). Constant data, so picking one (outside the target
// region) runs no ISA code. Order: name, pack_q, scores_group, scores_finish, softmax, pv.
template <class V>
struct Tables {
    template <fa_dtype DT>
    static constexpr DecodeKernels one(const char *name) {
        return DecodeKernels{name, &pack_q<V, DT>, &scores_group<V, DT>, &scores_finish<V>, &softmax<V>, &pv<V, DT>};
    }
    static constexpr DecodeKernels k[3] = {one<FA_F32>(V::names[0]), one<FA_F16>(V::names[1]), one<FA_BF16>(V::names[2])};
};

}  // namespace decode_simd
}  // namespace fa_cpu
