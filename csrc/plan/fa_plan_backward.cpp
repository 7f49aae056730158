// fa_plan_backward.cpp - the backward plan (owned by the backward component; kernels in kernels/fa_bwd.h).
//
// Launch 1: fa_bwd_pre_<t>, grid (ceil(seqlen_q / 32), nheads_q, batch): D = rowsum(dO * O) into SCRATCH0 and the
//           LSE in base-2 units into SCRATCH1 (fp32, [nheads_q][q rows] each).
// Launch 2: fa_bwd_dq_<t>_d<BD>, grid (ceil(seqlen_q / 32), nheads_q, batch): dQ. Rows with large logits (|LSE| > 64)
//           first get their softmax recomputed from the kernel's own scores: a reference score and log2 of the row sum
//           into SCRATCH1's slots 1-4, and D taken from those probabilities into SCRATCH0 (fa_bwd.h).
// Launch 3: fa_bwd_dkdv_<t>_d<BD>, grid (ceil(seqlen_k / 32), nheads_kv, batch): dK, dV (one writer per row).
// Launches run in order, so 2 sees the scratch written by 1, and 3 that written by 1 and 2. No atomics anywhere:
// deterministic by design. Long sequences get the blocked-accumulation kernels fa_bwd_dq_long_* / fa_bwd_dkdv_long_*
// (acc_block_units).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fa_bwd_params.h"
#include "fa_plan_constants.h"
#include "fa_plan_internal.h"

namespace {

using faplan::fail;

uint32_t blocks(int64_t n, int64_t per) { return uint32_t((n + per - 1) / per); }

// ---- blocked accumulation (kernels/fa_bwd.h, BLOCKED kernels) ----
// Most fp32 additions one running sum of the plain kernels makes: dQ sums one 8-key product per 8 keys of its rows,
// dK / dV one 8-row product per 8 query rows of every head of the group. 512 as the forward's
// kMaxAccumulatorAddsPerSplit (csrc/plan/fa_plan_forward.cpp: worst case 512 * 2^-24 = 3.1e-5, 8x under the float16
// floor of the tolerance rule): 4096 keys for dQ, 4096 query rows x group for dK / dV. Tests only:
// FLASH_ATTN_CY_TEST_MAX_BWD_ADDS (1 .. 512) lowers it so the simulator runs the blocked kernels in seconds.
constexpr int64_t kMaxBwdAccumulatorAdds = 512;

int64_t max_bwd_accumulator_adds() {
    if (const char *e = std::getenv("FLASH_ATTN_CY_TEST_MAX_BWD_ADDS")) {
        const long v = std::strtol(e, nullptr, 10);
        if (v >= 1 && v <= kMaxBwdAccumulatorAdds) return v;
    }
    return kMaxBwdAccumulatorAdds;
}

// Units (key tiles of the dQ kernel, query blocks of the dK/dV kernel) per accumulation block for a sum over `units`
// units of `adds_per_unit` products each, or 0 when one running sum stays within max_bwd_accumulator_adds() (the
// plain kernel). Blocks of about sqrt(total) products balance the two levels: at the ABI's 2^31 - 1 keys, 16384
// additions per level instead of 2^28 in one sum.
int acc_block_units(int64_t units, int adds_per_unit) {
    const int64_t adds = units * adds_per_unit;
    if (adds <= max_bwd_accumulator_adds()) return 0;
    int64_t r = int64_t(std::sqrt(double(adds)));
    while (r * r < adds) ++r;
    return int(std::max<int64_t>(1, (r + adds_per_unit - 1) / adds_per_unit));
}

int check_backward(const fa_params *p, char *err, size_t errlen) {
    if (!faplan::dtype_tag(p->dtype))
        return fail(err, errlen, FA_ERR_UNSUPPORTED,
                    "dtype: the Metal backward serves float16, bfloat16 and float32 (float64: backend='cpu')");
    if (const int rc = faplan::check_attention_shape(p, err, errlen)) return rc;
    if (p->block_table || p->leftpad_k || p->cache_batch_idx)
        return fail(err, errlen, FA_ERR_UNSUPPORTED,
                    "backward: paged, left-padded or batch-indexed KV caches have no backward");
    if (!faplan::has_tensor(p, p->lse, FA_BUF_LSE)) return fail(err, errlen, FA_ERR_VALUE, "softmax_lse: required for backward");
    return FA_OK;
}

// The constant block every backward kernel reads.
fa_bwd_params backward_constants(const fa_params *p, int64_t q_rows) {
    fa_bwd_params k;
    std::memset(&k, 0, sizeof(k));
    faplan::set_attention_common(k, p);
    faplan::set_strides(p->dout, k.do_batch_stride, k.do_row_stride, k.do_head_stride);
    faplan::set_strides(p->dq, k.dq_batch_stride, k.dq_row_stride, k.dq_head_stride);
    faplan::set_strides(p->dk, k.dk_batch_stride, k.dk_row_stride, k.dk_head_stride);
    faplan::set_strides(p->dv, k.dv_batch_stride, k.dv_row_stride, k.dv_head_stride);
    k.q_rows = q_rows;
    k.softmax_scale = float(p->softmax_scale);
    if (p->softcap > 0.0f) {
        k.softcap = float(p->softcap);
        k.softcap_inv = float(1.0 / p->softcap);
    }
    uint32_t flags = 0;
    if (faplan::has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI)) flags |= FA_FLAG_ALIBI;
    if (p->cu_seqlens_q) flags |= FA_FLAG_VARLEN_Q;
    if (p->cu_seqlens_k) flags |= FA_FLAG_VARLEN_K;
    if (p->seqused_k) flags |= FA_FLAG_SEQUSED_K;
    if (p->dropout_p > 0.0f) flags |= FA_FLAG_DROPOUT;
    k.flags = flags;
    // dQ: the key tiles of a row; dK/dV: query blocks of every head of the group (+1: the first may be partial)
    const int bd = fa_bucket_headdim(p->headdim), eb = faplan::elem_bytes(p->dtype);
    const int q_bk = fa_bwd_q_bk(bd, eb), kv_bq = fa_bwd_kv_bq(bd, eb);
    k.acc_block_k = acc_block_units(blocks(p->seqlen_k, q_bk), q_bk / 8);
    k.acc_block_q = acc_block_units(int64_t(p->nheads_q / p->nheads_kv) * (int64_t(blocks(p->seqlen_q, kv_bq)) + 1),
                                    kv_bq / 8);
    return k;
}

// Byte sizes of the user buffers (executor bounds checks) and of the D / LSE2 scratch.
void set_backward_bytes(const fa_params *p, int eb, int64_t q_rows, fa_plan *out) {
    int64_t *bytes = out->buffer_bytes;
    const fa_buffer_id q_ids[] = {FA_BUF_Q, FA_BUF_OUT, FA_BUF_DOUT, FA_BUF_DQ};
    const fa_tensor *q_side[] = {&p->q, &p->out, &p->dout, &p->dq};
    const fa_buffer_id k_ids[] = {FA_BUF_K, FA_BUF_V, FA_BUF_DK, FA_BUF_DV};
    const fa_tensor *k_side[] = {&p->k, &p->v, &p->dk, &p->dv};
    for (int i = 0; i < 4; ++i) {
        bytes[q_ids[i]] = faplan::q_side_bytes(p, *q_side[i], eb);
        bytes[k_ids[i]] = faplan::k_side_bytes(p, *k_side[i], eb);
    }
    bytes[FA_BUF_LSE] = faplan::lse_bytes(p);
    if (faplan::has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI)) bytes[FA_BUF_ALIBI] = faplan::alibi_bytes(p);
    faplan::set_index_buffer_bytes(p, out);
    out->scratch_bytes[0] = int64_t(p->nheads_q) * q_rows * 4;                          // D
    out->scratch_bytes[1] = int64_t(FA_BWD_LSE2_SLOTS) * p->nheads_q * q_rows * 4;  // LSE2 and refined rows
}

}  // namespace

int fa_plan_backward(const fa_params *p, fa_plan *out, char *err, size_t errlen) {
    if (const int rc = check_backward(p, err, errlen)) return rc;
    const int eb = faplan::elem_bytes(p->dtype);
    const int64_t q_rows = p->cu_seqlens_q ? p->total_q : int64_t(p->batch) * p->seqlen_q;
    if (p->batch <= 0 || p->seqlen_q <= 0 || q_rows <= 0 || p->seqlen_k < 0) return FA_OK;  // nothing to compute

    set_backward_bytes(p, eb, q_rows, out);
    const fa_bwd_params k = backward_constants(p, q_rows);
    const int bd = fa_bucket_headdim(p->headdim);
    const uint32_t heads_q = uint32_t(p->nheads_q), heads_kv = uint32_t(p->nheads_kv), batch = uint32_t(p->batch);
    const int q_bk = fa_bwd_q_bk(bd, eb), kv_bq = fa_bwd_kv_bq(bd, eb);
    const faplan::LaunchSpec launches[] = {
        // 1: preprocess (D and LSE2)
        {faplan::kernel_desc(FA_KERNEL_BWD_PRE, p->dtype), {blocks(p->seqlen_q, FA_BWD_PRE_ROWS), heads_q, batch},
         FA_BWD_PRE_THREADS, 0, fa_tile{FA_BWD_PRE_ROWS, 0, FA_BWD_PRE_THREADS / FA_SIMD_WIDTH}, 0},
        // 2: dQ (32-row query blocks against staged K/V tiles)
        {faplan::kernel_desc(k.acc_block_k ? FA_KERNEL_BWD_DQ_LONG : FA_KERNEL_BWD_DQ, p->dtype, bd),
         {blocks(p->seqlen_q, FA_BWD_Q_BQ), heads_q, batch},
         FA_BWD_Q_SIMDGROUPS * FA_SIMD_WIDTH, uint32_t(fa_kv_tile_bytes(q_bk, bd, eb)),
         fa_tile{FA_BWD_Q_BQ, q_bk, FA_BWD_Q_SIMDGROUPS}, 0},
        // 3: dK, dV (32-key blocks against staged Q/dO blocks)
        {faplan::kernel_desc(k.acc_block_q ? FA_KERNEL_BWD_DKDV_LONG : FA_KERNEL_BWD_DKDV, p->dtype, bd),
         {blocks(p->seqlen_k, FA_BWD_KV_BK), heads_kv, batch},
         FA_BWD_KV_SIMDGROUPS * FA_SIMD_WIDTH, uint32_t(fa_bwd_qdo_bytes(kv_bq, bd, eb)),
         fa_tile{kv_bq, FA_BWD_KV_BK, FA_BWD_KV_SIMDGROUPS}, 0},
    };
    for (const faplan::LaunchSpec &s : launches)
        if (const int rc = faplan::add_launch(out, s, k, err, errlen)) return rc;
    return FA_OK;
}
