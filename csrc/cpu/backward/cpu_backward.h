// cpu_backward.h - the CPU backward's one class, CpuBackward<T, A> (T: the tensors' element type, A: the
// accumulation type), declared here and defined by job in three files:
//   cpu_backward.cpp        the driver: passes, work items, dK/dV (pass 1) and dQ (partials or pass 2) tile loops
//   bwd_tile_loads.cpp      pass 0 (D = rowsum(dO * O) and the query-side packs) and the query / key tile loads
//   bwd_score_gradients.cpp one tile's probabilities and score gradients (masks, softcap, ALiBi, dropout), and the
//                           LSE refinement
// Each file instantiates its members for the ABI's dtypes (FA_BWD_INSTANTIATE below); the algorithm and the
// schedules are described at the top of cpu_backward.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <deque>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "bwd_dtype.h"
#include "bwd_geometry.h"
#include "bwd_kernels.h"
#include "bwd_tile_math.h"
#include "bwd_workspace.h"
#include "fa_abi.h"
#include "cpu/buffer_pool.h"
#include "cpu/thread_pool.h"

namespace fa_bwd {

template <typename T, typename A>
class CpuBackward {
public:
    explicit CpuBackward(const fa_params *p);

    bool run();

private:
    // Threads for this call: its multiply-adds (the five tile products of every visible (row, key) pair, per query
    // head) against kMinMacsPerThread, counted only until every allowed thread would be busy; at most `items`.
    int choose_threads(int64_t items) const {
        const int most = fa_cpu::threads_for_work(items, INFINITY, 1.0, p_->num_threads);
        const double enough = double(most) * kMinMacsPerThread;
        const double per_pair = double(3 * d_ + 2 * dv_) * p_->nheads_q;
        double macs = 0;
        for (int64_t b = 0; b < p_->batch && macs < enough; ++b) {
            const SeqGeometry g = sequence_geometry(p_, b);
            for (int64_t i0 = 0; i0 < g.sq && macs < enough; i0 += kBlockQ) {
                const int64_t i1 = std::min<int64_t>(i0 + kBlockQ, g.sq);
                const int64_t lo = std::max<int64_t>(0, window_.key_lo(i0, g));
                const int64_t hi = std::min<int64_t>(g.sk - 1, window_.key_hi(i1 - 1, g));
                if (hi >= lo) macs += double(i1 - i0) * double(hi - lo + 1) * per_pair;
            }
        }
        return fa_cpu::threads_for_work(items, macs, kMinMacsPerThread, p_->num_threads);
    }
    // ~50-100 us of tile products on one core: several times the cost of handing a worker the job.
    static constexpr double kMinMacsPerThread = 4.0e6;

    // ---- addressing ----
    // Element pointer of row `row` (relative to the sequence) of a q-side tensor (q, out, dout, dq).
    T *q_side(const fa_tensor &t, int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t off = (packed_q_ ? 0 : b * t.batch_stride) + (g.q_row0 + row) * t.row_stride + h * t.head_stride;
        return static_cast<T *>(t.data) + off;
    }
    T *k_side(const fa_tensor &t, int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t off = (packed_k_ ? 0 : b * t.batch_stride) + (g.k_row0 + row) * t.row_stride + h * t.head_stride;
        return static_cast<T *>(t.data) + off;
    }
    float lse_at(int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t off = (packed_q_ ? 0 : b * p_->lse_batch_stride) + h * p_->lse_head_stride +
                            (g.q_row0 + row) * p_->lse_row_stride;
        return p_->lse[off];
    }
    // Element (b, h, row) of a per-query-row buffer laid out [nheads_q][q rows] (D, refined LSE).
    template <typename E>
    E &row_at(std::vector<E> &buf, int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t r = packed_q_ ? g.q_row0 + row : b * p_->seqlen_q + row;
        return buf[(size_t)h * (size_t)q_rows_ + (size_t)r];
    }
    A &delta_at(int64_t b, const SeqGeometry &g, int64_t row, int64_t h) { return row_at(delta_, b, g, row, h); }
    // The calling thread's scratch tiles: pool workers persist, so each keeps one set across calls.
    Workspace<A> &workspace() const {
        thread_local Workspace<A> ws;
        ws.ensure(d_, dv_);
        return ws;
    }
    // Rows [i0, i0 + nq) of query block qb of sequence b (nq = 0: the sequence is shorter).
    struct QueryBlock {
        SeqGeometry g;
        int64_t i0;
        int nq;
    };
    QueryBlock query_block(int64_t b, int64_t qb) const {
        QueryBlock t{sequence_geometry(p_, b), qb * kBlockQ, 0};
        if (t.i0 < t.g.sq) t.nq = (int)std::min<int64_t>(kBlockQ, t.g.sq - t.i0);
        return t;
    }
    A alibi_slope(int64_t b, int64_t h) const {
        return p_->alibi_slopes ? (A)p_->alibi_slopes[b * p_->alibi_batch_stride + h] : A(0);
    }

    // ---- tile products (bwd_kernels.h): the float kernel table, or the portable double loops ----
    void product(int m, int n, int kk, const A *a, int64_t a_rs, int64_t a_ks, const A *b, int64_t b_rs, A *c,
                 int64_t c_rs, bool accumulate) const {
        if constexpr (std::is_same<A, float>::value)
            kernels_->product(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, accumulate);
        else
            tile_product(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, accumulate);
    }
    void exp_row(A *x) const {
        if constexpr (std::is_same<A, float>::value) kernels_->exp_row(x);
        else tile_exp_row(x);
    }
    // out[r][0:kBlockK] = x[r][:n] · yt[:n][0:kBlockK] for r < nrows, x rows x_rs apart (S = Q Kᵀ, dPd = dO Vᵀ)
    void matmul_nt(const A *x, int64_t x_rs, int n, const A *yt, int nrows, A *out) const {
        product(nrows, kBlockK, n, x, x_rs, 1, yt, kBlockK, out, kBlockK, false);
    }
    // acc[c][:n] += sum_r coef[r][c] * x[r][:n] for c < ncols, r < nrows  (dV += Pdᵀ dO, dK += dXᵀ Q)
    void accumulate_tn(A *acc, const A *coef, const A *x, int64_t x_rs, int nrows, int ncols, int n) const {
        product(ncols, n, nrows, coef, 1, kBlockK, x, x_rs, acc, n, true);
    }
    // acc[r][:n] += sum_c coef[r][c] * y[c][:n] for r < nrows, c < ncols  (dQ += dX K)
    void accumulate_nn(A *acc, const A *coef, const A *y, int nrows, int ncols, int n) const {
        product(nrows, n, ncols, coef, kBlockK, 1, y, n, acc, n, true);
    }

    // ---- bwd_tile_loads.cpp: pass 0 and the tile loads ----
    void allocate_query_packs();  // q and dO of every head in A, rows contiguous per head (or none: per-tile copies)
    void allocate_bf16_packs();   // their bf16 twins for BwdKernelsF32::scores_bf16
    // Up to 8 GiB of packs (q and dO of 4 GiB each in fp32, e.g. batch 4 x 32 heads x 64k rows x d 128); beyond,
    // or when the allocation fails, the tiles are copied per use.
    static constexpr double kMaxPackBytes = 8.0 * 1024 * 1024 * 1024;
    size_t pack_row(int64_t b, const SeqGeometry &g, int64_t i, int64_t h) const {
        const int64_t r = packed_q_ ? g.q_row0 + i : b * p_->seqlen_q + i;
        return (size_t)h * (size_t)q_rows_ + (size_t)r;
    }
    void compute_delta(int64_t b, int64_t h);  // pass 0 for (batch b, query head h)
    void load_query_tile(int64_t b, const SeqGeometry &g, int64_t h, int64_t i0, int nq, Workspace<A> &w);
    void load_key_tile(int64_t b, const SeqGeometry &g, int64_t hk, int64_t j0, int nk, Workspace<A> &w, int slot);
    void bf16_pairs(int64_t b, const SeqGeometry &g, const fa_tensor &t, int64_t hk, int64_t j0, int nk, int n,
                    uint16_t *out) const;

    // ---- bwd_score_gradients.cpp: one tile's P and dX, and the LSE refinement ----
    bool score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0, int nk,
                         Workspace<A> &w, int slot);
    bool tile_score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0, int nk,
                              Workspace<A> &w, int slot);
    void peaked_score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0, int nk,
                                Workspace<A> &w);
    void score_products(int nq, Workspace<A> &w, int slot, bool dp) const;
    double *refined_scores(int nq, Workspace<A> &w, int slot) const;
    template <typename S>
    bool probabilities_row(int64_t b, int64_t h, const SeqGeometry &g, int64_t i, int64_t j0, int nk, bool full,
                           const S *raw, S lse, S lse_lo, A *out, A *th) const;
    template <typename S, typename O>
    bool logits_row(int64_t b, int64_t h, const SeqGeometry &g, int64_t i, int64_t j0, int nk, bool full,
                    const S *raw, S lse, S lse_lo, O *out, A *th) const;
    void dropout_factors(int64_t b, int64_t h, int64_t i, int64_t j0, A *keep) const;
    void refine_lse_block(int64_t b, int64_t h, int64_t qb, Workspace<A> &w);
    // Are there live rows whose fp32 LSE is too coarse for consistent probabilities (see refine_lse_block)?
    // 64, as the Metal kernels (FA_BWD_REFINE_LSE2, kernels/fa_bwd_params.h): from |LSE| ~100 (softmax_scale 20 with
    // unit q) the fp32 LSE's unit (2^-17 at 64) already moved fp32 dV past the float32 reference's error.
    static constexpr float kRefineLseAbove = 64.0f;
    bool huge_lse() const;

    // ---- cpu_backward.cpp: the tile loops of pass 1 (dK, dV) and of dQ ----
    void dkdv_block(int64_t b, int64_t hk, int64_t kg, Workspace<A> &w);
    void dq_block(int64_t b, int64_t h, int64_t qb, Workspace<A> &w);
    void bf16_gradient_products(Workspace<A> &w, int nq, int nk, int slot, A *dv, A *dk, A *dq) const;  // A = float
    bool use_single_pass(int threads) const;
    static constexpr double kMaxPartialBytes = 256.0 * 1024 * 1024;
    // Row index of (b, h, row i) in a [nheads_q][q rows][d] partial buffer.
    int64_t partial_row(int64_t b, const SeqGeometry &g, int64_t i, int64_t h) const {
        const int64_t r = packed_q_ ? g.q_row0 + i : b * p_->seqlen_q + i;
        return h * q_rows_ + r;
    }
    A *dq_partials();
    void store_dq_from_partials(int64_t b, int64_t h, int64_t qb);

    const fa_params *p_;
    int d_ = 0, dv_ = 0;
    int64_t group_ = 1;
    MaskWindow window_;
    bool packed_q_ = false, packed_k_ = false;
    A scale_ = 1, softcap_ = 0;
    bool dropout_ = false;
    uint32_t threshold_ = 0;
    A keep_scale_ = 1;
    int64_t q_rows_ = 0, max_sq_ = 0, max_sk_ = 0;
    std::vector<A> delta_;     // [nheads_q][q rows]: D = rowsum(dO * O)
    // Query packs (see allocate_query_packs), [nheads_q][q rows][d | dv]: pooled memory and typed views of it (null
    // when not packed); the bf16 ones only for scores_bf16, rows d2_ / dv2_ long.
    fa_cpu::PooledBuffer q_pack_mem_, dout_pack_mem_, q16_pack_mem_, dout16_pack_mem_;
    A *q_pack_ = nullptr, *dout_pack_ = nullptr;
    uint16_t *q16_pack_ = nullptr, *dout16_pack_ = nullptr;
    bool bf16_products_ = false;  // dV, dK, dQ by accumulate_bf16 (bf16 inputs, AVX512-BF16, bf16 packs present)
    int d2_ = 0, dv2_ = 0;
    bool single_pass_ = false; // dQ accumulated in pass 1 (see use_single_pass)
    std::mutex partials_mutex_;
    std::deque<fa_cpu::PooledBuffer> partials_;  // per-thread [nheads_q][q rows][d] dQ partial sums
    std::vector<std::thread::id> partial_owner_;
    const BwdKernelsF32 *kernels_ = nullptr;  // float products (runtime ISA choice); double uses tile_product
    bool refine_lse_ = false;  // fp64, or fp32 with huge logits: recompute the LSE (refine_lse_block)
    std::vector<double> lse_fine_;  // [nheads_q][q rows]: the refined LSE, empty unless refine_lse_
    std::vector<double> lse_lo_;    // [nheads_q][q rows]: its second part (LSE = lse_fine_ + lse_lo_), same
};

// The (element, accumulation) type pairs of the ABI's dtypes: fp32, fp16, bf16 accumulate in float, fp64 in double.
#define FA_BWD_INSTANTIATE                        \
    template class CpuBackward<float, float>;     \
    template class CpuBackward<half_bits, float>; \
    template class CpuBackward<bf16_bits, float>; \
    template class CpuBackward<double, double>;

}  // namespace fa_bwd
