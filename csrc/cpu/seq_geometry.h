// seq_geometry.h - where one sequence's queries and keys live, for every layout the ABI allows
// (dense, varlen cu_seqlens, seqused_k, leftpad_k, cache_batch_idx, paged block_table). Shared by the forward
// and the KV-cache update so both address the cache identically.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "fa_abi.h"

namespace fa_cpu {

struct SeqGeometry {
    int32_t sq = 0;        // query rows of this sequence
    int32_t sk = 0;        // visible keys (relative index 0..sk-1)
    int64_t q_row0 = 0;    // element offset of query row 0, head 0 in q (and out, via out strides)
    int64_t out_row0 = 0;
    int64_t lse_row0 = 0;  // element offset of (row 0, head 0) in lse
    int32_t leftpad = 0;   // absolute cache row of relative key 0
    int64_t k_base = 0, v_base = 0;  // dense/varlen: element offset of absolute key row 0, head 0
    const int32_t *pages = nullptr;  // paged: this sequence's block_table row
};

inline bool is_paged(const fa_params *p) { return p->block_table != nullptr; }

// Element offset of absolute cache row `row` (head 0) in k (is_v = false) or v.
inline int64_t kv_row_offset(const fa_params *p, const SeqGeometry &g, int64_t row, bool is_v) {
    const fa_tensor &t = is_v ? p->v : p->k;
    if (g.pages) {
        const int64_t page = g.pages[row / p->page_block_size];
        return page * t.batch_stride + (row % p->page_block_size) * t.row_stride;
    }
    return (is_v ? g.v_base : g.k_base) + row * t.row_stride;
}

// Resolves sequence b. `key_count_extra` is added to the key count (used by nothing today; kept 0).
// Returns false with a message when the metadata would make us read or write outside the tensors.
inline bool resolve_sequence(const fa_params *p, int b, SeqGeometry &g, char *err, size_t errlen) {
    g = SeqGeometry();
    if (p->cu_seqlens_q) {
        const int64_t r0 = p->cu_seqlens_q[b], r1 = p->cu_seqlens_q[b + 1];
        if (r0 < 0 || r1 < r0 || r1 > p->total_q) {
            std::snprintf(err, errlen, "cu_seqlens_q[%d..%d] = (%lld, %lld) out of range for total_q=%lld", b, b + 1,
                          (long long)r0, (long long)r1, (long long)p->total_q);
            return false;
        }
        g.sq = int32_t(r1 - r0);
        g.q_row0 = r0 * p->q.row_stride;
        g.out_row0 = r0 * p->out.row_stride;
        g.lse_row0 = r0 * p->lse_row_stride;
    } else {
        g.sq = p->seqlen_q;
        g.q_row0 = int64_t(b) * p->q.batch_stride;
        g.out_row0 = int64_t(b) * p->out.batch_stride;
        g.lse_row0 = int64_t(b) * p->lse_batch_stride;
    }
    g.leftpad = p->leftpad_k ? p->leftpad_k[b] : 0;
    if (g.leftpad < 0) {
        std::snprintf(err, errlen, "leftpad_k[%d] = %d is negative", b, g.leftpad);
        return false;
    }
    int64_t capacity;  // absolute cache rows addressable for this sequence
    if (is_paged(p)) {
        if (p->page_block_size <= 0) {
            std::snprintf(err, errlen, "page_block_size must be positive, got %d", p->page_block_size);
            return false;
        }
        g.pages = p->block_table + int64_t(b) * p->block_table_batch_stride;
        capacity = int64_t(p->max_blocks_per_seq) * p->page_block_size;
        g.sk = p->seqused_k ? p->seqused_k[b] : p->seqlen_k;
    } else if (p->cu_seqlens_k) {
        const int64_t r0 = p->cu_seqlens_k[b], r1 = p->cu_seqlens_k[b + 1];
        if (r0 < 0 || r1 < r0 || r1 > p->total_k) {
            std::snprintf(err, errlen, "cu_seqlens_k[%d..%d] = (%lld, %lld) out of range for total_k=%lld", b, b + 1,
                          (long long)r0, (long long)r1, (long long)p->total_k);
            return false;
        }
        g.k_base = r0 * p->k.row_stride;
        g.v_base = r0 * p->v.row_stride;
        capacity = r1 - r0;
        g.sk = p->seqused_k ? p->seqused_k[b] : int32_t(r1 - r0);
    } else {
        int64_t cb = b;
        if (p->cache_batch_idx) {
            cb = p->cache_batch_idx[b];
            const int64_t count = p->cache_batch_count > 0 ? p->cache_batch_count : p->batch;
            if (cb < 0 || cb >= count) {
                std::snprintf(err, errlen, "cache_batch_idx[%d] = %lld out of range [0, %lld)", b, (long long)cb,
                              (long long)count);
                return false;
            }
        }
        g.k_base = cb * p->k.batch_stride;
        g.v_base = cb * p->v.batch_stride;
        capacity = p->seqlen_k;
        g.sk = p->seqused_k ? p->seqused_k[b] : p->seqlen_k;
    }
    if (g.sk < 0 || int64_t(g.leftpad) + g.sk > capacity) {
        std::snprintf(err, errlen, "sequence %d uses keys [%d, %lld) but only %lld cache rows exist", b, g.leftpad,
                      (long long)g.leftpad + g.sk, (long long)capacity);
        return false;
    }
    if (g.pages && g.sk > 0) {
        const int64_t last_page = (int64_t(g.leftpad) + g.sk - 1) / p->page_block_size;
        for (int64_t i = int64_t(g.leftpad) / p->page_block_size; i <= last_page; ++i) {
            if (g.pages[i] < 0 || g.pages[i] >= p->num_blocks) {
                std::snprintf(err, errlen, "block_table[%d][%lld] = %d out of range [0, %lld)", b, (long long)i,
                              g.pages[i], (long long)p->num_blocks);
                return false;
            }
        }
    }
    return true;
}

}  // namespace fa_cpu
