// bwd_tile_loads.cpp - CpuBackward's inputs (cpu_backward.h): pass 0 (D = rowsum(dO * O), and q and dO packed per
// head) and the loads of one query tile and one key tile into a thread's workspace.
#include <new>

#include "cpu_backward.h"

namespace fa_bwd {

// ---- query-side packs: q and dO of every head, converted to A, rows contiguous per head ----
// Every key block sweeps all query rows of its heads; read from the user's arrays (rows nheads * d apart, a
// power of two that folds a tile onto a few L1 sets) each sweep stalls on misses. Packed once in pass 0, the
// tiles are contiguous, stream well and need no per-tile copy or conversion. Costs (d + dv) * sizeof(A) bytes
// per query row and head; above kMaxPackBytes the tiles are copied from the user's arrays instead.
template <typename T, typename A>
void CpuBackward<T, A>::allocate_query_packs() {
    const double bytes = (double)p_->nheads_q * (double)q_rows_ * (double)(d_ + dv_) * sizeof(A);
    if (bytes > kMaxPackBytes) return;
    const size_t n = (size_t)p_->nheads_q * (size_t)q_rows_;
    try {  // from the buffer pool, contents unspecified: pass 0 writes every row a tile can read
        q_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)d_ * sizeof(A));
        dout_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)dv_ * sizeof(A));
        q_pack_ = q_pack_mem_.as<A>();
        dout_pack_ = dout_pack_mem_.as<A>();
    } catch (const std::bad_alloc &) {  // slower per-tile copies instead
        q_pack_mem_.release();
        dout_pack_mem_.release();
    }
}

// bf16 copies of the packs for scores_bf16 (raw bits, rows zero-padded to an even length): half the bytes again.
template <typename T, typename A>
void CpuBackward<T, A>::allocate_bf16_packs() {
    const size_t n = (size_t)p_->nheads_q * (size_t)q_rows_;
    d2_ = (d_ + 1) & ~1;
    dv2_ = (dv_ + 1) & ~1;
    try {
        q16_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)d2_ * sizeof(uint16_t));
        dout16_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)dv2_ * sizeof(uint16_t));
        q16_pack_ = q16_pack_mem_.as<uint16_t>();
        dout16_pack_ = dout16_pack_mem_.as<uint16_t>();
    } catch (const std::bad_alloc &) {  // fp32 products instead
        q16_pack_mem_.release();
        dout16_pack_mem_.release();
    }
}

// ---- pass 0: D = rowsum(dO * O), and the query-side packs ----
template <typename T, typename A>
void CpuBackward<T, A>::compute_delta(int64_t b, int64_t h) {
    const SeqGeometry g = sequence_geometry(p_, b);
    for (int64_t i = 0; i < g.sq; ++i) {
        const T *o = q_side(p_->out, b, g, i, h);
        const T *dout = q_side(p_->dout, b, g, i, h);
        A sum = 0;
        for (int e = 0; e < dv_; ++e) sum += elem<T, A>::load(o + e) * elem<T, A>::load(dout + e);
        delta_at(b, g, i, h) = sum;
        if constexpr (std::is_same<T, bf16_bits>::value) {
            if (q16_pack_) {
                const T *q = q_side(p_->q, b, g, i, h);
                uint16_t *q16 = &q16_pack_[pack_row(b, g, i, h) * d2_];
                uint16_t *do16 = &dout16_pack_[pack_row(b, g, i, h) * dv2_];
                for (int e = 0; e < d2_; ++e) q16[e] = e < d_ ? q[e].bits : 0;
                for (int e = 0; e < dv2_; ++e) do16[e] = e < dv_ ? dout[e].bits : 0;
            }
        }
        if (q_pack_) {
            const T *q = q_side(p_->q, b, g, i, h);
            A *qp = &q_pack_[pack_row(b, g, i, h) * d_];
            A *dp = &dout_pack_[pack_row(b, g, i, h) * dv_];
            for (int e = 0; e < d_; ++e) qp[e] = elem<T, A>::load(q + e);
            for (int e = 0; e < dv_; ++e) dp[e] = elem<T, A>::load(dout + e);
        }
    }
}

// ---- tile loads ----
// Query-side rows [i0, i0+nq) of head h: q, dO, LSE, D and the dead-row flags.
template <typename T, typename A>
void CpuBackward<T, A>::load_query_tile(int64_t b, const SeqGeometry &g, int64_t h, int64_t i0, int nq,
                                        Workspace<A> &w) {
    w.any_dead = false;
    if (q16_pack_) {
        w.q16_rows = &q16_pack_[pack_row(b, g, i0, h) * d2_];
        w.dout16_rows = &dout16_pack_[pack_row(b, g, i0, h) * dv2_];
        if (bf16_products_) {
            kernels_->pair_rows_bf16(w.q16_rows, d2_, nq, d_, w.q_pairs.data(), 2 * d_);
            kernels_->pair_rows_bf16(w.dout16_rows, dv2_, nq, dv_, w.dout_pairs.data(), 2 * dv_);
        }
    }
    if (q_pack_) {
        w.q_rows = &q_pack_[pack_row(b, g, i0, h) * d_];
        w.dout_rows = &dout_pack_[pack_row(b, g, i0, h) * dv_];
    } else {
        // Copied even when T == A, for the same L1-set reason as the packs.
        for (int r = 0; r < nq; ++r) {
            const T *q = q_side(p_->q, b, g, i0 + r, h);
            const T *dout = q_side(p_->dout, b, g, i0 + r, h);
            A *qr = &w.q[(size_t)r * d_];
            A *dr = &w.dout[(size_t)r * dv_];
            for (int e = 0; e < d_; ++e) qr[e] = elem<T, A>::load(q + e);
            for (int e = 0; e < dv_; ++e) dr[e] = elem<T, A>::load(dout + e);
        }
        w.q_rows = w.q.data();
        w.dout_rows = w.dout.data();
    }
    for (int r = 0; r < nq; ++r) {
        const float lse = lse_at(b, g, i0 + r, h);
        w.dead[r] = lse_is_dead(lse) || window_.key_lo(i0 + r, g) > window_.key_hi(i0 + r, g);
        w.any_dead = w.any_dead || w.dead[r];
        w.lse[r] = w.dead[r] ? A(0) : (A)lse;
        const bool refined = !w.dead[r] && !lse_fine_.empty();
        w.lse_hi[r] = refined ? row_at(lse_fine_, b, g, i0 + r, h) : 0.0;
        w.lse_lo[r] = refined ? row_at(lse_lo_, b, g, i0 + r, h) : 0.0;
        w.delta[r] = delta_at(b, g, i0 + r, h);
    }
}

// Keys/values [j0, j0+nk) of kv head hk into a slot: row-major keys (dQ += dX K) and Kᵀ, Vᵀ zero-padded to
// kBlockK columns.
// The user's rows are first copied whole (sequential reads, many misses in flight), then transposed from cache.
template <typename T, typename A>
void CpuBackward<T, A>::load_key_tile(int64_t b, const SeqGeometry &g, int64_t hk, int64_t j0, int nk,
                                      Workspace<A> &w, int slot) {
    A *kt = w.kt(slot), *vt = w.vt(slot), *krows = w.krows(slot), *vrows = w.v_rows.data();
    for (int c = 0; c < kBlockK; ++c) {
        A *kr = krows + (size_t)c * d_;
        A *vr = vrows + (size_t)c * dv_;
        if (c < nk) {
            const T *k = k_side(p_->k, b, g, j0 + c, hk);
            const T *v = k_side(p_->v, b, g, j0 + c, hk);
            for (int e = 0; e < d_; ++e) kr[e] = elem<T, A>::load(k + e);
            for (int e = 0; e < dv_; ++e) vr[e] = elem<T, A>::load(v + e);
        } else {
            for (int e = 0; e < d_; ++e) kr[e] = A(0);
            for (int e = 0; e < dv_; ++e) vr[e] = A(0);
        }
    }
    if constexpr (std::is_same<T, bf16_bits>::value) {
        if (q16_pack_) {  // pairs over the head dim for scores_bf16 (the fp32 Kᵀ, Vᵀ are not needed then)
            bf16_pairs(b, g, p_->k, hk, j0, nk, d_, w.kt16(slot));
            bf16_pairs(b, g, p_->v, hk, j0, nk, dv_, w.vt16(slot));
            if (bf16_products_ && nk > 0)  // keys as pairs over rows for dQ += dX K
                kernels_->pair_rows_bf16(reinterpret_cast<const uint16_t *>(k_side(p_->k, b, g, j0, hk)),
                                         p_->k.row_stride, nk, d_, w.kpairs(slot), 2 * d_);
            if (!refine_lse_) return;  // refined_scores reads the fp32 Kᵀ
        }
    }
    for (int e = 0; e < d_; ++e)
        for (int c = 0; c < kBlockK; ++c) kt[(size_t)e * kBlockK + c] = krows[(size_t)c * d_ + e];
    for (int e = 0; e < dv_; ++e)
        for (int c = 0; c < kBlockK; ++c) vt[(size_t)e * kBlockK + c] = vrows[(size_t)c * dv_ + e];
}

// out[((e/2)*kBlockK + c)*2 + e%2] = bits of row j0 + c, element e of t (0 past nk rows or the head dim n).
template <typename T, typename A>
void CpuBackward<T, A>::bf16_pairs(int64_t b, const SeqGeometry &g, const fa_tensor &t, int64_t hk, int64_t j0,
                                   int nk, int n, uint16_t *out) const {
    const int n2 = (n + 1) & ~1;
    for (int c = 0; c < kBlockK; ++c) {
        const T *row = c < nk ? k_side(t, b, g, j0 + c, hk) : nullptr;
        for (int e = 0; e < n2; ++e) {
            uint16_t bits = 0;
            if constexpr (std::is_same<T, bf16_bits>::value) bits = (row && e < n) ? row[e].bits : 0;
            out[((size_t)(e >> 1) * kBlockK + c) * 2 + (e & 1)] = bits;
        }
    }
}

FA_BWD_INSTANTIATE

}  // namespace fa_bwd
