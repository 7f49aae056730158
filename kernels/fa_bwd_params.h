// fa_bwd_params.h - constants, buffer indices and tile table of the backward kernels (fa_bwd.h), shared with the
// dispatch plan (csrc/plan/fa_plan_backward.cpp). Valid MSL and C++, same layout rules as fa_kernel_params.h: fixed-
// width scalars only, every 8-byte field before every 4-byte field, size a multiple of 8.
#ifndef FA_BWD_PARAMS_H
#define FA_BWD_PARAMS_H

#include "fa_kernel_params.h"
#include "fa_tiles.h"

// Buffer indices of the three backward kernels: FA_BWD_BUF_* (fa_kernel_args.h).

// LSE2 of a row that sees no key: so large that exp2(score - it) is never evaluated (tested explicitly, fast math).
#define FA_BWD_DEAD_LSE2 3.40282346638528859812e+38f  // FLT_MAX: above any live row's LSE (1e30 was not, for huge logits)

// Rows whose |LSE2| exceeds this (|LSE| > 64: large logits) get their softmax recomputed by the dQ kernel from the
// kernels' own scores (fa_bwd.h, fa_bwd_ref). Above it, the fp32 LSE's unit (|LSE| · 2^-24) and the difference between
// the forward's rounding of the scores (scale folded into Q) and the backward's give fp32 probabilities errors larger
// than the float32 reference's own (measured: softmax_scale 30 and 100 with unit q, |LSE| up to 900 and 3000; the
// CPU backward's threshold, 1024, is too high for this kernel). Ordinary attention (|LSE| of a few tens) never pays
// the extra pass.
#define FA_BWD_REFINE_LSE2 92.332481f  // 64 * log2(e)
// Slot 0 of a row the dQ kernel refined (it refines every live row of a threadgroup that holds one above the
// threshold): read by the dK/dV kernel, which runs after it, as "refined" (fa_bwd_refine_row); never a live LSE2.
#define FA_BWD_REFINED_LSE2 (-3.40282346638528859812e+38f)
#define FA_BWD_LSE2_SLOTS 5

// Flags: FA_FLAG_ALIBI, FA_FLAG_VARLEN_Q, FA_FLAG_VARLEN_K, FA_FLAG_SEQUSED_K, FA_FLAG_DROPOUT (fa_kernel_params.h).
struct fa_bwd_params {
    // ---- 8-byte fields ----
    fa_long q_batch_stride, q_row_stride, q_head_stride;  // elements; batch strides unused in the varlen layout
    fa_long k_batch_stride, k_row_stride, k_head_stride;
    fa_long v_batch_stride, v_row_stride, v_head_stride;
    fa_long o_batch_stride, o_row_stride, o_head_stride;
    fa_long do_batch_stride, do_row_stride, do_head_stride;
    fa_long dq_batch_stride, dq_row_stride, dq_head_stride;
    fa_long dk_batch_stride, dk_row_stride, dk_head_stride;
    fa_long dv_batch_stride, dv_row_stride, dv_head_stride;
    fa_long lse_batch_stride, lse_head_stride, lse_row_stride;  // fp32 elements; varlen: row = cu_seqlens_q[b] + i
    fa_long alibi_batch_stride;
    fa_long q_rows;  // rows of one head in the DELTA / LSE2 scratch: total_q (varlen) or batch * seqlen_q
    fa_ulong dropout_seed, dropout_offset;
    // ---- 4-byte fields ----
    fa_int batch, seqlen_q, seqlen_k;  // varlen: maxima (grid sizes only)
    fa_int nheads_q, nheads_kv, group;
    fa_int headdim;                    // real head dim <= the kernel's BD
    fa_int window_left, window_right;  // -1 = unbounded; causal = window_right 0 (bottom-right aligned)
    float softmax_scale;
    float softcap;                     // 0 = off
    float softcap_inv;
    float dropout_scale;               // 1 / (1 - p), the forward's value
    fa_uint dropout_threshold;         // floor(p * 2^32) clamped
    fa_uint flags;
    // *_long kernels (BLOCKED, long sequences; fa_bwd.h): accumulation blocks of key tiles (dQ kernel) and of query
    // blocks (dK/dV kernel); 0 in the other kernels.
    fa_int acc_block_k, acc_block_q;
    fa_int pad0;
};

// ---- tile table of the backward (see fa_tiles.h for the forward's and where its numbers come from) ----
// Preprocess: 4 simdgroups, 4 lanes per query row -> 32 rows per threadgroup.
#define FA_BWD_PRE_THREADS 128
#define FA_BWD_PRE_ROWS 32
// dK/dV kernel: 4 simdgroups x 8 keys = 32 keys per threadgroup, K/V/dK/dV of its 8 keys in each simdgroup's
// registers; Q and dO of a query block staged in threadgroup memory, the block as tall as fits (32, 16 or 8 rows).
#define FA_BWD_KV_SIMDGROUPS 4
#define FA_BWD_KV_BK (8 * FA_BWD_KV_SIMDGROUPS)
constexpr int fa_bwd_qdo_bytes(int bq, int bd, int elem_bytes) { return 2 * bq * fa_tile_ld(bd) * elem_bytes + 2 * bq * 4; }
constexpr int fa_bwd_kv_bq(int bd, int elem_bytes) {
    return fa_bwd_qdo_bytes(32, bd, elem_bytes) <= FA_TG_MEMORY_LIMIT   ? 32
           : fa_bwd_qdo_bytes(16, bd, elem_bytes) <= FA_TG_MEMORY_LIMIT ? 16
                                                                         : 8;
}
// dQ kernel: the forward's shape - 4 simdgroups x 8 query rows, K/V tiles staged as in the forward.
#define FA_BWD_Q_SIMDGROUPS 4
#define FA_BWD_Q_BQ (8 * FA_BWD_Q_SIMDGROUPS)
constexpr int fa_bwd_q_bk(int bd, int elem_bytes) { return fa_fwd_bk(bd, elem_bytes); }

#endif  // FA_BWD_PARAMS_H
