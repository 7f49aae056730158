// fa_bwd_refine.h - the backward's refined rows (rows with large logits), for the kernels of fa_bwd.h: the
// reference key a row's exponents are taken against, and the lane-wise sums that find it. Valid MSL and C++ (the
// simulator).
#ifndef FA_BWD_REFINE_H
#define FA_BWD_REFINE_H

#include "fa_bwd_params.h"
#include "fa_forward.h"  // FA_LOG2E

// ---- refined rows (large logits, |LSE| > 64: FA_BWD_REFINE_LSE2) ----
// The forward's fp32 LSE cannot serve there: its unit is |LSE| · 2^-24 (64 at 1e9), and the forward rounded its scores
// differently from this pass, so exp2(s - lse2) of a row's largest score could be anything from 2^-64 to 1. The dQ
// kernel recomputes such a row's softmax from the very scores both gradient kernels form (same products, same
// rounding) and keeps it in two parts: a reference key (the row's largest score, as its base and distance) and
// log2 of the row sum relative to it. Exponents are then formed as differences from the reference,
// (base - ref.base) · base_mul - slope · (dist - ref.dist): exactly 0 for the reference key itself, and no huge score
// is ever subtracted from another huge number (where a fused multiply-add could leave its rounding error, 64 at 1e9).
// D = rowsum(dO * O) is replaced by Σ_j P_j · keep_j · dPd_j over these probabilities and the same dPd values the
// gradient subtracts it from: where one key holds all the weight, dPd - D is then exactly 0 (the exact gradient)
// instead of the rounding of the stored O times softmax_scale.
struct fa_bwd_ref {
    bool on;
    float base, dist, lo2;
};

inline bool fa_bwd_refine_row(float lse2) { return lse2 < FA_BWD_DEAD_LSE2 && abs(lse2) > FA_BWD_REFINE_LSE2; }

inline fa_bwd_ref fa_bwd_no_ref() {
    fa_bwd_ref r;
    r.on = false;
    r.base = 0.0f;
    r.dist = 0.0f;
    r.lo2 = 0.0f;
    return r;
}

// Index of slot `slot` of the LSE2 scratch for the row at `at` (fa_bwd_scratch_row).
inline fa_long fa_bwd_slot(constant fa_bwd_params& p, fa_long at, int slot) {
    return at + fa_long(slot) * fa_long(p.nheads_q) * p.q_rows;
}

inline fa_bwd_ref fa_bwd_load_ref(constant fa_bwd_params& p, device const float* lse2, fa_long at) {
    fa_bwd_ref r;
    r.on = true;
    r.base = lse2[fa_bwd_slot(p, at, 1)];
    r.dist = lse2[fa_bwd_slot(p, at, 2)];
    r.lo2 = lse2[fa_bwd_slot(p, at, 3)];
    return r;
}

// log2 of the weight of a key (base, dist) relative to the reference key (rbase, rdist) of its row. Antisymmetric:
// swapping the two keys negates it exactly, so lanes that compare the same pair agree on the winner.
inline float fa_bwd_rel_log2(float base_mul, float slope, float base, float dist, float rbase, float rdist) {
    return ((base - rbase) * base_mul - slope * (dist - rdist)) * FA_LOG2E;
}

// Does key (base, dist) at relative log-weight x against the reference (rbase, rdist) replace it? Ties broken on the
// parts, so that every lane of a row picks the same reference.
inline bool fa_bwd_beats(float x, float base, float dist, float rbase, float rdist) {
    return x > 0.0f || (x == 0.0f && (base > rbase || (base == rbase && dist < rdist)));
}

// One lane's share of a refined row: reference key, Σ 2^x and Σ 2^x · keep · dPd over the keys it saw.
struct fa_bwd_refine_acc {
    float has;  // 1 once a key was seen (a float: it travels through simd_shuffle_xor)
    float base, dist, sum, wsum;
};

inline void fa_bwd_refine_add(thread fa_bwd_refine_acc& a, float base_mul, float slope, float base, float dist,
                              float sum, float wsum) {
    if (a.has == 0.0f) {
        a.has = 1.0f;
        a.base = base;
        a.dist = dist;
        a.sum = sum;
        a.wsum = wsum;
        return;
    }
    float x = fa_bwd_rel_log2(base_mul, slope, base, dist, a.base, a.dist);
    if (fa_bwd_beats(x, base, dist, a.base, a.dist)) {
        const float f = exp2(-x);  // <= 1: the old reference's weight relative to the new one
        a.sum *= f;
        a.wsum *= f;
        a.base = base;
        a.dist = dist;
        x = 0.0f;
    }
    // the reference's own weight exactly 1: a fast exp2(0) need not be, and the lanes of a row, which merge their
    // shares in different orders, would then disagree on the sums
    const float e = x == 0.0f ? 1.0f : exp2(min(x, 0.0f));
    a.sum += e * sum;
    a.wsum += e * wsum;
}

// Merges the shares of the other lanes of the row (lane masks 1 and 8 keep the fragment row, fa_frag_pos).
// Every lane of the simdgroup must call it.
inline void fa_bwd_refine_merge(thread fa_bwd_refine_acc& a, float base_mul, float slope) {
    for (ushort m = 1; m <= 8; m *= 8) {
        fa_bwd_refine_acc o;
        o.has = simd_shuffle_xor(a.has, m);
        o.base = simd_shuffle_xor(a.base, m);
        o.dist = simd_shuffle_xor(a.dist, m);
        o.sum = simd_shuffle_xor(a.sum, m);
        o.wsum = simd_shuffle_xor(a.wsum, m);
        if (o.has != 0.0f) fa_bwd_refine_add(a, base_mul, slope, o.base, o.dist, o.sum, o.wsum);
    }
}

#endif  // FA_BWD_REFINE_H
