// fa_bwd.h - FlashAttention-2 backward on Apple GPUs: the three kernel bodies, instantiated by fa_bwd.metal.
//
// Algorithm (Dao, "FlashAttention-2", 2023, Algorithm 2) with P recomputed from the forward's LSE:
//   1. fa_bwd_preprocess: D = rowsum(dO * O) and the LSE in base-2 units (dead rows marked) -> two fp32 scratch rows
//      per (head, query). One threadgroup per (32 query rows, head, batch).
//   Launched after it, fa_bwd_dq (3.) also recomputes the softmax of rows with large logits (|LSE| > 64, see
//   fa_bwd_ref) and stores it for fa_bwd_dkdv, which runs last.
//   2. fa_bwd_dkdv: one threadgroup per (32 keys, kv head, batch); each simdgroup keeps K, V, dK, dV of its 8 keys in
//      registers (8x8 fragments) and walks the query blocks that see them, for every query head of the GQA group:
//      Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, then dV += Pdᵀ dO and dK += dXᵀ Q. Q and dO blocks are staged in threadgroup memory.
//      Each dK/dV row has exactly one writer: no atomics.
//   3. fa_bwd_dq: one threadgroup per (32 query rows, head, batch), the forward's shape: Q, dO, dQ of 8 rows per
//      simdgroup in registers, K/V tiles staged; S = Q Kᵀ, dP = dO Vᵀ, dQ += dX K.
// Per element: P = exp2(score·log2e - lse2) (refined rows: relative to their reference key), Pd = P·keep/(1-p),
// dS = P (dPd·keep/(1-p) - D), dX = dS · softmax_scale · (1 - tanh²) under softcap: the gradient with respect to q·k.
// Dropout regenerates the forward's mask from Philox (fa_philox.h): bh = b * nheads_q + h, row/col in the sequence.
// Masks are bottom-right aligned as in the forward; tiles outside the window are never visited. Fast math: masked
// scores and dead rows are tested explicitly, no infinity is ever computed.
#ifndef FA_BWD_H
#define FA_BWD_H

#include "fa_bwd_params.h"
#include "fa_bwd_refine.h"  // refined rows: two-part scores (fa_bwd_products_split), reference key (fa_bwd_ref)
#include "fa_bwd_rows.h"    // sequences, row views, register rows, staging, 8x8 products and their accumulation
#include "fa_forward.h"  // fragments (fa_frag, fa_frag_pos, fa_load_frag[_t]), FA_MASKED, FA_LOG2E, FA_INF_BITS
#include "fa_philox.h"

// The score of query i, key j from raw = q·k (unscaled), in the parts the gradient and the refinement need:
// s = base · base_mul - slope · dist, with base = raw (base_mul = softmax_scale) or, under softcap, base = tanh(raw ·
// softmax_scale / softcap) (base_mul = softcap). dcap is the softcap derivative (1 without). raw may come in two parts
// (raw + raw_lo, fa_bwd_products_split; raw_lo = 0 otherwise): base_lo keeps the second (0 under softcap, whose tanh
// takes the rounded sum).
struct fa_bwd_score {
    float s;
    float base;
    float base_lo;
    float dist;
    float dcap;
};

inline fa_bwd_score fa_bwd_score_of(constant fa_bwd_params& p, float raw, float raw_lo, int i, int j, int sq, int sk,
                                    float slope) {
    fa_bwd_score r;
    r.s = (raw + raw_lo) * p.softmax_scale;
    r.base = raw;
    r.base_lo = raw_lo;
    r.dcap = 1.0f;
    if (p.softcap > 0.0f) {
        const float t = fa_tanh(r.s * p.softcap_inv);
        r.s = p.softcap * t;
        r.base = t;
        r.base_lo = 0.0f;
        r.dcap = 1.0f - t * t;
    }
    r.dist = abs(float(i + (sk - sq) - j));
    r.s -= slope * r.dist;
    return r;
}

inline float fa_bwd_base_mul(constant fa_bwd_params& p) { return p.softcap > 0.0f ? p.softcap : p.softmax_scale; }

// The per-element core shared by both kernels. raw (+ raw_lo) = q·k, dpd = dO·v (both unscaled), for query i, key j.
// Returns dX (gradient with respect to q·k) and sets pd (the dropped, rescaled probability, for dV).
struct fa_bwd_elem {
    float pd;
    float dx;
};

inline float fa_bwd_keep(constant fa_bwd_params& p, uint bh, int i, int j) {
    if ((p.flags & FA_FLAG_DROPOUT) == 0) return 1.0f;
    return fa_dropout_keep(p.dropout_seed, p.dropout_offset, bh, uint(i), uint(j), p.dropout_threshold)
               ? p.dropout_scale
               : 0.0f;
}

inline fa_bwd_elem fa_bwd_element(constant fa_bwd_params& p, float raw, float raw_lo, float dpd, int i, int j, int sq,
                                  int sk, float lse2, float delta, float slope, uint bh, thread const fa_bwd_ref& ref) {
    fa_bwd_elem r;
    r.pd = 0.0f;
    r.dx = 0.0f;
    if (lse2 >= FA_BWD_DEAD_LSE2 || !fa_mask_visible(i, j, sq, sk, p.window_left, p.window_right)) return r;
    const fa_bwd_score sc = fa_bwd_score_of(p, raw, raw_lo, i, j, sq, sk, slope);
    // P <= 1: the exponent is <= 0 up to rounding (lse2 is the row's log-sum-exp), and is clamped there, so a huge
    // score whose fp32 rounding differs from the LSE's by more than a few units cannot give exp2 of a large
    // positive number (inf, then NaN in dK/dQ) - under fast math, exp2 is only safe for bounded arguments.
    // Refined rows (huge logits) take their exponent relative to the row's reference key instead (see fa_bwd_ref).
    const float x = ref.on ? fa_bwd_rel_log2(fa_bwd_base_mul(p), slope, sc.base, sc.base_lo, sc.dist, ref.base,
                                             ref.base_lo, ref.dist) - ref.lo2
                           : sc.s * FA_LOG2E - lse2;
    const float prob = exp2(min(x, 0.0f));
    const float keep = fa_bwd_keep(p, bh, i, j);
    r.pd = prob * keep;
    r.dx = prob * (dpd * keep - delta) * p.softmax_scale * sc.dcap;
    return r;
}

// The score and dPd products of one 8x8 block as the threadgroup needs them: in two parts (fa_bwd_products_split)
// when it has refined rows (`split`), else fa_bwd_products_t with s_lo = 0. Every lane must call it.
template <typename T, int NDF, int LD, bool ROWS_ARE_KEYS>
inline void fa_bwd_products(bool split, thread fa_frag& s_hi, thread fa_frag& s_lo, thread fa_frag* s_rows,
                            fa_bwd_split row_split, const threadgroup T* s_tile, thread fa_frag& t,
                            thread fa_frag* t_rows, const threadgroup T* t_tile, fa_lane_pos pos) {
    if (split) {
        fa_bwd_products_split<T, NDF, LD, ROWS_ARE_KEYS>(s_hi, s_lo, s_rows, row_split, s_tile, t, t_rows, t_tile,
                                                         pos);
    } else {
        fa_bwd_products_t<T, NDF, LD>(s_hi, s_rows, s_tile, t, t_rows, t_tile, pos);
        s_lo = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. preprocess: DELTA and LSE2. Lanes 4r .. 4r+3 of the threadgroup share row r and split the head dim.
template <typename T>
[[kernel]] void fa_bwd_preprocess(device const T* out [[buffer(3)]], device const T* dout [[buffer(4)]],
                                  device const float* lse [[buffer(5)]], device const int* cu_seqlens_q [[buffer(7)]],
                                  device const int* cu_seqlens_k [[buffer(8)]], device const int* seqused_k [[buffer(9)]],
                                  device float* delta [[buffer(13)]], device float* lse2 [[buffer(14)]],
                                  constant fa_bwd_params& p [[buffer(15)]],
                                  uint3 tgid [[threadgroup_position_in_grid]],
                                  ushort tid [[thread_index_in_threadgroup]]) {
    const int b = int(tgid.z);
    const int h = int(tgid.y);
    const fa_bwd_seq s = fa_bwd_seq_info(p, b, cu_seqlens_q, cu_seqlens_k, seqused_k);
    const int i = int(tgid.x) * FA_BWD_PRE_ROWS + int(tid / 4);
    const bool valid = i < s.sq;
    float sum = 0.0f;
    if (valid) {
        const fa_long ooff = fa_bwd_qrow(p, p.o_batch_stride, p.o_row_stride, s, b, i) + fa_long(h) * p.o_head_stride;
        const fa_long doff = fa_bwd_qrow(p, p.do_batch_stride, p.do_row_stride, s, b, i) + fa_long(h) * p.do_head_stride;
        for (int d = int(tid % 4); d < p.headdim; d += 4) sum += float(out[ooff + d]) * float(dout[doff + d]);
    }
    // the 4 lanes of a row are consecutive: reduce over lane bits 0 and 1 (every lane takes part)
    sum += simd_shuffle_xor(sum, ushort(1));
    sum += simd_shuffle_xor(sum, ushort(2));
    if (!valid || (tid % 4) != 0) return;
    const fa_long lrow = ((p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) * p.lse_row_stride
                                                       : fa_long(b) * p.lse_batch_stride + fa_long(i) * p.lse_row_stride) +
                         fa_long(h) * p.lse_head_stride;
    const float l = lse[lrow];
    const bool dead = (as_type<uint>(l) & FA_INF_BITS) == FA_INF_BITS;  // +inf (no key) or nan: never computed on
    const fa_long at = fa_bwd_scratch_row(p, s, b, h, i);
    delta[at] = sum;
    lse2[at] = dead ? FA_BWD_DEAD_LSE2 : l * FA_LOG2E;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. dK, dV. Threadgroup (key block, kv head, batch); simdgroup sg owns keys kb + 8 sg .. kb + 8 sg + 7.
// BLOCKED: blocked accumulation over the query blocks (see fa_bwd_fold), for long query ranges.
template <typename T, int BD, int BQ, int NSG, bool BLOCKED = false>
[[kernel]] void fa_bwd_dkdv(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                            device const T* v [[buffer(2)]], device const T* dout [[buffer(4)]],
                            device const float* alibi [[buffer(6)]], device const int* cu_seqlens_q [[buffer(7)]],
                            device const int* cu_seqlens_k [[buffer(8)]], device const int* seqused_k [[buffer(9)]],
                            device T* dk [[buffer(11)]], device T* dv [[buffer(12)]],
                            device const float* delta [[buffer(13)]], device const float* lse2 [[buffer(14)]],
                            constant fa_bwd_params& p [[buffer(15)]], uint3 tgid [[threadgroup_position_in_grid]],
                            ushort sg [[simdgroup_index_in_threadgroup]], ushort lane [[thread_index_in_simdgroup]],
                            ushort tid [[thread_index_in_threadgroup]]) {
    static_assert(BD % 8 == 0 && BQ % 8 == 0, "tiles are made of 8x8 fragments");
    constexpr int NT = NSG * FA_SIMD_WIDTH;
    constexpr int BK = 8 * NSG;
    constexpr int LD = fa_tile_ld(BD);
    constexpr int NDF = BD / 8;  // fragments across the head dim
    constexpr int NQF = BQ / 8;  // fragments across a query block

    threadgroup T qs[BQ * LD];
    threadgroup T dos[BQ * LD];
    threadgroup float lse2s[BQ];
    threadgroup float deltas[BQ];

    const int b = int(tgid.z);
    const int hkv = int(tgid.y);
    const fa_bwd_seq s = fa_bwd_seq_info(p, b, cu_seqlens_q, cu_seqlens_k, seqused_k);
    const int kb = int(tgid.x) * BK;
    if (kb >= s.sk_rows) return;  // grid sized for the longest sequence: the whole threadgroup leaves

    // ---- this lane's keys: fragment row = key, column = head dim ----
    const fa_lane_pos pos = fa_frag_pos(lane);
    const int key = kb + int(sg) * 8 + pos.row;
    fa_frag kf[NDF];
    fa_frag vf[NDF];
    fa_frag dkf[NDF];
    fa_frag dvf[NDF];
    fa_bwd_lane_rows<T, NDF>(kf, vf, dkf, dvf, k, v, p, fa_bwd_view_of(p.k_batch_stride, p.k_row_stride,
                             p.k_head_stride, hkv, false), fa_bwd_view_of(p.v_batch_stride, p.v_row_stride,
                             p.v_head_stride, hkv, false), s, b, key, key < s.sk, pos);
    const fa_bwd_split key_split = fa_bwd_split_for(fa_bwd_row_maxabs<NDF>(kf));  // for refined rows' scores
    fa_frag dk_out[BLOCKED ? NDF : 1];  // BLOCKED: the finished blocks' sums
    fa_frag dv_out[BLOCKED ? NDF : 1];
    for (int d = 0; d < (BLOCKED ? NDF : 1); ++d) {
        dk_out[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        dv_out[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
    int block_q = 0;

    // ---- query rows that see any key of this block (uniform across the threadgroup) ----
    const int k_last = min(kb + BK, s.sk) - 1;
    const int i_lo = int(fa_mask_row_lo(kb, s.sq, s.sk, p.window_right));
    int i_hi = int(fa_mask_row_hi(k_last, s.sq, s.sk, p.window_left)) - 1;
    if (kb >= s.sk) i_hi = -1;  // keys past seqused_k: zero gradients

    const bool has_alibi = (p.flags & FA_FLAG_ALIBI) != 0;
    for (int h = hkv * p.group; h < (hkv + 1) * p.group; ++h) {
        const float slope = has_alibi ? alibi[fa_long(b) * p.alibi_batch_stride + h] : 0.0f;
        const uint bh = uint(b * p.nheads_q + h);
        const fa_bwd_view qv = fa_bwd_view_of(p.q_batch_stride, p.q_row_stride, p.q_head_stride, h, true);
        const fa_bwd_view dov = fa_bwd_view_of(p.do_batch_stride, p.do_row_stride, p.do_head_stride, h, true);
        for (int i0 = i_lo; i0 <= i_hi; i0 += BQ) {
            // stage Q, dO rows i0 .. i0+BQ-1 (zero past the block / head dim) and their LSE2, D
            fa_bwd_stage_rows<T, BD, BQ, NT>(qs, dos, q, dout, p, qv, dov, s, b, i0, i_hi + 1, tid);
            for (int r = int(tid); r < BQ; r += NT) {
                const int i = i0 + r;
                const bool in = i <= i_hi;
                const fa_long at = in ? fa_bwd_scratch_row(p, s, b, h, i) : 0;
                lse2s[r] = in ? lse2[at] : FA_BWD_DEAD_LSE2;
                deltas[r] = in ? delta[at] : 0.0f;
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
            // a refined row in the block (lane r checks row r; BQ <= the SIMD width): scores in two parts
            const bool block_refine = simd_any(int(lane) < BQ && fa_bwd_refine_row(lse2s[min(int(lane), BQ - 1)]));

            for (int qf = 0; qf < NQF; ++qf) {
                // Sᵀ (8 keys x 8 queries) = K Qᵀ and dPdᵀ = V dOᵀ
                fa_frag st;
                fa_frag st_lo;
                fa_frag dpt;
                fa_bwd_products<T, NDF, LD, true>(block_refine, st, st_lo, kf, key_split, qs + qf * 8 * LD, dpt, vf,
                                                  dos + qf * 8 * LD, pos);
                // element (key, query): Pdᵀ into st, dXᵀ into dpt
                for (int e = 0; e < 2; ++e) {
                    const int r = qf * 8 + pos.col + e;  // query row within the block
                    const float l2 = lse2s[r];
                    // a refined row (huge logits, written by the dQ kernel): its reference from the scratch
                    const fa_bwd_ref ref = fa_bwd_refine_row(l2)
                                               ? fa_bwd_load_ref(p, lse2, fa_bwd_scratch_row(p, s, b, h, i0 + r))
                                               : fa_bwd_no_ref();
                    const fa_bwd_elem g = fa_bwd_element(p, st.thread_elements()[e], st_lo.thread_elements()[e],
                                                         dpt.thread_elements()[e], i0 + r, key, s.sq, s.sk, l2,
                                                         deltas[r], slope, bh, ref);
                    st.thread_elements()[e] = g.pd;
                    dpt.thread_elements()[e] = g.dx;
                }
                // dV += Pdᵀ dO, dK += dXᵀ Q
                for (int d = 0; d < NDF; ++d) {
                    fa_frag dof;
                    fa_load_frag(dof, dos + qf * 8 * LD + d * 8, LD, pos);
                    fa_frag qfr;
                    fa_load_frag(qfr, qs + qf * 8 * LD + d * 8, LD, pos);
                    fa_bwd_mma_add(dvf[d], st, dof);
                    fa_bwd_mma_add(dkf[d], dpt, qfr);
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);  // the next block overwrites the staged rows
            if (BLOCKED && ++block_q == p.acc_block_q) {
                fa_bwd_fold<NDF>(dk_out, dkf);
                fa_bwd_fold<NDF>(dv_out, dvf);
                block_q = 0;
            }
        }
    }
    if (BLOCKED) {  // the last block, then the outer sums take the running ones' place
        fa_bwd_fold<NDF>(dk_out, dkf);
        fa_bwd_fold<NDF>(dv_out, dvf);
        for (int d = 0; d < NDF; ++d) {
            dkf[d] = dk_out[BLOCKED ? d : 0];
            dvf[d] = dv_out[BLOCKED ? d : 0];
        }
    }

    // ---- write dK, dV (rows of keys past seqused_k get the zeros they hold) ----
    if (key >= s.sk_rows) return;
    const fa_bwd_view dkv = fa_bwd_view_of(p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, hkv, false);
    const fa_bwd_view dvv = fa_bwd_view_of(p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, hkv, false);
    fa_bwd_store_row<T, NDF>(dk, fa_bwd_at(p, dkv, s, b, key), dkf, p.headdim, pos);
    fa_bwd_store_row<T, NDF>(dv, fa_bwd_at(p, dvv, s, b, key), dvf, p.headdim, pos);
}

// The dQ kernel's sweep over the key tiles n_begin .. n_end - 1 of its block: each tile of K, V (kv head hkv) is
// staged into ks / vs, and for each of its 8-key fragments S = Q Kᵀ (with split: in two parts, S + S_lo,
// fa_bwd_products_split with the rows' split q_split; else S_lo = 0) and dPd = dO Vᵀ are formed and handed to
// op.tile(p, S, S_lo, dPd, first key of this lane's columns, the fragment's K rows); op.tile_end(p, last) follows each
// tile (the BLOCKED kernels' accumulation blocks). The refinement pass and the gradient pass are this sweep with
// different ops (fa_bwd_refine_op, fa_bwd_dq_op). Every thread of the threadgroup calls it.
template <typename T, int BD, int BK, int NT, int NDF, typename Op>
inline void fa_bwd_key_sweep(thread Op& op, threadgroup T* ks, threadgroup T* vs, device const T* k,
                             device const T* v, constant fa_bwd_params& p, thread const fa_bwd_seq& s, int b, int hkv,
                             int n_begin, int n_end, thread fa_frag* qf, fa_bwd_split q_split, bool split,
                             thread fa_frag* dof, fa_lane_pos pos, ushort tid) {
    constexpr int LD = fa_tile_ld(BD);
    const fa_bwd_view kv = fa_bwd_view_of(p.k_batch_stride, p.k_row_stride, p.k_head_stride, hkv, false);
    const fa_bwd_view vv = fa_bwd_view_of(p.v_batch_stride, p.v_row_stride, p.v_head_stride, hkv, false);
    for (int n = n_begin; n < n_end; ++n) {
        const int kb = n * BK;
        fa_bwd_stage_rows<T, BD, BK, NT>(ks, vs, k, v, p, kv, vv, s, b, kb, s.sk, tid);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int jf = 0; jf < BK / 8; ++jf) {
            fa_frag sf;
            fa_frag sf_lo;
            fa_frag dpf;
            fa_bwd_products<T, NDF, LD, false>(split, sf, sf_lo, qf, q_split, ks + jf * 8 * LD, dpf, dof,
                                               vs + jf * 8 * LD, pos);
            op.tile(p, sf, sf_lo, dpf, kb + jf * 8 + pos.col, ks + jf * 8 * LD);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the next tile overwrites ks / vs
        op.tile_end(p, n + 1 == n_end);
    }
}

// The refinement pass of a row (see fa_bwd_ref): this lane's share of the row's reference key and sums.
// BLOCKED: the share of each accumulation block is merged into acc_out at its end, as the lanes' shares are merged.
template <bool BLOCKED>
struct fa_bwd_refine_op {
    fa_bwd_refine_acc acc;
    fa_bwd_refine_acc acc_out;  // BLOCKED: the finished blocks' share
    int block_tiles;
    fa_bwd_seq s;
    int i;
    bool refine;  // this lane's row is refined (the other lanes take part in the sweep, adding nothing)
    float base_mul, slope;
    uint bh;

    template <typename T>
    void tile(constant fa_bwd_params& p, thread fa_frag& sf, thread fa_frag& sf_lo, thread fa_frag& dpf, int j0,
              const threadgroup T*) {
        for (int e = 0; e < 2; ++e) {
            const int j = j0 + e;
            if (!refine || !fa_mask_visible(i, j, s.sq, s.sk, p.window_left, p.window_right)) continue;
            const fa_bwd_score sc =
                fa_bwd_score_of(p, sf.thread_elements()[e], sf_lo.thread_elements()[e], i, j, s.sq, s.sk, slope);
            fa_bwd_refine_add(acc, base_mul, slope, sc.base, sc.base_lo, sc.dist, 1.0f,
                              dpf.thread_elements()[e] * fa_bwd_keep(p, bh, i, j));
        }
    }

    void tile_end(constant fa_bwd_params& p, bool last) {
        if (BLOCKED && (++block_tiles == p.acc_block_k || last)) {
            if (acc.has != 0.0f)
                fa_bwd_refine_add(acc_out, base_mul, slope, acc.base, acc.base_lo, acc.dist, acc.sum, acc.wsum);
            acc.has = 0.0f;
            block_tiles = 0;
        }
    }
};

// The gradient pass of the dQ kernel: dX per element, then dQ += dX K (each 8-key product added once,
// fa_bwd_mma_add). BLOCKED: dqf restarts every p.acc_block_k key tiles, each finished block added into dq_out.
template <int NDF, int LD, bool BLOCKED>
struct fa_bwd_dq_op {
    thread fa_frag* dqf;
    thread fa_frag* dq_out;
    int block_k;
    fa_bwd_seq s;
    int i;
    float lse2, delta, slope;
    uint bh;
    fa_bwd_ref ref;
    fa_lane_pos pos;

    template <typename T>
    void tile(constant fa_bwd_params& p, thread fa_frag& sf, thread fa_frag& sf_lo, thread fa_frag& dpf, int j0,
              const threadgroup T* krows) {
        for (int e = 0; e < 2; ++e) {
            const fa_bwd_elem g = fa_bwd_element(p, sf.thread_elements()[e], sf_lo.thread_elements()[e],
                                                 dpf.thread_elements()[e], i, j0 + e, s.sq, s.sk, lse2, delta, slope,
                                                 bh, ref);
            dpf.thread_elements()[e] = g.dx;
        }
        for (int d = 0; d < NDF; ++d) {
            fa_frag kfr;
            fa_load_frag(kfr, krows + d * 8, LD, pos);
            fa_bwd_mma_add(dqf[d], dpf, kfr);
        }
    }

    void tile_end(constant fa_bwd_params& p, bool) {
        if (BLOCKED && ++block_k == p.acc_block_k) {
            fa_bwd_fold<NDF>(dq_out, dqf);
            block_k = 0;
        }
    }
};

// ---------------------------------------------------------------------------------------------------------------
// 3. dQ. Threadgroup (query block, head, batch); simdgroup sg owns query rows m0 + 8 sg .. m0 + 8 sg + 7.
// BLOCKED: blocked accumulation over the key tiles (see fa_bwd_fold; refined rows' sums too), for long key ranges.
template <typename T, int BD, int BK, int NSG, bool BLOCKED = false>
[[kernel]] void fa_bwd_dq(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                          device const T* v [[buffer(2)]], device const T* dout [[buffer(4)]],
                          device const float* alibi [[buffer(6)]], device const int* cu_seqlens_q [[buffer(7)]],
                          device const int* cu_seqlens_k [[buffer(8)]], device const int* seqused_k [[buffer(9)]],
                          device T* dq [[buffer(10)]], device float* delta [[buffer(13)]],
                          device float* lse2 [[buffer(14)]], constant fa_bwd_params& p [[buffer(15)]],
                          uint3 tgid [[threadgroup_position_in_grid]], ushort sg [[simdgroup_index_in_threadgroup]],
                          ushort lane [[thread_index_in_simdgroup]], ushort tid [[thread_index_in_threadgroup]]) {
    static_assert(BD % 8 == 0 && BK % 8 == 0, "tiles are made of 8x8 fragments");
    static_assert(8 * NSG <= FA_SIMD_WIDTH, "the refinement check gives each row of the block one lane");
    constexpr int NT = NSG * FA_SIMD_WIDTH;
    constexpr int BQ = 8 * NSG;
    constexpr int LD = fa_tile_ld(BD);
    constexpr int NDF = BD / 8;

    threadgroup T ks[BK * LD];
    threadgroup T vs[BK * LD];

    const int b = int(tgid.z);
    const int h = int(tgid.y);
    const int hkv = h / p.group;
    const fa_bwd_seq s = fa_bwd_seq_info(p, b, cu_seqlens_q, cu_seqlens_k, seqused_k);
    const int m0 = int(tgid.x) * BQ;
    if (m0 >= s.sq) return;
    const int i_last = min(m0 + BQ, s.sq) - 1;

    // keys seen by any row of the block (uniform)
    const int k_lo = int(fa_mask_key_lo(m0, s.sq, s.sk, p.window_left));
    const int k_hi = int(fa_mask_key_hi(i_last, s.sq, s.sk, p.window_right));  // exclusive
    const int n_begin = k_lo < k_hi ? k_lo / BK : 0;
    const int n_end = k_lo < k_hi ? (k_hi + BK - 1) / BK : 0;

    // ---- this lane's query row: Q, dO, dQ fragments (row = query, column = head dim) ----
    const fa_lane_pos pos = fa_frag_pos(lane);
    const int i = m0 + int(sg) * 8 + pos.row;
    const bool row_valid = i < s.sq;
    fa_frag qf[NDF];
    fa_frag dof[NDF];
    fa_frag dqf[NDF];
    fa_bwd_lane_rows<T, NDF>(qf, dof, dqf, (thread fa_frag*)nullptr, q, dout, p, fa_bwd_view_of(p.q_batch_stride,
                             p.q_row_stride, p.q_head_stride, h, true), fa_bwd_view_of(p.do_batch_stride,
                             p.do_row_stride, p.do_head_stride, h, true), s, b, i, row_valid, pos);
    const fa_bwd_split q_split = fa_bwd_split_for(fa_bwd_row_maxabs<NDF>(qf));  // for refined rows' scores
    const fa_long at = row_valid ? fa_bwd_scratch_row(p, s, b, h, i) : 0;
    const float row_lse2 = row_valid ? lse2[at] : FA_BWD_DEAD_LSE2;
    float row_delta = row_valid ? delta[at] : 0.0f;
    const float slope = (p.flags & FA_FLAG_ALIBI) ? alibi[fa_long(b) * p.alibi_batch_stride + h] : 0.0f;
    const uint bh = uint(b * p.nheads_q + h);

    // ---- refined rows (large logits, see fa_bwd_ref): one extra pass over the keys, only in threadgroups that hold
    // such a row. Lane l checks row m0 + l (BQ == the SIMD width), so every simdgroup reaches the same decision and
    // the pass (with its barriers) is uniform across the threadgroup. Every live row of such a threadgroup is refined,
    // not only those with |LSE| > 64: with huge inputs (q ~1e5) a row whose q·k cancels to a small LSE still carries
    // the rounding of its huge terms in a plain fp32 product and in the forward's LSE (as the CPU backward, which
    // refines every row of a call that has one; issue 17 item 6). Such rows are marked for the dK/dV kernel by
    // FA_BWD_REFINED_LSE2 in slot 0.
    fa_bwd_ref row_ref = fa_bwd_no_ref();
    bool any_refine;
    {
        const int ic = m0 + int(lane);
        const bool ok = lane < BQ && ic < s.sq;
        const float lc = ok ? lse2[fa_bwd_scratch_row(p, s, b, h, ic)] : 0.0f;
        any_refine = simd_any(ok && fa_bwd_refine_row(lc));
    }
    const bool refine = any_refine && row_lse2 < FA_BWD_DEAD_LSE2;
    if (any_refine) {
        fa_bwd_refine_op<BLOCKED> ro;
        ro.acc.has = 0.0f;
        ro.acc.base = ro.acc.base_lo = ro.acc.dist = ro.acc.sum = ro.acc.wsum = 0.0f;
        ro.acc_out = ro.acc;
        ro.block_tiles = 0;
        ro.s = s;
        ro.i = i;
        ro.refine = refine;
        ro.base_mul = fa_bwd_base_mul(p);
        ro.slope = slope;
        ro.bh = bh;
        fa_bwd_key_sweep<T, BD, BK, NT, NDF>(ro, ks, vs, k, v, p, s, b, hkv, n_begin, n_end, qf, q_split, true, dof,
                                             pos, tid);
        if (BLOCKED) ro.acc = ro.acc_out;
        fa_bwd_refine_merge(ro.acc, ro.base_mul, slope);
        if (refine && ro.acc.has != 0.0f) {
            // acc.sum >= 1: the reference key's own term is 2^0
            row_ref.on = true;
            row_ref.base = ro.acc.base;
            row_ref.base_lo = ro.acc.base_lo;
            row_ref.dist = ro.acc.dist;
            row_ref.lo2 = log2(ro.acc.sum);
            row_delta = ro.acc.wsum / ro.acc.sum;
            if ((lane & 9) == 0) {  // one lane per row (fragment column 0); every lane read slot 0 before the barriers
                lse2[at] = FA_BWD_REFINED_LSE2;
                lse2[fa_bwd_slot(p, at, 1)] = row_ref.base;
                lse2[fa_bwd_slot(p, at, 2)] = row_ref.dist;
                lse2[fa_bwd_slot(p, at, 3)] = row_ref.lo2;
                lse2[fa_bwd_slot(p, at, 4)] = row_ref.base_lo;
                delta[at] = row_delta;
            }
        }
    }

    // ---- S = Q Kᵀ (in two parts where rows are refined), dPd = dO Vᵀ per 8-key fragment, dX, dQ += dX K ----
    fa_frag dq_out[BLOCKED ? NDF : 1];  // BLOCKED: the finished blocks' sums
    for (int d = 0; d < (BLOCKED ? NDF : 1); ++d) dq_out[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    fa_bwd_dq_op<NDF, LD, BLOCKED> go;
    go.dqf = dqf;
    go.dq_out = dq_out;
    go.block_k = 0;
    go.s = s;
    go.i = i;
    go.lse2 = row_lse2;
    go.delta = row_delta;
    go.slope = slope;
    go.bh = bh;
    go.ref = row_ref;
    go.pos = pos;
    fa_bwd_key_sweep<T, BD, BK, NT, NDF>(go, ks, vs, k, v, p, s, b, hkv, n_begin, n_end, qf, q_split, any_refine, dof,
                                         pos, tid);
    if (BLOCKED) {  // the last block, then the outer sums take the running ones' place
        fa_bwd_fold<NDF>(dq_out, dqf);
        for (int d = 0; d < NDF; ++d) dqf[d] = dq_out[BLOCKED ? d : 0];
    }

    if (!row_valid) return;
    const fa_bwd_view dqv = fa_bwd_view_of(p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, h, true);
    fa_bwd_store_row<T, NDF>(dq, fa_bwd_at(p, dqv, s, b, i), dqf, p.headdim, pos);
}

#endif  // FA_BWD_H
