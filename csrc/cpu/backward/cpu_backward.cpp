// cpu_backward.cpp - FlashAttention-2 backward on the CPU (fa_cpu_backward in csrc/fa_backends.h).
//
// Algorithm (Dao, "FlashAttention-2", 2023, Algorithm 2), with P recomputed tile by tile from the forward's LSE:
//   D    = rowsum(dO * O)                          pass 0, once per query row (also packs q and dO per head)
//   P    = exp(S - lse),  Pd = P * dropout_mask / (1 - p)
//   dV  += Pdᵀ dO,  dPd = dO Vᵀ,  dS = P * (dPd * dropout_mask / (1 - p) - D)
//   dX   = dS * scale * (1 - tanh²) under softcap  (gradient with respect to the raw product q·k)
//   dK  += dXᵀ Q                                   pass 1: one work item per (batch, kv head, kKeyGroup key blocks)
//   dQ  += dX K                                    pass 1 (per-thread partials), or pass 2 when deterministic:
//                                                  one work item per (batch, q head, query block)
// D is the right correction with dropout too because O already contains the dropped, rescaled P.
// The tile products and the fused interior-tile softmax gradient come from a kernel table chosen at run time
// (bwd_kernels.h: AVX-512 register tiles, or portable loops); README.md in this directory has the layout decisions.
//
// Work items run on the CPU backend's pool (csrc/cpu/thread_pool.h). Two schedules:
// - deterministic (fa_params.deterministic = 1): every work item owns the output rows it writes and sums in a fixed
//   order, so the bits never depend on the thread count or schedule. Pass 2 recomputes S and dPd for dQ (7 tile
//   products instead of 5); no atomics, no copies of dQ. Extra memory: D per query row and head, tiles per thread.
// - default: pass 1 also accumulates dQ into one fp32 partial copy per thread, summed at the end (5 products; the
//   summation order of dQ depends on the schedule, as flash_attn's deterministic=False allows). Extra memory: one
//   dQ-sized fp32 buffer per thread, capped (above the cap the deterministic schedule runs).
//
// The class is split by job (cpu_backward.h lists the files); this file holds the driver: the passes and their
// work items, the dK/dV tile loop of pass 1 and the dQ of the two schedules.
#include <cstdio>
#include <new>

#include "cpu_backward.h"
#include "fa_backends.h"
#include "cpu/call_env.h"
#include "cpu/thread_pool.h"

namespace fa_bwd {

template <typename T, typename A>
CpuBackward<T, A>::CpuBackward(const fa_params *p) : p_(p) {
    d_ = p->headdim;
    dv_ = p->headdim_v > 0 ? p->headdim_v : p->headdim;
    group_ = p->nheads_q / p->nheads_kv;
    window_ = mask_window(p);
    packed_q_ = p->cu_seqlens_q != nullptr;
    packed_k_ = p->cu_seqlens_k != nullptr;
    scale_ = (A)p->softmax_scale;
    softcap_ = (A)p->softcap;
    dropout_ = p->dropout_p > 0.0f;
    if (dropout_) {
        const double t = std::floor((double)p->dropout_p * 4294967296.0);
        threshold_ = t >= 4294967295.0 ? 0xffffffffu : (uint32_t)t;
        // the forward's factor exactly (a float, also in fp64) so forward and backward are consistent
        keep_scale_ = p->dropout_p < 1.0f ? (A)(1.0f / (1.0f - p->dropout_p)) : A(0);
    }
    refine_lse_ = sizeof(A) > sizeof(float) || huge_lse();
    kernels_ = select_bwd_kernels_f32();
    q_rows_ = packed_q_ ? p->total_q : (int64_t)p->batch * p->seqlen_q;
    max_sq_ = p->seqlen_q;
    max_sk_ = p->seqlen_k;
    if (packed_q_ || packed_k_) {
        for (int64_t b = 0; b < p->batch; ++b) {
            const SeqGeometry g = sequence_geometry(p, b);
            if (packed_q_) max_sq_ = b == 0 ? g.sq : std::max(max_sq_, g.sq);
            if (packed_k_) max_sk_ = b == 0 ? g.sk_rows : std::max(max_sk_, g.sk_rows);
        }
    }
}

// Returns false if a work item failed (out of memory for its workspace).
template <typename T, typename A>
bool CpuBackward<T, A>::run() {
    delta_.assign((size_t)p_->nheads_q * (size_t)q_rows_, A(0));
    allocate_query_packs();
    if constexpr (std::is_same<T, bf16_bits>::value) {
        if (kernels_->scores_bf16 && q_pack_) allocate_bf16_packs();
        bf16_products_ = q16_pack_ != nullptr && kernels_->accumulate_bf16 != nullptr;
    }
    const int64_t nqb = (max_sq_ + kBlockQ - 1) / kBlockQ;
    const int64_t nkb = (max_sk_ + kBlockK - 1) / kBlockK;
    const int64_t items0 = (int64_t)p_->batch * p_->nheads_q;
    const int64_t nkg = (nkb + kKeyGroup - 1) / kKeyGroup;
    const int64_t items1 = (int64_t)p_->batch * p_->nheads_kv * nkg;
    const int64_t items2 = (int64_t)p_->batch * p_->nheads_q * nqb;
    const int threads = choose_threads(std::max(items1, items2));
    const fa_cancel *cancel = p_->cancel;  // items stop early once requested (fa_cancel.h)
    bool ok = fa_cpu::parallel_for(items0, [&](int64_t item) {
        compute_delta(item / p_->nheads_q, item % p_->nheads_q);
    }, threads, cancel);
    if (refine_lse_) {
        lse_fine_.assign((size_t)p_->nheads_q * (size_t)q_rows_, 0.0);
        lse_lo_.assign((size_t)p_->nheads_q * (size_t)q_rows_, 0.0);
        ok = ok && fa_cpu::parallel_for(items2, [&](int64_t item) {
            const int64_t qb = item % nqb, rest = item / nqb;
            refine_lse_block(rest / p_->nheads_q, rest % p_->nheads_q, qb, workspace());
        }, threads, cancel);
    }
    single_pass_ = use_single_pass(threads);
    ok = ok && fa_cpu::parallel_for(items1, [&](int64_t item) {
        const int64_t kg = item % nkg, rest = item / nkg;
        dkdv_block(rest / p_->nheads_kv, rest % p_->nheads_kv, kg, workspace());
    }, threads, cancel);
    if (single_pass_) {
        ok = ok && fa_cpu::parallel_for(items2, [&](int64_t item) {
            const int64_t qb = item % nqb, rest = item / nqb;
            store_dq_from_partials(rest / p_->nheads_q, rest % p_->nheads_q, qb);
        }, threads, cancel);
    } else {
        ok = ok && fa_cpu::parallel_for(items2, [&](int64_t item) {
            const int64_t qb = item % nqb, rest = item / nqb;
            dq_block(rest / p_->nheads_q, rest % p_->nheads_q, qb, workspace());
        }, threads, cancel);
    }
    return ok;
}

// ---- pass 1: dK, dV for key blocks [kg*kKeyGroup, ...) of kv head hk, summed over its query heads ----
template <typename T, typename A>
void CpuBackward<T, A>::dkdv_block(int64_t b, int64_t hk, int64_t kg, Workspace<A> &w) {
    const SeqGeometry g = sequence_geometry(p_, b);
    struct Slot {
        int64_t j0;
        int rows_out, nk;    // key rows this item writes / rows attended
        int64_t ilo, ihi;    // query rows that see a key of the block
    } slots[kKeyGroup];
    int nslots = 0;
    int64_t ilo = g.sq, ihi = -1;  // union of the slots' query rows
    for (int sl = 0; sl < kKeyGroup; ++sl) {
        const int64_t j0 = (kg * kKeyGroup + sl) * kBlockK;
        if (j0 >= g.sk_rows) break;
        Slot &s = slots[nslots++];
        s.j0 = j0;
        s.rows_out = (int)std::min<int64_t>(kBlockK, g.sk_rows - j0);
        s.nk = (int)std::max<int64_t>(0, std::min<int64_t>(kBlockK, g.sk - j0));
        s.ilo = window_.row_lo(j0, g);
        s.ihi = s.nk > 0 ? window_.row_hi(j0 + s.nk, g) : -1;
        std::fill(w.dk_acc.begin() + (size_t)sl * kBlockK * d_, w.dk_acc.begin() + (size_t)(sl + 1) * kBlockK * d_,
                  A(0));
        std::fill(w.dv_acc.begin() + (size_t)sl * kBlockK * dv_,
                  w.dv_acc.begin() + (size_t)(sl + 1) * kBlockK * dv_, A(0));
        if (s.nk > 0 && s.ilo <= s.ihi) {
            load_key_tile(b, g, hk, j0, s.nk, w, sl);
            ilo = std::min(ilo, s.ilo);
            ihi = std::max(ihi, s.ihi);
        }
    }
    if (nslots == 0) return;
    A *dq_part = single_pass_ && ilo <= ihi ? dq_partials() : nullptr;
    for (int64_t h = hk * group_; h < (hk + 1) * group_; ++h) {
        for (int64_t i0 = ilo; i0 <= ihi; i0 += kBlockQ) {
            if (fa_cancel_rt::check(p_->cancel)) return;
            const int nq = (int)std::min<int64_t>(kBlockQ, ihi + 1 - i0);
            load_query_tile(b, g, h, i0, nq, w);
            for (int sl = 0; sl < nslots; ++sl) {
                const Slot &s = slots[sl];
                if (s.nk == 0 || i0 > s.ihi || i0 + nq - 1 < s.ilo) continue;  // no row of the tile sees it
                if (!score_gradients(b, h, g, i0, nq, s.j0, s.nk, w, sl)) continue;
                A *dk = w.dk_acc.data() + (size_t)sl * kBlockK * d_;
                A *dv = w.dv_acc.data() + (size_t)sl * kBlockK * dv_;
                A *dq_rows = dq_part ? dq_part + (size_t)partial_row(b, g, i0, h) * d_ : nullptr;
                if constexpr (std::is_same<A, float>::value) {
                    if (bf16_products_) {
                        bf16_gradient_products(w, nq, s.nk, sl, dv, dk, dq_rows);
                        continue;
                    }
                }
                accumulate_tn(dv, w.s.data(), w.dout_rows, dv_, nq, s.nk, dv_);  // dV += Pdᵀ dO
                accumulate_tn(dk, w.dp.data(), w.q_rows, d_, nq, s.nk, d_);      // dK += dXᵀ Q
                if (dq_rows)  // dQ += dX K into this thread's partial sums (rows are contiguous there)
                    accumulate_nn(dq_rows, w.dp.data(), w.krows(sl), nq, s.nk, d_);
            }
        }
    }
    for (int sl = 0; sl < nslots; ++sl) {
        const Slot &s = slots[sl];
        const A *dk = w.dk_acc.data() + (size_t)sl * kBlockK * d_;
        const A *dv = w.dv_acc.data() + (size_t)sl * kBlockK * dv_;
        for (int c = 0; c < s.rows_out; ++c) {
            T *dkr = k_side(p_->dk, b, g, s.j0 + c, hk);
            T *dvr = k_side(p_->dv, b, g, s.j0 + c, hk);
            for (int e = 0; e < d_; ++e) elem<T, A>::store(dkr + e, dk[(size_t)c * d_ + e]);
            for (int e = 0; e < dv_; ++e) elem<T, A>::store(dvr + e, dv[(size_t)c * dv_ + e]);
        }
    }
}

// ---- single pass (deterministic == 0): dQ from per-thread partial sums ----
// Saves pass 2's recomputation of S and dPd (5 tile products instead of 7) at the price of one fp32 copy of dQ
// per thread, summed at the end in thread-arrival order: the bits may then differ from run to run, which is what
// flash_attn's deterministic=False allows. deterministic=1 (or too little memory) keeps the two-pass schedule.
template <typename T, typename A>
bool CpuBackward<T, A>::use_single_pass(int threads) const {
    if (p_->deterministic) return false;
    const int n = threads > 0 ? threads : fa_cpu::pool_num_threads();
    const double bytes = (double)n * (double)p_->nheads_q * (double)q_rows_ * d_ * sizeof(A);
    return bytes <= kMaxPartialBytes;
}

// The calling thread's zeroed partial dQ buffer for this call (registered on first use).
template <typename T, typename A>
A *CpuBackward<T, A>::dq_partials() {
    const size_t n = (size_t)p_->nheads_q * (size_t)q_rows_ * (size_t)d_;
    A *part;
    {
        std::lock_guard<std::mutex> lock(partials_mutex_);
        const std::thread::id me = std::this_thread::get_id();
        for (size_t i = 0; i < partial_owner_.size(); ++i)
            if (partial_owner_[i] == me) return partials_[i].as<A>();
        partials_.emplace_back(n * sizeof(A));  // pooled: warm pages after the first call, old contents
        partial_owner_.push_back(me);
        part = partials_.back().as<A>();
    }
    std::fill(part, part + n, A(0));  // outside the lock; no other thread reads it before pass 1 ends
    return part;
}

// dQ rows of query block qb of head h: the sum of every thread's partials.
template <typename T, typename A>
void CpuBackward<T, A>::store_dq_from_partials(int64_t b, int64_t h, int64_t qb) {
    const auto [g, i0, nq] = query_block(b, qb);
    if (nq == 0) return;
    for (int r = 0; r < nq; ++r) {
        const size_t at = (size_t)partial_row(b, g, i0 + r, h) * d_;
        T *out = q_side(p_->dq, b, g, i0 + r, h);
        for (int e = 0; e < d_; ++e) {
            A sum = A(0);
            for (const auto &part : partials_) sum += part.as<A>()[at + e];
            elem<T, A>::store(out + e, sum);
        }
    }
}

// dV += Pdᵀ dO, dK += dXᵀ Q (when dv/dk are given) and dQ += dX K (when dq is given) for the tile in w (nq query
// rows, nk keys of key slot `slot`), by accumulate_bf16: Pd and dX rounded to bf16 as flash_attn rounds P and dS
// before these products; q, dO and K are the exact bf16 inputs. Only A = float (bf16 inputs) gets here.
template <typename T, typename A>
void CpuBackward<T, A>::bf16_gradient_products(Workspace<A> &w, int nq, int nk, int slot, A *dv, A *dk,
                                               A *dq) const {
    if constexpr (std::is_same<A, float>::value) {
        const int nq2 = (nq + 1) / 2;
        if (dv) {
            kernels_->pair_tile_rows_bf16(w.s.data(), nq, w.coef_t2.data());
            kernels_->accumulate_bf16(nk, dv_, nq2, w.coef_t2.data(), 1, kBlockK, w.dout_pairs.data(), 2 * dv_, dv,
                                      dv_);
        }
        if (dk) {
            kernels_->pair_tile_rows_bf16(w.dp.data(), nq, w.coef_t2.data());
            kernels_->accumulate_bf16(nk, d_, nq2, w.coef_t2.data(), 1, kBlockK, w.q_pairs.data(), 2 * d_, dk, d_);
        }
        if (dq) {
            kernels_->round_tile_bf16(w.dp.data(), nq, nk, w.dx_rows16.data());
            kernels_->accumulate_bf16(nq, d_, (nk + 1) / 2, reinterpret_cast<const uint32_t *>(w.dx_rows16.data()),
                                      kBlockK / 2, 1, w.kpairs(slot), 2 * d_, dq, d_);
        }
    }
}

// ---- pass 2: dQ for query rows [qb*kBlockQ, ...) of head h ----
template <typename T, typename A>
void CpuBackward<T, A>::dq_block(int64_t b, int64_t h, int64_t qb, Workspace<A> &w) {
    const auto [g, i0, nq] = query_block(b, qb);
    if (nq == 0) return;
    const int64_t hk = h / group_;
    A *dq = w.dq_acc.data();
    std::fill(dq, dq + (size_t)kBlockQ * d_, A(0));
    load_query_tile(b, g, h, i0, nq, w);
    const int64_t jlo = window_.key_lo(i0, g), jhi = window_.key_hi(i0 + nq - 1, g);
    for (int64_t kb = jlo / kBlockK; jlo <= jhi && kb <= jhi / kBlockK; ++kb) {
        if (fa_cancel_rt::check(p_->cancel)) return;
        const int64_t j0 = kb * kBlockK;
        const int nk = (int)std::min<int64_t>(kBlockK, g.sk - j0);
        load_key_tile(b, g, hk, j0, nk, w, 0);
        if (!score_gradients(b, h, g, i0, nq, j0, nk, w, 0)) continue;
        if constexpr (std::is_same<A, float>::value) {
            if (bf16_products_) {
                bf16_gradient_products(w, nq, nk, 0, nullptr, nullptr, dq);
                continue;
            }
        }
        accumulate_nn(dq, w.dp.data(), w.krows(0), nq, nk, d_);  // dQ += dX K
    }
    for (int r = 0; r < nq; ++r) {
        T *out = q_side(p_->dq, b, g, i0 + r, h);
        for (int e = 0; e < d_; ++e) elem<T, A>::store(out + e, dq[(size_t)r * d_ + e]);
    }
}

FA_BWD_INSTANTIATE

template <typename T, typename A>
int run_backward(const fa_params *p, char *err, size_t errlen) {
    try {
        CpuBackward<T, A> bwd(p);
        if (!bwd.run()) {
            std::snprintf(err, errlen, "cpu backward: a worker failed (out of memory for its tiles?)");
            return FA_ERR_RUNTIME;
        }
    } catch (const std::bad_alloc &) {
        std::snprintf(err, errlen, "cpu backward: out of memory allocating workspaces");
        return FA_ERR_RUNTIME;
    }
    return FA_OK;
}

}  // namespace fa_bwd

int fa_cpu_backward(const fa_params *p, char *err, size_t errlen) {
    using namespace fa_bwd;
    const fa_cpu::CallEnvScope env;  // FLASH_ATTN_CY_CPU_ISA / _THREAD_CAPS read once for the whole call
    if (err && errlen) err[0] = '\0';
    if (p->block_table || p->leftpad_k || p->cache_batch_idx) {
        std::snprintf(err, errlen, "backward: paged / left-padded / batch-indexed KV caches have no backward");
        return FA_ERR_UNSUPPORTED;
    }
    if (!p->lse || !p->dout.data || !p->dq.data || !p->dk.data || !p->dv.data || !p->out.data) {
        std::snprintf(err, errlen, "backward: needs out, softmax_lse, dout, dq, dk and dv");
        return FA_ERR_VALUE;
    }
    switch (p->dtype) {
    case FA_F32: return run_backward<float, float>(p, err, errlen);
    case FA_F16: return run_backward<half_bits, float>(p, err, errlen);
    case FA_BF16: return run_backward<bf16_bits, float>(p, err, errlen);
    case FA_F64: return run_backward<double, double>(p, err, errlen);
    }
    std::snprintf(err, errlen, "backward: unknown dtype %d", (int)p->dtype);
    return FA_ERR_TYPE;
}

