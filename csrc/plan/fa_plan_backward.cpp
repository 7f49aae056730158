// fa_plan_backward.cpp - the backward plan (owned by the backward component; kernels in kernels/fa_bwd.h).
//
// Launch 1: fa_bwd_pre_<t>, grid (ceil(seqlen_q / 32), nheads_q, batch): D = rowsum(dO * O) into SCRATCH0 and the
//           LSE in base-2 units into SCRATCH1 (fp32, [nheads_q][q rows] each).
// Launch 2: fa_bwd_dq_<t>_d<BD>, grid (ceil(seqlen_q / 32), nheads_q, batch): dQ. Rows with large logits (|LSE| > 64)
//           first get their softmax recomputed from the kernel's own scores: a reference score and log2 of the row sum
//           into SCRATCH1's slots 1-3, and D taken from those probabilities into SCRATCH0 (fa_bwd.h).
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
using faplan::view_extent;

struct Binding {
    int index;
    fa_buffer_id buffer;
};

// Binds each buffer the call provides (bytes > 0), then the plan's dummy on the kernel's other indices (Metal's
// validation and the simulator want every [[buffer(n)]] bound; the kernels never read one whose flag is clear).
void bind_all(fa_plan *plan, fa_launch *l, const Binding *bindings, int count) {
    const int64_t *bytes = plan->buffer_bytes;
    int indices[FA_PLAN_MAX_BINDINGS];
    for (int i = 0; i < count; ++i) {
        const bool scratch = bindings[i].buffer >= FA_BUF_SCRATCH0;
        if (scratch || bytes[bindings[i].buffer] > 0) faplan::launch_bind(l, bindings[i].index, bindings[i].buffer);
        indices[i] = bindings[i].index;
    }
    faplan::launch_bind_unused(plan, l, indices, count);
}

// Appends one backward launch: every kernel of the backward reads the same constant block.
void add_launch(fa_plan *plan, const char *name, const uint32_t grid[3], uint32_t threads_x, uint32_t tg_bytes,
                const Binding *bindings, int count, const fa_bwd_params &k) {
    const uint32_t threads[3] = {threads_x, 1, 1};
    fa_launch *l = &plan->launches[plan->nlaunches++];
    faplan::launch_init(l, name, grid, threads, tg_bytes);
    bind_all(plan, l, bindings, count);
    faplan::launch_constants(l, FA_BWD_BUF_PARAMS, &k, sizeof(k));
}

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

}  // namespace

int fa_plan_backward(const fa_params *p, fa_plan *out, char *err, size_t errlen) {
    const char *tag = faplan::dtype_tag(p->dtype);
    const int eb = faplan::elem_bytes(p->dtype);
    if (!tag)
        return fail(err, errlen, FA_ERR_UNSUPPORTED,
                    "dtype: the Metal backward serves float16, bfloat16 and float32 (float64: backend='cpu')");
    if (const int rc = faplan::check_attention_shape(p, err, errlen)) return rc;
    if (p->block_table || p->leftpad_k || p->cache_batch_idx)
        return fail(err, errlen, FA_ERR_UNSUPPORTED,
                    "backward: paged, left-padded or batch-indexed KV caches have no backward");
    if (!faplan::has_tensor(p, p->lse, FA_BUF_LSE)) return fail(err, errlen, FA_ERR_VALUE, "softmax_lse: required for backward");

    const bool varlen_q = p->cu_seqlens_q != nullptr;
    const bool varlen_k = p->cu_seqlens_k != nullptr;
    const int64_t q_rows = varlen_q ? p->total_q : int64_t(p->batch) * p->seqlen_q;
    if (p->batch <= 0 || p->seqlen_q <= 0 || q_rows <= 0 || p->seqlen_k < 0) return FA_OK;  // nothing to compute

    const int bd = fa_bucket_headdim(p->headdim);
    const int kv_bq = fa_bwd_kv_bq(bd, eb);
    const int q_bk = fa_bwd_q_bk(bd, eb);
    const uint32_t gq = blocks(p->seqlen_q, FA_BWD_Q_BQ);
    const uint32_t gk = blocks(p->seqlen_k, FA_BWD_KV_BK);

    // ---- constants ----
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
    if (varlen_q) flags |= FA_FLAG_VARLEN_Q;
    if (varlen_k) flags |= FA_FLAG_VARLEN_K;
    if (p->seqused_k) flags |= FA_FLAG_SEQUSED_K;
    if (p->dropout_p > 0.0f) flags |= FA_FLAG_DROPOUT;
    k.flags = flags;
    // dQ: the key tiles of a row; dK/dV: query blocks of every head of the group (+1: the first may be partial)
    k.acc_block_k = acc_block_units(blocks(p->seqlen_k, q_bk), q_bk / 8);
    k.acc_block_q = acc_block_units(int64_t(p->nheads_q / p->nheads_kv) * (int64_t(blocks(p->seqlen_q, kv_bq)) + 1),
                                    kv_bq / 8);

    // ---- byte sizes of the user buffers (executor bounds checks) ----
    const int d = p->headdim;
    int64_t *bytes = out->buffer_bytes;
    struct QSide {
        fa_buffer_id id;
        const fa_tensor *t;
    } qside[] = {{FA_BUF_Q, &p->q}, {FA_BUF_OUT, &p->out}, {FA_BUF_DOUT, &p->dout}, {FA_BUF_DQ, &p->dq}};
    for (const QSide &x : qside) {
        bytes[x.id] = varlen_q ? view_extent(1, 0, p->total_q, x.t->row_stride, p->nheads_q, x.t->head_stride, d) * eb
                               : view_extent(p->batch, x.t->batch_stride, p->seqlen_q, x.t->row_stride, p->nheads_q,
                                             x.t->head_stride, d) * eb;
    }
    QSide kside[] = {{FA_BUF_K, &p->k}, {FA_BUF_V, &p->v}, {FA_BUF_DK, &p->dk}, {FA_BUF_DV, &p->dv}};
    for (const QSide &x : kside) {
        bytes[x.id] = varlen_k ? view_extent(1, 0, p->total_k, x.t->row_stride, p->nheads_kv, x.t->head_stride, d) * eb
                               : view_extent(p->batch, x.t->batch_stride, p->seqlen_k, x.t->row_stride, p->nheads_kv,
                                             x.t->head_stride, d) * eb;
    }
    bytes[FA_BUF_LSE] = varlen_q
                            ? view_extent(1, 0, p->nheads_q, p->lse_head_stride, p->total_q, p->lse_row_stride, 1) * 4
                            : view_extent(p->batch, p->lse_batch_stride, p->nheads_q, p->lse_head_stride, p->seqlen_q,
                                          p->lse_row_stride, 1) * 4;
    if (faplan::has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI)) bytes[FA_BUF_ALIBI] = (int64_t(p->batch - 1) * p->alibi_batch_stride + p->nheads_q) * 4;
    if (varlen_q) bytes[FA_BUF_CU_SEQLENS_Q] = int64_t(p->batch + 1) * 4;
    if (varlen_k) bytes[FA_BUF_CU_SEQLENS_K] = int64_t(p->batch + 1) * 4;
    if (p->seqused_k) bytes[FA_BUF_SEQUSED_K] = int64_t(p->batch) * 4;
    out->scratch_bytes[0] = int64_t(p->nheads_q) * q_rows * 4;  // D
    out->scratch_bytes[1] = int64_t(FA_BWD_LSE2_SLOTS) * p->nheads_q * q_rows * 4;  // LSE2 and refined rows

    const Binding common[] = {
        {FA_BWD_BUF_ALIBI, FA_BUF_ALIBI},
        {FA_BWD_BUF_CU_SEQLENS_Q, FA_BUF_CU_SEQLENS_Q},
        {FA_BWD_BUF_CU_SEQLENS_K, FA_BUF_CU_SEQLENS_K},
        {FA_BWD_BUF_SEQUSED_K, FA_BUF_SEQUSED_K},
        {FA_BWD_BUF_DELTA, FA_BUF_SCRATCH0},
        {FA_BWD_BUF_LSE2, FA_BUF_SCRATCH1},
    };
    char name[FA_PLAN_KERNEL_NAME_LEN];

    // ---- launch 1: preprocess ----
    {
        std::snprintf(name, sizeof(name), "fa_bwd_pre_%s", tag);
        const uint32_t grid[3] = {blocks(p->seqlen_q, FA_BWD_PRE_ROWS), uint32_t(p->nheads_q), uint32_t(p->batch)};
        const Binding b[] = {{FA_BWD_BUF_OUT, FA_BUF_OUT}, {FA_BWD_BUF_DOUT, FA_BUF_DOUT}, {FA_BWD_BUF_LSE, FA_BUF_LSE},
                             common[1], common[2], common[3], common[4], common[5]};
        add_launch(out, name, grid, FA_BWD_PRE_THREADS, 0, b, int(sizeof(b) / sizeof(b[0])), k);
    }
    // ---- launch 2: dQ ----
    {
        std::snprintf(name, sizeof(name), "fa_bwd_dq_%s%s_d%d", k.acc_block_k ? "long_" : "", tag, bd);
        const uint32_t grid[3] = {gq, uint32_t(p->nheads_q), uint32_t(p->batch)};
        const Binding b[] = {{FA_BWD_BUF_Q, FA_BUF_Q},       {FA_BWD_BUF_K, FA_BUF_K}, {FA_BWD_BUF_V, FA_BUF_V},
                             {FA_BWD_BUF_DOUT, FA_BUF_DOUT}, {FA_BWD_BUF_DQ, FA_BUF_DQ},
                             common[0], common[1], common[2], common[3], common[4], common[5]};
        add_launch(out, name, grid, FA_BWD_Q_SIMDGROUPS * FA_SIMD_WIDTH, uint32_t(fa_kv_tile_bytes(q_bk, bd, eb)), b,
                   int(sizeof(b) / sizeof(b[0])), k);
    }
    // ---- launch 3: dK, dV ----
    {
        std::snprintf(name, sizeof(name), "fa_bwd_dkdv_%s%s_d%d", k.acc_block_q ? "long_" : "", tag, bd);
        const uint32_t grid[3] = {gk, uint32_t(p->nheads_kv), uint32_t(p->batch)};
        const Binding b[] = {{FA_BWD_BUF_Q, FA_BUF_Q},   {FA_BWD_BUF_K, FA_BUF_K},   {FA_BWD_BUF_V, FA_BUF_V},
                             {FA_BWD_BUF_DOUT, FA_BUF_DOUT}, {FA_BWD_BUF_DK, FA_BUF_DK}, {FA_BWD_BUF_DV, FA_BUF_DV},
                             common[0], common[1], common[2], common[3], common[4], common[5]};
        add_launch(out, name, grid, FA_BWD_KV_SIMDGROUPS * FA_SIMD_WIDTH, uint32_t(fa_bwd_qdo_bytes(kv_bq, bd, eb)), b,
                   int(sizeof(b) / sizeof(b[0])), k);
    }
    return FA_OK;
}
