// fa_plan_constants.h - filling the kernel constant blocks (kernels/fa_kernel_params.h, fa_bwd_params.h) from
// fa_params. The blocks keep flat, MSL-compatible fields (q_batch_stride, q_row_stride, ...), so these helpers are
// templates over the block: one place copies the fields every attention block shares (forward and backward), each
// plan file then sets only what is its own.
#pragma once

#include <cmath>
#include <cstdint>

#include "fa_plan.h"

namespace faplan {

// The three strides (elements) of one tensor view into a block's batch / row / head stride fields.
template <typename Long>
void set_strides(const fa_tensor &t, Long &batch_stride, Long &row_stride, Long &head_stride) {
    batch_stride = t.batch_stride;
    row_stride = t.row_stride;
    head_stride = t.head_stride;
}

// Strides of q and the k/v (cache) views: every attention and append block has them under the same names.
template <typename Block>
void set_qkv_strides(Block &k, const fa_params *p) {
    set_strides(p->q, k.q_batch_stride, k.q_row_stride, k.q_head_stride);
    set_strides(p->k, k.k_batch_stride, k.k_row_stride, k.k_head_stride);
    set_strides(p->v, k.v_batch_stride, k.v_row_stride, k.v_head_stride);
}

// The LSE (fp32) strides into a block with lse_batch/head/row_stride (attention, merge, backward).
template <typename Block>
void set_lse_strides(Block &k, const fa_params *p) {
    k.lse_batch_stride = p->lse_batch_stride;
    k.lse_head_stride = p->lse_head_stride;
    k.lse_row_stride = p->lse_row_stride;
}

// Dropout keep threshold: keep iff the Philox word >= floor(p * 2^32), clamped to 32 bits.
inline uint32_t dropout_threshold(float dropout_p) {
    const double t = std::floor(double(dropout_p) * 4294967296.0);
    return t >= 4294967295.0 ? 0xffffffffu : uint32_t(t);
}

// Fields the forward (fa_fwd_params) and backward (fa_bwd_params) attention blocks share with the same meaning:
// q/k/v/out/LSE/alibi strides, shapes, window and dropout. The caller zeroes the block first and sets the rest.
template <typename Block>
void set_attention_common(Block &k, const fa_params *p) {
    set_qkv_strides(k, p);
    set_strides(p->out, k.o_batch_stride, k.o_row_stride, k.o_head_stride);
    set_lse_strides(k, p);
    k.alibi_batch_stride = p->alibi_batch_stride;
    k.dropout_seed = p->dropout_seed;
    k.dropout_offset = p->dropout_offset;
    k.batch = p->batch;
    k.seqlen_q = p->seqlen_q;
    k.seqlen_k = p->seqlen_k;
    k.nheads_q = p->nheads_q;
    k.nheads_kv = p->nheads_kv;
    k.group = p->nheads_q / p->nheads_kv;
    k.headdim = p->headdim;
    k.window_left = p->window_left;
    k.window_right = p->window_right;
    if (p->dropout_p > 0.0f) {
        k.dropout_threshold = dropout_threshold(p->dropout_p);
        k.dropout_scale = 1.0f / (1.0f - p->dropout_p);  // the backward reuses the forward's value, bit for bit
    }
}

}  // namespace faplan
