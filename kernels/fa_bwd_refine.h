// fa_bwd_refine.h - refined rows of the backward kernels (fa_bwd.h): rows with large logits get their softmax
// recomputed from the kernels' own scores, and those scores formed beyond fp32 precision. Included by fa_bwd.h only.
#ifndef FA_BWD_REFINE_H
#define FA_BWD_REFINE_H

#include "fa_bwd_params.h"
#include "fa_forward.h"  // fa_frag, fa_lane_pos, fa_load_frag_t, fa_row_max, FA_LOG2E

// ---- q·k of refined rows in two parts (large logits: the exponent scale · q·k carries scale times the error of q·k,
// and fp32 products rounded as plainly as the float32 reference's own gave dQ/dK 1-3x over the tolerance at
// softmax_scale 10-300, depending on the data; issue 17 item 6) ----
// Each operand x is split as hi + lo, hi = x truncated to a multiple of `unit`, a power of two with |x| < 2^8 · unit
// for every element of x's row (query) or column (key): lo = x - hi is exact. A product of two hi parts is a multiple
// of unit_q · unit_k below 2^16 of them, so a sum of <= 256 of them (the head dim) stays below 2^24 units: EXACT in
// fp32 whatever the order or fusing of the sums (fast math may reassociate, and nothing here depends on rounding).
// q·k = Σ hi_q hi_k (exact) + Σ (hi_q lo_k + lo_q hi_k + lo_q lo_k), the second sum ~2^-7 of the first, so its fp32
// rounding is ~2^-7 of a plain product's. Only threadgroups holding a refined row pay the three extra products.
// Both gradient kernels must form the very same bits (a refined row's exponents are differences from its reference
// key, which the dQ kernel picked; at softmax_scale 1e8 one unit of the last place of q·k moves P by a factor of 2).
// The hi part is exact; the lo part is one chain of accumulations, in the same order in both kernels although one
// forms S = Q Kᵀ and the other Sᵀ = K Qᵀ (as the plain products, this relies on an 8x8 product and its transpose
// rounding alike).
struct fa_bwd_split {
    float unit, inv;
};

// The split for a row or column whose largest |element| is maxabs (>= 0, finite): unit = 2^(floor(log2 maxabs) - 7),
// built from the exponent bits (no log2 under fast math); at least the smallest normal float, so tiny rows keep
// everything in lo rather than produce subnormal units that fast math may flush.
inline fa_bwd_split fa_bwd_split_for(float maxabs) {
    const int e = int((as_type<uint>(maxabs) >> 23) & 0xffu);  // biased exponent
    const int u = max(e - 7, 1);
    fa_bwd_split r;
    r.unit = as_type<float>(uint(u) << 23);
    r.inv = as_type<float>(uint(254 - u) << 23);  // 1 / unit, exactly
    return r;
}

inline float fa_bwd_hi(float x, fa_bwd_split sp) { return trunc(x * sp.inv) * sp.unit; }

// The largest |element| of this lane's fragment row across NDF fragments (every lane of the simdgroup must call it).
template <int NDF>
inline float fa_bwd_row_maxabs(thread fa_frag* f) {
    float m = 0.0f;
    for (int d = 0; d < NDF; ++d) m = max(m, max(abs(f[d].thread_elements()[0]), abs(f[d].thread_elements()[1])));
    return fa_row_max(m);
}

// fa_bwd_products_t in two parts for threadgroups with refined rows: s_hi + s_lo = Σ_d s_rows[d] · (8 rows of
// s_tile)ᵀ with s_hi exact (see above), and t as fa_bwd_products_t. row_split is the split of this lane's row of
// s_rows; the 8 tile rows read transposed (the fragment's columns) get theirs here. ROWS_ARE_KEYS: the dK/dV kernel
// (rows = keys), which takes the two cross products in the other order so that the chain matches the dQ kernel's.
// Every lane must call it.
template <typename T, int NDF, int LD, bool ROWS_ARE_KEYS>
inline void fa_bwd_products_split(thread fa_frag& s_hi, thread fa_frag& s_lo, thread fa_frag* s_rows,
                                  fa_bwd_split row_split, const threadgroup T* s_tile, thread fa_frag& t,
                                  thread fa_frag* t_rows, const threadgroup T* t_tile, fa_lane_pos pos) {
    // the columns' largest |element|: the lanes of a fragment column differ in lane bits 1, 2 and 4 (fa_frag_pos)
    float cmax[2] = {0.0f, 0.0f};
    for (int d = 0; d < NDF; ++d) {
        fa_frag st;
        fa_load_frag_t(st, s_tile + d * 8, LD, pos);
        for (int e = 0; e < 2; ++e) cmax[e] = max(cmax[e], abs(st.thread_elements()[e]));
    }
    fa_bwd_split col_split[2];
    for (int e = 0; e < 2; ++e) {
        float m = cmax[e];
        m = max(m, simd_shuffle_xor(m, ushort(2)));
        m = max(m, simd_shuffle_xor(m, ushort(4)));
        m = max(m, simd_shuffle_xor(m, ushort(16)));
        col_split[e] = fa_bwd_split_for(m);
    }
    s_hi = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    s_lo = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    t = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (int d = 0; d < NDF; ++d) {
        fa_frag st;
        fa_load_frag_t(st, s_tile + d * 8, LD, pos);
        fa_frag st_hi;
        fa_frag st_lo;
        fa_frag row_hi;
        fa_frag row_lo;
        for (int e = 0; e < 2; ++e) {
            const float x = st.thread_elements()[e];
            const float xh = fa_bwd_hi(x, col_split[e]);
            st_hi.thread_elements()[e] = xh;
            st_lo.thread_elements()[e] = x - xh;
            const float y = s_rows[d].thread_elements()[e];
            const float yh = fa_bwd_hi(y, row_split);
            row_hi.thread_elements()[e] = yh;
            row_lo.thread_elements()[e] = y - yh;
        }
        simdgroup_multiply_accumulate(s_hi, row_hi, st_hi, s_hi);
        // s_lo += hi_q lo_k, then lo_q hi_k, then lo_q lo_k
        if (ROWS_ARE_KEYS) {
            simdgroup_multiply_accumulate(s_lo, row_lo, st_hi, s_lo);
            simdgroup_multiply_accumulate(s_lo, row_hi, st_lo, s_lo);
        } else {
            simdgroup_multiply_accumulate(s_lo, row_hi, st_lo, s_lo);
            simdgroup_multiply_accumulate(s_lo, row_lo, st_hi, s_lo);
        }
        simdgroup_multiply_accumulate(s_lo, row_lo, st_lo, s_lo);
        fa_frag tt;
        fa_load_frag_t(tt, t_tile + d * 8, LD, pos);
        simdgroup_multiply_accumulate(t, t_rows[d], tt, t);
    }
}

// ---- refined rows (large logits, |LSE| > 64: FA_BWD_REFINE_LSE2) ----
// The forward's fp32 LSE cannot serve there: its unit is |LSE| · 2^-24 (64 at 1e9), and the forward rounded its scores
// differently from this pass, so exp2(s - lse2) of a row's largest score could be anything from 2^-64 to 1. The dQ
// kernel recomputes such a row's softmax from the very scores both gradient kernels form (same products, same
// rounding) and keeps it in two parts: a reference key (the row's largest score, as its base and distance) and
// log2 of the row sum relative to it. Exponents are then formed as differences from the reference,
// ((base - ref.base) + (base_lo - ref.base_lo)) · base_mul - slope · (dist - ref.dist): exactly 0 for the reference
// key itself, and no huge score is ever subtracted from another huge number (where a fused multiply-add could leave
// its rounding error, 64 at 1e9). The scores of such rows come in two parts (fa_bwd_products_split).
// D = rowsum(dO * O) is replaced by Σ_j P_j · keep_j · dPd_j over these probabilities and the same dPd values the
// gradient subtracts it from: where one key holds all the weight, dPd - D is then exactly 0 (the exact gradient)
// instead of the rounding of the stored O times softmax_scale.
struct fa_bwd_ref {
    bool on;
    float base, base_lo, dist, lo2;
};

inline bool fa_bwd_refine_row(float lse2) { return lse2 < FA_BWD_DEAD_LSE2 && abs(lse2) > FA_BWD_REFINE_LSE2; }

inline fa_bwd_ref fa_bwd_no_ref() {
    fa_bwd_ref r;
    r.on = false;
    r.base = 0.0f;
    r.base_lo = 0.0f;
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
    r.base_lo = lse2[fa_bwd_slot(p, at, 4)];
    return r;
}

// log2 of the weight of a key (base + base_lo, dist) relative to the reference key (rbase + rbase_lo, rdist) of its
// row. Antisymmetric: swapping the two keys negates it exactly, so lanes that compare the same pair agree on the winner.
inline float fa_bwd_rel_log2(float base_mul, float slope, float base, float base_lo, float dist, float rbase,
                             float rbase_lo, float rdist) {
    return (((base - rbase) + (base_lo - rbase_lo)) * base_mul - slope * (dist - rdist)) * FA_LOG2E;
}

// Does key (base, base_lo, dist) at relative log-weight x against the reference (rbase, rbase_lo, rdist) replace it?
// Ties broken on the parts, so that every lane of a row picks the same reference.
inline bool fa_bwd_beats(float x, float base, float base_lo, float dist, float rbase, float rbase_lo, float rdist) {
    return x > 0.0f ||
           (x == 0.0f && (base > rbase || (base == rbase && (base_lo > rbase_lo || (base_lo == rbase_lo && dist < rdist)))));
}

// One lane's share of a refined row: reference key, Σ 2^x and Σ 2^x · keep · dPd over the keys it saw.
struct fa_bwd_refine_acc {
    float has;  // 1 once a key was seen (a float: it travels through simd_shuffle_xor)
    float base, base_lo, dist, sum, wsum;
};

inline void fa_bwd_refine_add(thread fa_bwd_refine_acc& a, float base_mul, float slope, float base, float base_lo,
                              float dist, float sum, float wsum) {
    if (a.has == 0.0f) {
        a.has = 1.0f;
        a.base = base;
        a.base_lo = base_lo;
        a.dist = dist;
        a.sum = sum;
        a.wsum = wsum;
        return;
    }
    float x = fa_bwd_rel_log2(base_mul, slope, base, base_lo, dist, a.base, a.base_lo, a.dist);
    if (fa_bwd_beats(x, base, base_lo, dist, a.base, a.base_lo, a.dist)) {
        const float f = exp2(-x);  // <= 1: the old reference's weight relative to the new one
        a.sum *= f;
        a.wsum *= f;
        a.base = base;
        a.base_lo = base_lo;
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
        o.base_lo = simd_shuffle_xor(a.base_lo, m);
        o.dist = simd_shuffle_xor(a.dist, m);
        o.sum = simd_shuffle_xor(a.sum, m);
        o.wsum = simd_shuffle_xor(a.wsum, m);
        if (o.has != 0.0f) fa_bwd_refine_add(a, base_mul, slope, o.base, o.base_lo, o.dist, o.sum, o.wsum);
    }
}

#endif  // FA_BWD_REFINE_H
