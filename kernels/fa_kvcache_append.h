// fa_kvcache_append.h - KV-cache update before decode attention (flash_attn_with_kvcache semantics).
//
// Grid (max(seqlen_q, seqlen_new), nheads_q + nheads_kv, batch). Threadgroup (x, y, b):
// - y < nheads_q: rotary embedding on q row x of head y, in place (position base + x when FA_APPEND_Q_CAUSAL, else
//   base, with base = leftpad + seqused_k[b] = flash_attn's cache_seqlens[b]);
// - y >= nheads_q: new row x of kv head y - nheads_q: k rotated at position base + x, then k and v written into the
//   cache at row base + x of sequence b (dense: batch row cache_batch_idx[b]; paged: through block_table).
// Rotary: interleaved rotates pairs (2t, 2t+1) (GPT-J), otherwise (t, t + rotary_dim/2) (GPT-NeoX), t < rotary_dim/2,
// with cos/sin[pos, t]; dims past rotary_dim are copied as they are. Each thread owns whole pairs, so the in-place q
// update has no race. Rows or positions outside the cache / rotary table are skipped (the host validates them).
#ifndef FA_KVCACHE_APPEND_H
#define FA_KVCACHE_APPEND_H

#include "fa_kernel_params.h"

// Rotate the pairs of one row from src into dst (both may alias: each pair is read before it is written).
template <typename T, typename SrcPtr, typename DstPtr>
inline void fa_rotate_row(SrcPtr src, DstPtr dst, device const T* cos_row, device const T* sin_row, int rotary_dim,
                          bool interleaved, ushort tid, ushort nthreads) {
    const int half_dim = rotary_dim / 2;
    for (int t = tid; t < half_dim; t += nthreads) {
        const int i0 = interleaved ? 2 * t : t;
        const int i1 = interleaved ? 2 * t + 1 : t + half_dim;
        const float c = float(cos_row[t]);
        const float s = float(sin_row[t]);
        const float x0 = float(src[i0]);
        const float x1 = float(src[i1]);
        dst[i0] = T(x0 * c - x1 * s);
        dst[i1] = T(x0 * s + x1 * c);
    }
}

template <typename T>
[[kernel]] void fa_kvcache_append(device T* q [[buffer(0)]], device T* k_cache [[buffer(1)]],
                                  device T* v_cache [[buffer(2)]], device const T* k_new [[buffer(3)]],
                                  device const T* v_new [[buffer(4)]], device const T* rotary_cos [[buffer(5)]],
                                  device const T* rotary_sin [[buffer(6)]], device const int* seqused_k [[buffer(7)]],
                                  device const int* leftpad_k [[buffer(8)]],
                                  device const int* cache_batch_idx [[buffer(9)]],
                                  device const int* block_table [[buffer(10)]],
                                  constant fa_append_params& p [[buffer(15)]],
                                  uint3 tgid [[threadgroup_position_in_grid]],
                                  ushort tid [[thread_index_in_threadgroup]],
                                  ushort nthreads [[threads_per_threadgroup]]) {
    const int x = int(tgid.x);
    const int y = int(tgid.y);
    const int b = int(tgid.z);
    const int used = (p.flags & FA_FLAG_SEQUSED_K) ? seqused_k[b] : 0;
    const int leftpad = (p.flags & FA_FLAG_LEFTPAD_K) ? leftpad_k[b] : 0;
    const int base = leftpad + used;
    const bool interleaved = (p.flags & FA_APPEND_INTERLEAVED) != 0;

    if (y < p.nheads_q) {  // ---- q rotation in place ----
        if (!(p.flags & FA_APPEND_ROTATE_Q) || x >= p.seqlen_q) return;
        const int pos = (p.flags & FA_APPEND_Q_CAUSAL) ? base + x : base;
        if (pos < 0 || pos >= p.seqlen_ro) return;
        device T* row = q + fa_long(b) * p.q_batch_stride + fa_long(x) * p.q_row_stride + fa_long(y) * p.q_head_stride;
        const fa_long cs = fa_long(pos) * (p.rotary_dim / 2);
        fa_rotate_row<T>(row, row, rotary_cos + cs, rotary_sin + cs, p.rotary_dim, interleaved, tid, nthreads);
        return;
    }

    // ---- new k/v row -> cache ----
    const int hk = y - p.nheads_q;
    if (!(p.flags & FA_APPEND_KV) || x >= p.seqlen_new) return;
    const int row = base + x;  // cache row of the new key
    fa_long outer;
    fa_long crow;
    if (p.flags & FA_FLAG_PAGED) {
        const int blk = row / p.page_block_size;
        if (row < 0 || blk >= p.max_blocks_per_seq) return;
        outer = block_table[fa_long(b) * p.block_table_batch_stride + blk];
        if (outer < 0 || outer >= p.num_blocks) return;
        crow = row % p.page_block_size;
    } else {
        outer = (p.flags & FA_FLAG_CACHE_BATCH_IDX) ? cache_batch_idx[b] : b;
        if (row < 0 || row >= p.seqlen_k || outer < 0 || outer >= p.cache_batch_count) return;
        crow = row;
    }
    device T* kdst = k_cache + outer * p.k_batch_stride + crow * p.k_row_stride + fa_long(hk) * p.k_head_stride;
    device T* vdst = v_cache + outer * p.v_batch_stride + crow * p.v_row_stride + fa_long(hk) * p.v_head_stride;
    device const T* ksrc = k_new + fa_long(b) * p.kn_batch_stride + fa_long(x) * p.kn_row_stride +
                           fa_long(hk) * p.kn_head_stride;
    device const T* vsrc = v_new + fa_long(b) * p.vn_batch_stride + fa_long(x) * p.vn_row_stride +
                           fa_long(hk) * p.vn_head_stride;
    const int pos = base + x;
    const bool rotate = (p.flags & FA_APPEND_ROTATE_K) && pos < p.seqlen_ro;
    const int first_plain = rotate ? p.rotary_dim : 0;  // dims copied unchanged
    if (rotate) {
        const fa_long cs = fa_long(pos) * (p.rotary_dim / 2);
        fa_rotate_row<T>(ksrc, kdst, rotary_cos + cs, rotary_sin + cs, p.rotary_dim, interleaved, tid, nthreads);
    }
    for (int d = first_plain + tid; d < p.headdim; d += nthreads) kdst[d] = ksrc[d];
    for (int d = tid; d < p.headdim; d += nthreads) vdst[d] = vsrc[d];
}

#endif  // FA_KVCACHE_APPEND_H
