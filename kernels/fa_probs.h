// fa_probs.h - debug output of the forward: the attention probabilities (flash_attn's S_dmask).
//
// attn_probs[b, h, i, j] = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij) over the keys row i sees (the
// normalisation the forward uses, before dropout), negated where dropout drops the element (the same Philox mask
// as the forward), 0 for keys the row does not see and for columns past the sequence's keys. Slow by design (the
// scores are recomputed three times with scalar dot products): it only runs when the caller asks for the
// probabilities. One threadgroup per (query row, head, batch); its threads stride over the keys and reduce the row
// max and sum through SIMD-group functions and a small threadgroup array.
#ifndef FA_PROBS_H
#define FA_PROBS_H

#include "fa_forward.h"

#define FA_PROBS_SIMDGROUPS (FA_PROBS_THREADS / FA_SIMD_WIDTH)

// Score of (query row i, key j) in base-2 units with softcap and ALiBi, or FA_MASKED when the row may not see it.
template <typename T>
inline float fa_probs_score(constant fa_fwd_params& p, device const T* qrow, device const T* k,
                            thread const fa_seq& s, device const int* block_table, int b, int hkv, int i, int j,
                            float slope_log2) {
    const int off = s.sk - s.sq;
    if (!fa_visible(p, s, i, j)) return FA_MASKED;
    const fa_key_loc loc = fa_locate_key(p, s, block_table, b, j);
    device const T* krow = k + loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + fa_long(hkv) * p.k_head_stride;
    float acc = 0.0f;
    for (int c = 0; c < p.headdim; ++c) acc += float(qrow[c]) * float(krow[c]);
    float x = acc * p.q_scale;
    if (p.softcap_inv > 0.0f) x = p.softcap_log2 * fa_tanh(x * p.softcap_inv);
    if (p.flags & FA_FLAG_ALIBI) x -= slope_log2 * abs(float(i + off - j));
    return x;
}

// Threadgroup-wide max / sum of one value per thread (every thread of the threadgroup calls it).
inline float fa_tg_reduce(float x, bool is_max, threadgroup float* scratch, ushort sg, ushort lane) {
    x = is_max ? simd_max(x) : simd_sum(x);
    if (lane == 0) scratch[sg] = x;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = scratch[0];
    for (int g = 1; g < FA_PROBS_SIMDGROUPS; ++g) r = is_max ? max(r, scratch[g]) : r + scratch[g];
    threadgroup_barrier(mem_flags::mem_threadgroup);  // scratch is reused by the next reduction
    return r;
}

template <typename T>
[[kernel]] void fa_attn_probs(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                              device const float* alibi [[buffer(5)]], device const int* cu_seqlens_q [[buffer(6)]],
                              device const int* cu_seqlens_k [[buffer(7)]], device const int* seqused_k [[buffer(8)]],
                              device const int* leftpad_k [[buffer(9)]], device const int* cache_batch_idx [[buffer(10)]],
                              device const int* block_table [[buffer(11)]], device float* probs [[buffer(14)]],
                              constant fa_fwd_params& p [[buffer(15)]], uint3 tgid [[threadgroup_position_in_grid]],
                              ushort tid [[thread_index_in_threadgroup]], ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]]) {
    threadgroup float scratch[FA_PROBS_SIMDGROUPS];
    const int i = int(tgid.x);
    const int hq = int(tgid.y);
    const int b = int(tgid.z);
    const fa_seq s = fa_seq_info(p, b, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, cache_batch_idx);
    if (i >= s.sq) return;  // whole threadgroup: rows past a varlen sequence are not part of the output
    const int hkv = hq / p.group;
    const fa_long qrow_off = ((p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) * p.q_row_stride
                                                           : fa_long(b) * p.q_batch_stride + fa_long(i) * p.q_row_stride) +
                             fa_long(hq) * p.q_head_stride;
    device const T* qrow = q + qrow_off;
    const float slope_log2 = (p.flags & FA_FLAG_ALIBI) ? alibi[fa_long(b) * p.alibi_batch_stride + hq] * FA_LOG2E : 0.0f;
    const int ncols = min(s.sk, p.seqlen_k);

    float m = FA_MASKED;
    for (int j = tid; j < ncols; j += FA_PROBS_THREADS)
        m = max(m, fa_probs_score<T>(p, qrow, k, s, block_table, b, hkv, i, j, slope_log2));
    m = fa_tg_reduce(m, true, scratch, sg, lane);
    float l = 0.0f;
    if (m != FA_MASKED) {
        for (int j = tid; j < ncols; j += FA_PROBS_THREADS) {
            const float x = fa_probs_score<T>(p, qrow, k, s, block_table, b, hkv, i, j, slope_log2);
            l += (x == FA_MASKED) ? 0.0f : exp2(x - m);
        }
    }
    l = fa_tg_reduce(l, false, scratch, sg, lane);
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
    const uint bh = uint(b * p.nheads_q + hq);
    device float* dst = probs + fa_long(b) * p.probs_batch_stride + fa_long(hq) * p.probs_head_stride +
                        fa_long(i) * p.probs_row_stride;
    for (int j = tid; j < p.seqlen_k; j += FA_PROBS_THREADS) {
        float pr = 0.0f;
        if (j < ncols && m != FA_MASKED) {
            const float x = fa_probs_score<T>(p, qrow, k, s, block_table, b, hkv, i, j, slope_log2);
            pr = (x == FA_MASKED) ? 0.0f : exp2(x - m) * inv_l;
            if ((p.flags & FA_FLAG_DROPOUT) &&
                !fa_dropout_keep(p.dropout_seed, p.dropout_offset, bh, uint(i), uint(j), p.dropout_threshold))
                pr = -pr;
        }
        dst[j] = pr;
    }
}

#endif  // FA_PROBS_H
