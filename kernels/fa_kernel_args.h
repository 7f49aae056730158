// fa_kernel_args.h - THE buffer argument table of the kernels: which [[buffer(n)]] index holds what, per kernel.
//
// Two tables, X-macros so that every reader expands the same list (valid MSL and C++; no includes):
// - Index spaces, FA_<SPACE>_ARG_INDICES(X) with X(ARG, index): the [[buffer(n)]] numbering shared by the kernels of
//   one space. They define the constants FA_<SPACE>_BUF_<ARG> (e.g. FA_FWD_BUF_LSE = 4) that the plan binds at.
// - Signatures, FA_<KERNEL>_SIGNATURE(Y) with Y(ARG, param, BUFFER): the buffer arguments one kernel entry point
//   declares: `param [[buffer(FA_<SPACE>_BUF_<ARG>)]]` in its MSL source, bound by the dispatch plan to its logical
//   buffer FA_BUF_<BUFFER> (csrc/plan/fa_buffers.h) when the call has one, to the plan's placeholder otherwise.
//   The last column is read only by the plan; the kernels never expand it.
// Every kernel also takes its constant block (fa_kernel_params.h, fa_bwd_params.h) at FA_KERNEL_PARAMS_INDEX.
//
// The MSL sources write the indices as numbers (the simulator's translator reads [[buffer(n)]] literally), so they
// are checked against this table, not generated from it: tests/core/test_kernel_args.py parses every kernel's parameter
// list and requires (param, index) to be exactly its signature here. To add an argument: a row in the index space,
// a row in each signature that declares it, the parameter in the kernels; a new logical buffer goes into
// csrc/plan/fa_buffers.h.
#ifndef FA_KERNEL_ARGS_H
#define FA_KERNEL_ARGS_H

#define FA_KERNEL_PARAMS_INDEX 15  // constant block (setBytes); every index below it may be a buffer argument
#define FA_KERNEL_ARG_SLOTS 16     // indices 0 .. FA_KERNEL_PARAMS_INDEX

// ---- attention (forward, decode, probabilities) ----
#define FA_FWD_ARG_INDICES(X)                                                                                      \
    X(Q, 0) X(K, 1) X(V, 2) X(OUT, 3) X(LSE, 4) X(ALIBI, 5) X(CU_SEQLENS_Q, 6) X(CU_SEQLENS_K, 7) X(SEQUSED_K, 8) \
    X(LEFTPAD_K, 9) X(CACHE_BATCH_IDX, 10) X(BLOCK_TABLE, 11)                                                     \
    X(O_PARTIAL, 12)   /* split-KV: fp32 partial O of every split */                                            \
    X(LSE_PARTIAL, 13) /* split-KV: fp32 partial LSE of every split */                                          \
    X(ATTN_PROBS, 14)  /* fa_probs_* only: fp32 probabilities */

// fa_attention (fa_fwd_*, fa_dec_*, kernels/fa_forward.h) and fa_decode_vec (fa_vec*, kernels/fa_decode_vec.h).
#define FA_ATTENTION_SIGNATURE(Y)                                                                               \
    Y(Q, q, Q) Y(K, k, K) Y(V, v, V) Y(OUT, out, OUT) Y(LSE, lse, LSE) Y(ALIBI, alibi, ALIBI)                   \
    Y(CU_SEQLENS_Q, cu_seqlens_q, CU_SEQLENS_Q) Y(CU_SEQLENS_K, cu_seqlens_k, CU_SEQLENS_K)                     \
    Y(SEQUSED_K, seqused_k, SEQUSED_K) Y(LEFTPAD_K, leftpad_k, LEFTPAD_K)                                       \
    Y(CACHE_BATCH_IDX, cache_batch_idx, CACHE_BATCH_IDX) Y(BLOCK_TABLE, block_table, BLOCK_TABLE)               \
    Y(O_PARTIAL, o_partial, SCRATCH0) Y(LSE_PARTIAL, lse_partial, SCRATCH1)

// fa_attn_probs (fa_probs_*, kernels/fa_probs.h): recomputes the scores, writes the probabilities.
#define FA_PROBS_SIGNATURE(Y)                                                                                   \
    Y(Q, q, Q) Y(K, k, K) Y(ALIBI, alibi, ALIBI) Y(CU_SEQLENS_Q, cu_seqlens_q, CU_SEQLENS_Q)                    \
    Y(CU_SEQLENS_K, cu_seqlens_k, CU_SEQLENS_K) Y(SEQUSED_K, seqused_k, SEQUSED_K)                              \
    Y(LEFTPAD_K, leftpad_k, LEFTPAD_K) Y(CACHE_BATCH_IDX, cache_batch_idx, CACHE_BATCH_IDX)                     \
    Y(BLOCK_TABLE, block_table, BLOCK_TABLE) Y(ATTN_PROBS, probs, ATTN_PROBS)

// ---- merge of split-KV partials (fa_merge_splits, fa_merge_*, kernels/fa_merge.h) ----
#define FA_MERGE_ARG_INDICES(X) X(O_PARTIAL, 0) X(LSE_PARTIAL, 1) X(OUT, 2) X(LSE, 3) X(CU_SEQLENS_Q, 4)

#define FA_MERGE_SIGNATURE(Y)                                                                                   \
    Y(O_PARTIAL, o_partial, SCRATCH0) Y(LSE_PARTIAL, lse_partial, SCRATCH1) Y(OUT, out, OUT) Y(LSE, lse, LSE)   \
    Y(CU_SEQLENS_Q, cu_seqlens_q, CU_SEQLENS_Q)

// ---- KV-cache append + rotary (fa_kvcache_append, fa_kvcache_append_*, kernels/fa_kvcache_append.h) ----
#define FA_APPEND_ARG_INDICES(X)                                                                                \
    X(Q, 0) X(KCACHE, 1) X(VCACHE, 2) X(KNEW, 3) X(VNEW, 4) X(COS, 5) X(SIN, 6) X(SEQUSED_K, 7) X(LEFTPAD_K, 8)  \
    X(CACHE_BATCH_IDX, 9) X(BLOCK_TABLE, 10)

#define FA_APPEND_SIGNATURE(Y)                                                                                  \
    Y(Q, q, Q) Y(KCACHE, k_cache, K) Y(VCACHE, v_cache, V) Y(KNEW, k_new, KNEW) Y(VNEW, v_new, VNEW)            \
    Y(COS, rotary_cos, ROTARY_COS) Y(SIN, rotary_sin, ROTARY_SIN) Y(SEQUSED_K, seqused_k, SEQUSED_K)            \
    Y(LEFTPAD_K, leftpad_k, LEFTPAD_K) Y(CACHE_BATCH_IDX, cache_batch_idx, CACHE_BATCH_IDX)                     \
    Y(BLOCK_TABLE, block_table, BLOCK_TABLE)

// ---- backward (fa_bwd_preprocess, fa_bwd_dq, fa_bwd_dkdv; kernels/fa_bwd.h) ----
#define FA_BWD_ARG_INDICES(X)                                                                                   \
    X(Q, 0) X(K, 1) X(V, 2) X(OUT, 3) X(DOUT, 4) X(LSE, 5) X(ALIBI, 6) X(CU_SEQLENS_Q, 7) X(CU_SEQLENS_K, 8)     \
    X(SEQUSED_K, 9) X(DQ, 10) X(DK, 11) X(DV, 12)                                                               \
    X(DELTA, 13) /* scratch: D = rowsum(dO * O), fp32 [nheads_q][q_rows] */                                     \
    X(LSE2, 14)  /* scratch: fp32 [FA_BWD_LSE2_SLOTS][nheads_q][q_rows]: slot 0 the LSE in base-2 units (dead rows \
                    FA_BWD_DEAD_LSE2), slots 1-4 a refined row's reference (fa_bwd.h) */

#define FA_BWD_COMMON_SIGNATURE(Y)                                                                              \
    Y(CU_SEQLENS_Q, cu_seqlens_q, CU_SEQLENS_Q) Y(CU_SEQLENS_K, cu_seqlens_k, CU_SEQLENS_K)                     \
    Y(SEQUSED_K, seqused_k, SEQUSED_K) Y(DELTA, delta, SCRATCH0) Y(LSE2, lse2, SCRATCH1)
#define FA_BWD_PRE_SIGNATURE(Y) \
    Y(OUT, out, OUT) Y(DOUT, dout, DOUT) Y(LSE, lse, LSE) FA_BWD_COMMON_SIGNATURE(Y)
#define FA_BWD_DQ_SIGNATURE(Y)                                                                                  \
    Y(Q, q, Q) Y(K, k, K) Y(V, v, V) Y(DOUT, dout, DOUT) Y(ALIBI, alibi, ALIBI) Y(DQ, dq, DQ)                   \
    FA_BWD_COMMON_SIGNATURE(Y)
#define FA_BWD_DKDV_SIGNATURE(Y)                                                                                \
    Y(Q, q, Q) Y(K, k, K) Y(V, v, V) Y(DOUT, dout, DOUT) Y(ALIBI, alibi, ALIBI) Y(DK, dk, DK) Y(DV, dv, DV)     \
    FA_BWD_COMMON_SIGNATURE(Y)

// ---- the index constants, FA_<SPACE>_BUF_<ARG> ----
#define FA_FWD_ARG_INDEX_(ARG, index) FA_FWD_BUF_##ARG = index,
#define FA_MERGE_ARG_INDEX_(ARG, index) FA_MERGE_BUF_##ARG = index,
#define FA_APPEND_ARG_INDEX_(ARG, index) FA_APPEND_BUF_##ARG = index,
#define FA_BWD_ARG_INDEX_(ARG, index) FA_BWD_BUF_##ARG = index,
enum fa_fwd_arg_index { FA_FWD_ARG_INDICES(FA_FWD_ARG_INDEX_) FA_FWD_BUF_PARAMS = FA_KERNEL_PARAMS_INDEX };
enum fa_merge_arg_index { FA_MERGE_ARG_INDICES(FA_MERGE_ARG_INDEX_) FA_MERGE_BUF_PARAMS = FA_KERNEL_PARAMS_INDEX };
enum fa_append_arg_index { FA_APPEND_ARG_INDICES(FA_APPEND_ARG_INDEX_) FA_APPEND_BUF_PARAMS = FA_KERNEL_PARAMS_INDEX };
enum fa_bwd_arg_index { FA_BWD_ARG_INDICES(FA_BWD_ARG_INDEX_) FA_BWD_BUF_PARAMS = FA_KERNEL_PARAMS_INDEX };
#undef FA_FWD_ARG_INDEX_
#undef FA_MERGE_ARG_INDEX_
#undef FA_APPEND_ARG_INDEX_
#undef FA_BWD_ARG_INDEX_

#endif  // FA_KERNEL_ARGS_H
