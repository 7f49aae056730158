// fa_merge.h - combine the split-KV partial results of the decode kernel (flash-decoding, second pass).
//
// Split s of a row produced O_s (already normalised by its own row sum) and its natural-log LSE_s, or LSE_s =
// FA_MASKED when it saw no key. The row's result is  O = sum_s w_s O_s / sum_s w_s  with  w_s = exp(LSE_s - max LSE),
// and LSE = max LSE + log(sum_s w_s). A row no split saw writes zeros and LSE +inf (bit pattern, never computed).
// One threadgroup per (query row, head, batch); its threads stride over the head dim. No barriers: every thread
// reduces the split LSEs itself. Both sums over the splits are pairwise (fa_pairwise_sum), for thousands of splits.
#ifndef FA_MERGE_H
#define FA_MERGE_H

#include "fa_kernel_params.h"
#include "fa_tiles.h"

#ifndef FA_MASKED
#define FA_MASKED (-3.40282346638528859812e+38f)  // as in fa_forward.h
#define FA_INF_BITS 0x7f800000u
#endif

// Pairwise (cascade) summation in a fixed binary tree: after n terms the relative error is at most about
// log2(n) * 2^-24 instead of n * 2^-24 for a running sum, which matters with many splits (the plan gives a split at
// most 4096 keys in decode, so 2^31 keys make 2^19 splits). part[k] holds the sum of the last complete block of 2^k
// terms; adding term i carries up through the set low bits of i, like a binary counter. The tree is data (array
// slots and the term count), not an expression, so fast math cannot reassociate it back into a running sum (a Kahan
// correction could be optimised away). 32 levels cover any int count of splits.
struct fa_pairwise_sum {
    float part[32];
    int n;
};

inline void fa_pairwise_init(thread fa_pairwise_sum& s) { s.n = 0; }

inline void fa_pairwise_add(thread fa_pairwise_sum& s, float x) {
    int k = 0;
    for (uint c = uint(s.n); (c & 1u) != 0u; c >>= 1, ++k) x = s.part[k] + x;  // merge equal-sized blocks
    s.part[k] = x;
    ++s.n;
}

// The sum of all terms: the complete blocks of the set bits of n, smallest first.
inline float fa_pairwise_total(thread const fa_pairwise_sum& s) {
    float t = 0.0f;
    int k = 0;
    for (uint c = uint(s.n); c != 0u; c >>= 1, ++k)
        if ((c & 1u) != 0u) t += s.part[k];
    return t;
}

template <typename T>
[[kernel]] void fa_merge_splits(device const float* o_partial [[buffer(0)]],
                                device const float* lse_partial [[buffer(1)]], device T* out [[buffer(2)]],
                                device float* lse [[buffer(3)]], device const int* cu_seqlens_q [[buffer(4)]],
                                constant fa_merge_params& p [[buffer(15)]],
                                uint3 tgid [[threadgroup_position_in_grid]],
                                ushort tid [[thread_index_in_threadgroup]],
                                ushort nthreads [[threads_per_threadgroup]]) {
    const int i = int(tgid.x);
    const int hq = int(tgid.y);
    const int b = int(tgid.z);
    const bool varlen = (p.flags & FA_FLAG_VARLEN_Q) != 0;
    const int q_start = varlen ? cu_seqlens_q[b] : 0;
    const int sq = varlen ? cu_seqlens_q[b + 1] - q_start : p.seqlen_q;
    if (i >= sq) return;
    const fa_long prow = varlen ? fa_long(q_start + i) : fa_long(b) * p.seqlen_q + i;
    const fa_long split_stride = fa_long(p.nheads_q) * p.partial_rows;
    const fa_long slab0 = fa_long(hq) * p.partial_rows + prow;

    float lse_max = FA_MASKED;
    for (int s = 0; s < p.num_splits; ++s) lse_max = max(lse_max, lse_partial[slab0 + s * split_stride]);
    const bool has_key = lse_max != FA_MASKED;
    fa_pairwise_sum wacc;
    fa_pairwise_init(wacc);
    if (has_key) {
        for (int s = 0; s < p.num_splits; ++s) {
            const float l = lse_partial[slab0 + s * split_stride];
            fa_pairwise_add(wacc, (l == FA_MASKED) ? 0.0f : exp(l - lse_max));
        }
    }
    const float wsum = fa_pairwise_total(wacc);
    const float inv_wsum = wsum > 0.0f ? 1.0f / wsum : 0.0f;

    const fa_long orow = (varlen ? fa_long(q_start + i) * p.o_row_stride
                                 : fa_long(b) * p.o_batch_stride + fa_long(i) * p.o_row_stride) +
                         fa_long(hq) * p.o_head_stride;
    for (int d = tid; d < p.headdim; d += nthreads) {
        fa_pairwise_sum acc;
        fa_pairwise_init(acc);
        if (has_key) {
            for (int s = 0; s < p.num_splits; ++s) {
                const fa_long slab = slab0 + s * split_stride;
                const float l = lse_partial[slab];
                fa_pairwise_add(acc, (l == FA_MASKED) ? 0.0f : exp(l - lse_max) * o_partial[slab * p.headdim + d]);
            }
        }
        out[orow + d] = T(fa_pairwise_total(acc) * inv_wsum);
    }
    if ((p.flags & FA_FLAG_LSE) && tid == 0) {
        const fa_long loff = (varlen ? fa_long(q_start + i) * p.lse_row_stride
                                     : fa_long(b) * p.lse_batch_stride + fa_long(i) * p.lse_row_stride) +
                             fa_long(hq) * p.lse_head_stride;
        lse[loff] = has_key ? lse_max + log(wsum) : as_type<float>(uint(FA_INF_BITS));
    }
}

#endif  // FA_MERGE_H
