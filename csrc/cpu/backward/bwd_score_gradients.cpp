// bwd_score_gradients.cpp - CpuBackward's tile math (cpu_backward.h): one tile's probabilities P = exp(S - lse) and
// score gradients dX under the masks, softcap, ALiBi and dropout, and the LSE refinement that makes P consistent with
// these scores for fp64 and for huge logits.
#include <cmath>

#include "cpu_backward.h"
#include "fa_philox.h"

namespace fa_bwd {

// One row of the tile: raw products q·k in `raw` -> P = exp(score - lse) in out, 0 on masked keys (and tanh of
// the capped score in th for the softcap derivative). Returns true if some key of the row is visible.
template <typename T, typename A>
template <typename S>
bool CpuBackward<T, A>::probabilities_row(int64_t b, int64_t h, const SeqGeometry &g, int64_t i, int64_t j0, int nk,
                                          bool full, const S *raw, S lse, S lse_lo, A *out, A *th) const {
    const bool any = logits_row(b, h, g, i, j0, nk, full, raw, lse, lse_lo, out, th);
    exp_row(out);
    return any;
}

// The exponents of probabilities_row: out[c] <- (score - lse) - lse_lo (-1e30 on masked keys), the score formed
// from raw[c] in S (A, or double for a refined LSE: see refined_scores) and rounded to S first; lse_lo is 0
// unless the LSE was refined (refine_lse_block). out may be raw.
template <typename T, typename A>
template <typename S, typename O>
bool CpuBackward<T, A>::logits_row(int64_t b, int64_t h, const SeqGeometry &g, int64_t i, int64_t j0, int nk,
                                   bool full, const S *raw, S lse, S lse_lo, O *out, A *th) const {
    const S slope = (S)alibi_slope(b, h);
    const S scale = std::is_same<S, A>::value ? (S)scale_ : (S)p_->softmax_scale;
    const S cap = std::is_same<S, A>::value ? (S)softcap_ : (S)p_->softcap;
    const bool capped = cap > S(0);
    const S inv_cap = capped ? S(1) / cap : S(0);
    bool any = false;
    bool visible[kBlockK];
    S x[kBlockK];
    for (int c = 0; c < kBlockK; ++c) {
        const int64_t j = j0 + c;
        visible[c] = c < nk && (full || window_.visible(i, j, g));
        if (!visible[c]) continue;
        S v = raw[c] * scale;
        if (capped) {
            const S t = std::tanh(v * inv_cap);
            th[c] = (A)t;
            v = cap * t;
        }
        if (slope != S(0)) {
            const int64_t dist = i + g.diag - j;
            v -= slope * (S)(dist < 0 ? -dist : dist);
        }
        x[c] = v;
        any = true;
    }
    // The LSE is subtracted in a loop of its own, from the score as stored (rounded to S): in one expression the
    // compiler may fuse the last product into an FMA (C++ compilers contract by default), whose exact product
    // would differ from the rounded one the LSE refinement and the fused kernels use - by 64 and more for huge
    // logits (exp of that: no weight, or inf).
    for (int c = 0; c < kBlockK; ++c) out[c] = visible[c] ? (O)((x[c] - lse) - lse_lo) : O(-1e30);  // masked: 0
    return any;
}

// q·k of the tile's rows in double, for rows whose LSE is refined (refine_lse_: large logits, or fp64). A P whose
// exponent is scale * q·k - LSE moves by scale times the error of q·k: the fp32 product's rounding (a few units
// of 2^-24 |q||k|) gives P relative errors of ~1e-4 at softmax_scale 100 with unit q, which dQ and dK carry as
// rounding noise as large as the float32 reference's own, and 1-3x beyond the tolerance depending on the data
// (issue 17 item 6). The products of two floats are exact in double and their sum nearly so, so P is then exact
// to float rounding and the fp32 gradients stay far inside the tolerance. Only the refined path pays for it.
template <typename T, typename A>
double *CpuBackward<T, A>::refined_scores(int nq, Workspace<A> &w, int slot) const {
    if constexpr (std::is_same<A, double>::value) {
        return w.s.data();  // score_products formed them in double already
    } else {
        tile_scores_f64(nq, d_, w.q_rows, d_, w.kt(slot), w.s64.data());
        return w.s64.data();
    }
}

// Raw products of the tile: q·k into w.s and (with dp) dO·v into w.dp. One place, so that the LSE refinement sees
// the very scores (same kernel, same rounding) that the gradient passes turn into probabilities.
// With a refined LSE, float tiles take q·k from refined_scores instead (w.s is not formed here).
template <typename T, typename A>
void CpuBackward<T, A>::score_products(int nq, Workspace<A> &w, int slot, bool dp) const {
    const bool s = std::is_same<A, double>::value || !refine_lse_;
    if constexpr (std::is_same<A, float>::value) {
        if (q16_pack_) {
            if (s) kernels_->scores_bf16(nq, d2_ / 2, w.q16_rows, d2_, w.kt16(slot), w.s.data());
            if (dp) kernels_->scores_bf16(nq, dv2_ / 2, w.dout16_rows, dv2_, w.vt16(slot), w.dp.data());
            return;
        }
    }
    if (s) matmul_nt(w.q_rows, d_, d_, w.kt(slot), nq, w.s.data());
    if (dp) matmul_nt(w.dout_rows, dv_, dv_, w.vt(slot), nq, w.dp.data());
}

// ---- the shared tile: probabilities and score gradients for rows [i0, i0+nq) x keys [j0, j0+nk) ----
// On return w.s holds Pd (dropped, rescaled probabilities: dV += Pdᵀ dO) and w.dp holds dX, the gradient with
// respect to the raw product q·k (dQ += dX K, dK += dXᵀ Q). Returns false when the whole tile is masked.
template <typename T, typename A>
bool CpuBackward<T, A>::score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0,
                                        int nk, Workspace<A> &w, int slot) {
    if (!tile_score_gradients(b, h, g, i0, nq, j0, nk, w, slot)) return false;
    peaked_score_gradients(b, h, g, i0, nq, j0, nk, w);
    return true;
}

// dS = P (dP - D) cancels where P is close to 1 (one key takes almost all of a row's weight: huge logits, or a
// very peaked softmax): dP = dO·v and D = dO·O are then nearly equal sums, each rounded in fp32, and their
// difference - the whole gradient - is rounding noise, multiplied by softmax_scale (1e8 gives dQ errors in the
// hundreds where the exact gradient is 0). For those elements (P >= 1/2: at most two per row) the difference is
// recomputed as dO·(v - O) in double from the stored rows, the same quantity summed after the subtraction: exactly
// 0 when the row's output is that key's value. O(headdim) per row, not per key.
// With a refined LSE (fp64, huge logits) D itself is taken from the probabilities (refine_lse_block), which
// removes the cancellation at its root; this is for the plain path.
template <typename T, typename A>
void CpuBackward<T, A>::peaked_score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq,
                                               int64_t j0, int nk, Workspace<A> &w) {
    if (refine_lse_) return;
    const bool capped = softcap_ > A(0);
    const int64_t hk = h / group_;
    for (int r = 0; r < nq; ++r) {
        if (w.dead[r]) continue;
        const A *s = &w.s[(size_t)r * kBlockK];
        A *dp = &w.dp[(size_t)r * kBlockK];
        for (int c = 0; c < nk; ++c) {
            // s holds Pd = P * keep / (1 - p): P of a kept key is s / keep_scale_, a dropped key has no cancellation
            const A prob = dropout_ ? (s[c] != A(0) ? s[c] / keep_scale_ : A(0)) : s[c];
            if (!(prob >= A(0.5))) continue;
            const double kf = dropout_ ? (double)keep_scale_ : 1.0;
            const T *o = q_side(p_->out, b, g, i0 + r, h);
            const T *dout = q_side(p_->dout, b, g, i0 + r, h);
            const T *v = k_side(p_->v, b, g, j0 + c, hk);
            double diff = 0.0;
            for (int e = 0; e < dv_; ++e)
                diff += (double)elem<T, A>::load(dout + e) *
                        (kf * (double)elem<T, A>::load(v + e) - (double)elem<T, A>::load(o + e));
            A ds = prob * (A)diff;
            if (capped) ds *= A(1) - w.tanh_t[(size_t)r * kBlockK + c] * w.tanh_t[(size_t)r * kBlockK + c];
            dp[c] = ds * scale_;
        }
    }
}

template <typename T, typename A>
bool CpuBackward<T, A>::tile_score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq,
                                             int64_t j0, int nk, Workspace<A> &w, int slot) {
    const bool full = window_.tile_fully_visible(i0, i0 + nq, j0, j0 + nk, g);
    const bool capped = softcap_ > A(0);

    score_products(nq, w, slot, true);
    const double *raw64 = refine_lse_ ? refined_scores(nq, w, slot) : nullptr;

    // The common interior tile: every pair visible, no per-element feature. One fused vector pass - except with a
    // refined LSE (huge logits), where every exponent must be formed as logits_row forms it (the refinement's
    // own rounding), which a fused score*scale - lse (one FMA) is not.
    if constexpr (std::is_same<A, float>::value) {
        if (full && nk == kBlockK && !capped && !dropout_ && !w.any_dead && alibi_slope(b, h) == A(0) &&
            lse_lo_.empty()) {
            kernels_->softmax_grad(w.s.data(), w.dp.data(), w.lse.data(), w.delta.data(), nq, scale_);
            return true;
        }
    }

    bool any = false;
    for (int r = 0; r < nq; ++r) {
        A *s = &w.s[(size_t)r * kBlockK];
        A *dp = &w.dp[(size_t)r * kBlockK];
        A *th = &w.tanh_t[(size_t)r * kBlockK];
        const int64_t i = i0 + r;
        if (w.dead[r]) {
            for (int c = 0; c < kBlockK; ++c) s[c] = dp[c] = A(0);
            continue;
        }
        const bool live = raw64 ? probabilities_row(b, h, g, i, j0, nk, full, raw64 + (size_t)r * kBlockK,
                                                    w.lse_hi[r], w.lse_lo[r], s, th)
                                : probabilities_row(b, h, g, i, j0, nk, full, s, w.lse[r], A(0), s, th);
        any = any || live;
        // dS = P (dP - D) with dP = dPd * keep / (1 - p); dX = dS * scale (* softcap derivative).
        // Pd = P * keep / (1 - p) replaces P afterwards (dS needs the undropped P).
        const A delta = w.delta[r];
        if (dropout_) {
            A *keep = w.keep.data();
            dropout_factors(b, h, i, j0, keep);
            for (int c = 0; c < kBlockK; ++c) {
                A ds = s[c] * (dp[c] * keep[c] - delta);
                if (capped) ds *= A(1) - th[c] * th[c];
                dp[c] = ds * scale_;
                s[c] *= keep[c];
            }
        } else {
            for (int c = 0; c < kBlockK; ++c) {
                A ds = s[c] * (dp[c] - delta);
                if (capped) ds *= A(1) - th[c] * th[c];
                dp[c] = ds * scale_;
            }
        }
    }
    return any;
}

// keep[c] = 1 / (1 - p) if key j0 + c of row i survives dropout, else 0. The mask is regenerated from Philox
// exactly as the forward drew it (kernels/fa_philox.h): bh = b * nheads_q + h, row/col within the sequence.
// j0 is a multiple of kBlockK, hence of 4, so each Philox call covers 4 consecutive columns of this tile.
template <typename T, typename A>
void CpuBackward<T, A>::dropout_factors(int64_t b, int64_t h, int64_t i, int64_t j0, A *keep) const {
    const uint32_t bh = (uint32_t)(b * p_->nheads_q + h);
    for (int c = 0; c < kBlockK; c += 4) {
        const fa_philox_out words =
            fa_dropout_words(p_->dropout_seed, p_->dropout_offset, bh, (uint32_t)i, (uint32_t)(j0 + c));
        for (int u = 0; u < 4; ++u) keep[c + u] = words.w[u] >= threshold_ ? keep_scale_ : A(0);
    }
}

// ---- the LSE recomputed from this pass's own scores ----
// fp64: the ABI's LSE is fp32, which would cap fp64 gradients at ~1e-7 relative error (useless for gradcheck).
// fp32 with huge logits (|LSE| above kRefineLseAbove, e.g. softmax_scale 1e8): the fp32 LSE is rounded to a unit
// of |LSE| * 2^-24 (64 at 1e9) and the forward rounded its scores differently from these, so exp(score - lse)
// of a row's largest score could be anything from e^-64 to 1 instead of 1 / (row sum): wrong dV, dK, dQ.
// lse = max_j x_j + log(sum_j exp(x_j - max_j x_j)), x_j the scores exactly as score_gradients forms them
// (same products, same rounding), makes every P consistent with them. Taken online against the running max, so
// no exponent is positive. One extra pass of Q Kᵀ, only in those two cases.
template <typename T, typename A>
void CpuBackward<T, A>::refine_lse_block(int64_t b, int64_t h, int64_t qb, Workspace<A> &w) {
    const auto [g, i0, nq] = query_block(b, qb);
    if (nq == 0) return;
    load_query_tile(b, g, h, i0, nq, w);
    double mx[kBlockQ];
    double sums[kBlockQ] = {}, wsums[kBlockQ] = {};  // sum_j e^(x_j - mx) and sum_j e^(x_j - mx) keep_j dPd_j
    for (int r = 0; r < nq; ++r) mx[r] = -1e300;
    const int64_t jlo = window_.key_lo(i0, g), jhi = window_.key_hi(i0 + nq - 1, g);
    for (int64_t kb = jlo / kBlockK; jlo <= jhi && kb <= jhi / kBlockK; ++kb) {
        const int64_t j0 = kb * kBlockK;
        const int nk = (int)std::min<int64_t>(kBlockK, g.sk - j0);
        load_key_tile(b, g, h / group_, j0, nk, w, 0);
        const bool full = window_.tile_fully_visible(i0, i0 + nq, j0, j0 + nk, g);
        score_products(nq, w, 0, true);
        double *x = refined_scores(nq, w, 0);  // the logits replace the products in place
        for (int r = 0; r < nq; ++r) {
            if (w.dead[r]) continue;
            double *s = x + (size_t)r * kBlockK;
            const A *dp = &w.dp[(size_t)r * kBlockK];
            logits_row(b, h, g, i0 + r, j0, nk, full, s, 0.0, 0.0, s, &w.tanh_t[(size_t)r * kBlockK]);
            if (dropout_) dropout_factors(b, h, i0 + r, j0, w.keep.data());
            double tmax = mx[r];
            for (int c = 0; c < kBlockK; ++c) tmax = s[c] > tmax ? s[c] : tmax;
            if (tmax > mx[r]) {
                const double f = std::exp(mx[r] - tmax);
                sums[r] *= f;
                wsums[r] *= f;
                mx[r] = tmax;
            }
            for (int c = 0; c < kBlockK; ++c) {
                const double e = std::exp(s[c] - tmax);
                sums[r] += e;
                wsums[r] += e * (double)dp[c] * (dropout_ ? (double)w.keep[c] : 1.0);
            }
        }
    }
    // Kept as two parts, the row's largest score and log(sum): one fp32 number could not hold both when the
    // score is huge (1e9 + log(3) rounds to 1e9, and three tied keys would each get P = 1 instead of 1/3).
    // D = rowsum(dO * O) is replaced by the same sum taken over these probabilities, sum_j P_j keep_j dPd_j, from
    // the very dPd values the gradient passes subtract it from: where one key has all the weight, dPd - D is then
    // exactly 0 (the exact gradient) instead of the rounding of the stored O times softmax_scale.
    for (int r = 0; r < nq; ++r) {
        const bool live = !w.dead[r] && sums[r] > 0.0;
        row_at(lse_fine_, b, g, i0 + r, h) = live ? mx[r] : 0.0;
        row_at(lse_lo_, b, g, i0 + r, h) = live ? std::log(sums[r]) : 0.0;
        if (live) delta_at(b, g, i0 + r, h) = (A)(wsums[r] / sums[r]);
    }
}

template <typename T, typename A>
bool CpuBackward<T, A>::huge_lse() const {
    for (int64_t b = 0; b < p_->batch; ++b) {
        const SeqGeometry g = sequence_geometry(p_, b);
        for (int64_t h = 0; h < p_->nheads_q; ++h)
            for (int64_t i = 0; i < g.sq; ++i) {
                const float v = lse_at(b, g, i, h);
                if (!lse_is_dead(v) && std::fabs(v) > kRefineLseAbove) return true;
            }
    }
    return false;
}

FA_BWD_INSTANTIATE

}  // namespace fa_bwd
