// fa_bwd_rows.h - data movement and fragment products of the backward kernels (fa_bwd.h): sequence geometry, views of
// one head's rows, a simdgroup's register rows (load, store), threadgroup staging, the 8x8 products over the head
// dim, and how products are accumulated (each 8-row product added once; blocks for long sequences). Valid MSL and C++
// (the simulator).
#ifndef FA_BWD_ROWS_H
#define FA_BWD_ROWS_H

#include "fa_bwd_params.h"
#include "fa_forward.h"  // fragments (fa_frag, fa_frag_pos, fa_load_frag[_t])

// Lengths and packed offsets of sequence b.
struct fa_bwd_seq {
    int sq, sk;        // query rows, keys attended (seqused_k applied)
    int sk_rows;       // key rows the sequence owns (dK/dV rows sk .. sk_rows-1 are written as zeros)
    int q_start, k_start;
};

inline fa_bwd_seq fa_bwd_seq_info(constant fa_bwd_params& p, int b, device const int* cu_seqlens_q,
                                  device const int* cu_seqlens_k, device const int* seqused_k) {
    fa_bwd_seq s = fa_seq_qk_rows<fa_bwd_seq>(p.flags, p.seqlen_q, p.seqlen_k, b, cu_seqlens_q, cu_seqlens_k);
    s.sk_rows = s.sk;  // the rows it owns; sk below: the keys it attends
    s.sk = (p.flags & FA_FLAG_SEQUSED_K) ? min(seqused_k[b], s.sk_rows) : s.sk_rows;
    return s;
}

// Element offset of row i (within sequence b) of a q-side / k-side tensor.
inline fa_long fa_bwd_qrow(constant fa_bwd_params& p, fa_long batch_stride, fa_long row_stride, thread const fa_bwd_seq& s,
                           int b, int i) {
    return (p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) * row_stride
                                        : fa_long(b) * batch_stride + fa_long(i) * row_stride;
}
inline fa_long fa_bwd_krow(constant fa_bwd_params& p, fa_long batch_stride, fa_long row_stride, thread const fa_bwd_seq& s,
                           int b, int j) {
    return (p.flags & FA_FLAG_VARLEN_K) ? fa_long(s.k_start + j) * row_stride
                                        : fa_long(b) * batch_stride + fa_long(j) * row_stride;
}
// Index of (b, h, row i) in the DELTA / LSE2 scratch.
inline fa_long fa_bwd_scratch_row(constant fa_bwd_params& p, thread const fa_bwd_seq& s, int b, int h, int i) {
    const fa_long r = (p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) : fa_long(b) * p.seqlen_q + i;
    return fa_long(h) * p.q_rows + r;
}

// One head of a q-side (q, dout, dq: rows are queries) or k-side (k, v, dk, dv: rows are keys) tensor.
struct fa_bwd_view {
    fa_long batch_stride, row_stride, head_offset;
    bool q_side;
};

inline fa_bwd_view fa_bwd_view_of(fa_long batch_stride, fa_long row_stride, fa_long head_stride, int head,
                                  bool q_side) {
    fa_bwd_view v;
    v.batch_stride = batch_stride;
    v.row_stride = row_stride;
    v.head_offset = fa_long(head) * head_stride;
    v.q_side = q_side;
    return v;
}

// Element offset of row `row` (within sequence b) of the view.
inline fa_long fa_bwd_at(constant fa_bwd_params& p, fa_bwd_view v, thread const fa_bwd_seq& s, int b, int row) {
    return (v.q_side ? fa_bwd_qrow(p, v.batch_stride, v.row_stride, s, b, row)
                     : fa_bwd_krow(p, v.batch_stride, v.row_stride, s, b, row)) +
           v.head_offset;
}

// This lane's elements of the NDF 8-column fragments of one row (element offset `row` of `src`; fragment row = that
// row, columns = head dim): zero for an invalid row and past headdim.
template <typename T, int NDF>
inline void fa_bwd_load_row(thread fa_frag* f, device const T* src, fa_long row, bool valid, int headdim,
                            fa_lane_pos pos) {
    for (int d = 0; d < NDF; ++d) {
        for (int e = 0; e < 2; ++e) {
            const int col = d * 8 + pos.col + e;
            f[d].thread_elements()[e] = (valid && col < headdim) ? float(src[row + col]) : 0.0f;
        }
    }
}

// The register state of a simdgroup's 8 rows (keys in the dK/dV kernel, queries in the dQ kernel): this lane's row
// of the two inputs x and y (K and V, or Q and dO), and the accumulators of one (dQ) or two (dK, dV) gradients.
template <typename T, int NDF>
inline void fa_bwd_lane_rows(thread fa_frag* xf, thread fa_frag* yf, thread fa_frag* acc0, thread fa_frag* acc1,
                             device const T* x, device const T* y, constant fa_bwd_params& p, fa_bwd_view xv,
                             fa_bwd_view yv, thread const fa_bwd_seq& s, int b, int row, bool valid,
                             fa_lane_pos pos) {
    fa_bwd_load_row<T, NDF>(xf, x, fa_bwd_at(p, xv, s, b, row), valid, p.headdim, pos);
    fa_bwd_load_row<T, NDF>(yf, y, fa_bwd_at(p, yv, s, b, row), valid, p.headdim, pos);
    for (int d = 0; d < NDF; ++d) {
        acc0[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        if (acc1) acc1[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
}

// Writes this lane's elements of a gradient row (the inverse of fa_bwd_load_row, columns past headdim skipped).
template <typename T, int NDF>
inline void fa_bwd_store_row(device T* dst, fa_long row, thread fa_frag* f, int headdim, fa_lane_pos pos) {
    for (int d = 0; d < NDF; ++d) {
        for (int e = 0; e < 2; ++e) {
            const int col = d * 8 + pos.col + e;
            if (col < headdim) dst[row + col] = T(f[d].thread_elements()[e]);
        }
    }
}

// Stages rows row0 .. row0 + ROWS - 1 of x and y (views xv, yv) into xs / ys, row stride fa_tile_ld(BD): zero for
// rows >= row_end and past the head dim. The caller syncs.
template <typename T, int BD, int ROWS, int NT>
inline void fa_bwd_stage_rows(threadgroup T* xs, threadgroup T* ys, device const T* x, device const T* y,
                              constant fa_bwd_params& p, fa_bwd_view xv, fa_bwd_view yv, thread const fa_bwd_seq& s,
                              int b, int row0, int row_end, ushort tid) {
    constexpr int LD = fa_tile_ld(BD);
    for (int idx = int(tid); idx < ROWS * BD; idx += NT) {
        const int r = idx / BD;
        const int col = idx % BD;
        const int row = row0 + r;
        const bool in = row < row_end && col < p.headdim;
        xs[r * LD + col] = in ? x[fa_bwd_at(p, xv, s, b, row) + col] : T(0.0f);
        ys[r * LD + col] = in ? y[fa_bwd_at(p, yv, s, b, row) + col] : T(0.0f);
    }
}

// The two 8x8 products both gradient kernels form per block, over the head dim: s = Σ_d s_rows[d] · (8 rows of
// s_tile)ᵀ and t = Σ_d t_rows[d] · (8 rows of t_tile)ᵀ, the tiles staged in threadgroup memory and read transposed
// (dK/dV kernel: Sᵀ = K Qᵀ and dPdᵀ = V dOᵀ; dQ kernel: S = Q Kᵀ and dPd = dO Vᵀ).
// The row fragments are not const: MSL declares simdgroup_multiply_accumulate's operands as non-const references.
template <typename T, int NDF, int LD>
inline void fa_bwd_products_t(thread fa_frag& s, thread fa_frag* s_rows, const threadgroup T* s_tile,
                              thread fa_frag& t, thread fa_frag* t_rows, const threadgroup T* t_tile,
                              fa_lane_pos pos) {
    s = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    t = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (int d = 0; d < NDF; ++d) {
        fa_frag st;
        fa_load_frag_t(st, s_tile + d * 8, LD, pos);
        simdgroup_multiply_accumulate(s, s_rows[d], st, s);
        fa_frag tt;
        fa_load_frag_t(tt, t_tile + d * 8, LD, pos);
        simdgroup_multiply_accumulate(t, t_rows[d], tt, t);
    }
}

// ---- blocked accumulation (BLOCKED kernels, long sequences; issue 17 item 8) ----
// dQ sums dX K over every key of its rows, dK and dV sum over every query row (of every head of the GQA group) that
// sees their keys; each addition into a running fp32 sum rounds, so n of them give a relative error up to ~n * 2^-24
// (systematic for equal terms). Every kernel sums each 8-key (8-row) product on its own and adds it once
// (fa_bwd_mma_add: a multiply-accumulate may round once per product, 8x more often; at 1024 equal rows that was 1.6-1.8x
// the float32 floor in dK/dV). The BLOCKED kernels (fa_bwd_dq_long_*, fa_bwd_dkdv_long_*; the plan picks them, and
// the block lengths, for long sequences: fa_plan_backward.cpp) also restart the running sums every p.acc_block_k key
// tiles (p.acc_block_q query blocks) and add each finished block into an outer sum: about sqrt(n) additions at each
// level, in registers.
// acc += a · b, with a · b formed from zero first (one rounding of acc per call, not one per product).
inline void fa_bwd_mma_add(thread fa_frag& acc, thread fa_frag& a, thread fa_frag& b) {
    fa_frag t = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_multiply_accumulate(t, a, b, t);
    for (int e = 0; e < 2; ++e) acc.thread_elements()[e] += t.thread_elements()[e];
}

// outer += run, run = 0 for N fragments (the end of an accumulation block).
template <int N>
inline void fa_bwd_fold(thread fa_frag* outer, thread fa_frag* run) {
    for (int d = 0; d < N; ++d) {
        for (int e = 0; e < 2; ++e) outer[d].thread_elements()[e] += run[d].thread_elements()[e];
        run[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
}

#endif  // FA_BWD_ROWS_H
