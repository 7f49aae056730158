// fa_kernel_params.h - the constant blocks the dispatch plan (csrc/plan) fills and the Metal kernels read.
//
// Valid MSL and valid C++: the plan memcpy's one of these structs into fa_launch.constants and the executor passes it
// with setBytes (the simulator the same way), so the layout must be identical on both sides. Rules that keep it so:
// only fixed-width scalars (no bool, no pointers, no vectors), every 8-byte field before every 4-byte field, and the
// total size a multiple of 8. Strides count ELEMENTS, as in fa_abi.h. No standard headers are included, because MSL
// has none and the simulator's strict check poisons them.
#ifndef FA_KERNEL_PARAMS_H
#define FA_KERNEL_PARAMS_H

#ifdef __METAL_VERSION__
typedef long fa_long;
typedef ulong fa_ulong;
#else
typedef long long fa_long;
typedef unsigned long long fa_ulong;
#endif
typedef int fa_int;
typedef unsigned int fa_uint;

#include "fa_kernel_args.h"

// Bits of fa_fwd_params.flags: which optional inputs/outputs a launch uses. Buffers behind a clear bit may be unbound.
#define FA_FLAG_LSE (1u << 0)              // write the log-sum-exp
#define FA_FLAG_ALIBI (1u << 1)            // alibi slopes bound at FA_FWD_BUF_ALIBI
#define FA_FLAG_VARLEN_Q (1u << 2)         // q/out are packed, sequence b = rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1
#define FA_FLAG_VARLEN_K (1u << 3)         // k/v are packed by cu_seqlens_k
#define FA_FLAG_SEQUSED_K (1u << 4)        // seqused_k[b] keys are used (overrides the length)
#define FA_FLAG_LEFTPAD_K (1u << 5)        // key j of sequence b is row leftpad_k[b] + j
#define FA_FLAG_CACHE_BATCH_IDX (1u << 6)  // sequence b reads k/v batch row cache_batch_idx[b]
#define FA_FLAG_PAGED (1u << 7)            // k/v are pages [num_blocks, page, hkv, d] mapped through block_table
#define FA_FLAG_DROPOUT (1u << 8)          // Philox dropout on the probabilities (kernels/fa_philox.h)
#define FA_FLAG_SPLIT (1u << 9)            // write un-merged partial O / LSE to scratch (flash-decoding split-KV)
#define FA_FLAG_KV_ALIGNED (1u << 10)      // fa_vec1/4_*: headdim, every k/v stride and both base addresses are
                                           // multiples of fa_vec_width(BD) elements, so K/V rows load as vectors

// Buffer indices: FA_FWD_BUF_*, FA_MERGE_BUF_*, FA_APPEND_BUF_* (fa_kernel_args.h, the table of every kernel's
// [[buffer(n)]] arguments).

// Forward / decode attention. One threadgroup per (query tile, head block, batch * num_splits + split).
struct fa_fwd_params {
    // ---- 8-byte fields ----
    fa_long q_batch_stride, q_row_stride, q_head_stride;  // elements; batch stride unused when FA_FLAG_VARLEN_Q
    fa_long k_batch_stride, k_row_stride, k_head_stride;  // paged: batch stride = page stride
    fa_long v_batch_stride, v_row_stride, v_head_stride;
    fa_long o_batch_stride, o_row_stride, o_head_stride;
    fa_long lse_batch_stride, lse_head_stride, lse_row_stride;  // fp32 elements; varlen: row = cu_seqlens_q[b] + i
    fa_long alibi_batch_stride;        // 0 for slopes of shape [nheads_q]
    fa_long block_table_batch_stride;  // int32 elements
    fa_long partial_rows;              // split: query rows per (split, head) slab of the partial buffers
    fa_ulong dropout_seed, dropout_offset;
    fa_long probs_batch_stride, probs_head_stride, probs_row_stride;  // fa_probs_*: attn_probs (fp32) strides
    // ---- 4-byte fields ----
    fa_int batch, seqlen_q, seqlen_k;  // varlen: maxima (only the grid depends on them)
    fa_int nheads_q, nheads_kv;
    fa_int headdim;                    // real head dim <= the kernel's BD: columns >= headdim are zero on load, not stored
    fa_int group;                      // nheads_q / nheads_kv (GQA/MQA)
    fa_int pack;                       // 1, or `group` when the query heads of a group share tiles (packed GQA)
    fa_int window_left, window_right;  // -1 = unbounded; causal is window_right = 0 (bottom-right aligned)
    float q_scale;                     // multiplies q on load: softmax_scale * log2(e), or softmax_scale with softcap
    float softcap_inv;                 // 1 / softcap, 0 = off
    float softcap_log2;                // softcap * log2(e)
    float dropout_scale;               // 1 / (1 - p)
    fa_uint dropout_threshold;         // floor(p * 2^32) clamped: keep iff the Philox word >= it
    fa_uint flags;                     // FA_FLAG_*
    fa_int page_block_size, max_blocks_per_seq;
    fa_int num_splits;                 // split-KV: key tiles of a row block are divided among num_splits groups
    fa_int acc_block_tiles;            // fa_fwd_long_*: key tiles per accumulation block (fa_fold_block); else 0
};

// Merge of split-KV partials: one threadgroup per (query row, head, batch).
struct fa_merge_params {
    fa_long o_batch_stride, o_row_stride, o_head_stride;
    fa_long lse_batch_stride, lse_head_stride, lse_row_stride;
    fa_long partial_rows;   // as fa_fwd_params.partial_rows
    fa_int batch, seqlen_q, nheads_q, headdim;
    fa_int num_splits;
    fa_uint flags;          // FA_FLAG_LSE, FA_FLAG_VARLEN_Q
};

// KV-cache append: rotary on q (in place) and on the new keys, new k/v written into the cache.
// Grid (max(seqlen_q, seqlen_new), nheads_q + nheads_kv, batch); y < nheads_q rotates q, else appends kv head y - nheads_q.

#define FA_APPEND_ROTATE_Q (1u << 16)     // rotate q in place
#define FA_APPEND_ROTATE_K (1u << 17)     // rotate the new keys
#define FA_APPEND_INTERLEAVED (1u << 18)  // pairs (0,1),(2,3)... ; else (i, i + rotary_dim/2)
#define FA_APPEND_Q_CAUSAL (1u << 19)     // q row i at position base + i; else every q row at base
#define FA_APPEND_KV (1u << 20)          // knew/vnew bound: write them into the cache

struct fa_append_params {
    fa_long q_batch_stride, q_row_stride, q_head_stride;
    fa_long k_batch_stride, k_row_stride, k_head_stride;   // cache (paged: page stride)
    fa_long v_batch_stride, v_row_stride, v_head_stride;
    fa_long kn_batch_stride, kn_row_stride, kn_head_stride;
    fa_long vn_batch_stride, vn_row_stride, vn_head_stride;
    fa_long block_table_batch_stride;
    fa_long cache_batch_count;        // dense cache rows (bounds for cache_batch_idx)
    fa_long num_blocks;               // paged: pages in the cache
    fa_int batch, seqlen_q, seqlen_new, seqlen_k;  // seqlen_k: dense cache capacity (rows per batch row)
    fa_int nheads_q, nheads_kv, headdim;
    fa_int rotary_dim, seqlen_ro;     // rotary_dim 0 = no rotary
    fa_int page_block_size, max_blocks_per_seq;
    fa_uint flags;                    // FA_APPEND_* plus FA_FLAG_SEQUSED_K / LEFTPAD_K / CACHE_BATCH_IDX / PAGED
};

#endif  // FA_KERNEL_PARAMS_H
