// fa_plan.cpp - fa_plan_build: dispatch by plan kind, plus the small helpers the plan files share (the launch
// builder and the kernel families are in fa_plan_launch.cpp).
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "fa_plan_internal.h"

namespace faplan {

int elem_bytes(fa_dtype t) {
    switch (t) {
        case FA_F32: return 4;
        case FA_F16: return 2;
        case FA_BF16: return 2;
        default: return 0;
    }
}

const char *dtype_tag(fa_dtype t) {
    switch (t) {
        case FA_F32: return "f32";
        case FA_F16: return "f16";
        case FA_BF16: return "bf16";
        default: return nullptr;
    }
}

int64_t view_extent(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t d) {
    if (n0 <= 0 || n1 <= 0 || n2 <= 0 || d <= 0) return 0;
    return (n0 - 1) * s0 + (n1 - 1) * s1 + (n2 - 1) * s2 + d;
}

bool has_tensor(const fa_params *p, const void *host_ptr, fa_buffer_id slot) {
    return host_ptr != nullptr || (p->device_buffers != nullptr && p->device_buffers->handle[slot] != nullptr);
}

// A [batch, rows, heads, d] view, or the packed [total, heads, d] one when `packed`.
static int64_t tensor_bytes(const fa_tensor &t, bool packed, int64_t batch, int64_t rows, int64_t total, int heads,
                            int d, int eb) {
    return (packed ? view_extent(1, 0, total, t.row_stride, heads, t.head_stride, d)
                   : view_extent(batch, t.batch_stride, rows, t.row_stride, heads, t.head_stride, d)) * eb;
}

int64_t q_side_bytes(const fa_params *p, const fa_tensor &t, int eb) {
    return tensor_bytes(t, p->cu_seqlens_q != nullptr, p->batch, p->seqlen_q, p->total_q, p->nheads_q, p->headdim, eb);
}

int64_t k_side_bytes(const fa_params *p, const fa_tensor &t, int eb) {
    return tensor_bytes(t, p->cu_seqlens_k != nullptr, p->batch, p->seqlen_k, p->total_k, p->nheads_kv, p->headdim,
                        eb);
}

int64_t lse_bytes(const fa_params *p) {  // [batch, heads, rows] fp32, or [heads, total_q] for varlen
    if (p->cu_seqlens_q)
        return view_extent(1, 0, p->nheads_q, p->lse_head_stride, p->total_q, p->lse_row_stride, 1) * 4;
    return view_extent(p->batch, p->lse_batch_stride, p->nheads_q, p->lse_head_stride, p->seqlen_q,
                       p->lse_row_stride, 1) * 4;
}

int64_t alibi_bytes(const fa_params *p) { return (int64_t(p->batch - 1) * p->alibi_batch_stride + p->nheads_q) * 4; }

void set_index_buffer_bytes(const fa_params *p, fa_plan *plan) {
    int64_t *bytes = plan->buffer_bytes;
    if (p->cu_seqlens_q) bytes[FA_BUF_CU_SEQLENS_Q] = int64_t(p->batch + 1) * 4;
    if (p->cu_seqlens_k) bytes[FA_BUF_CU_SEQLENS_K] = int64_t(p->batch + 1) * 4;
    if (p->seqused_k) bytes[FA_BUF_SEQUSED_K] = int64_t(p->batch) * 4;
    if (p->leftpad_k) bytes[FA_BUF_LEFTPAD_K] = int64_t(p->batch) * 4;
    if (p->cache_batch_idx) bytes[FA_BUF_CACHE_BATCH_IDX] = int64_t(p->batch) * 4;
    if (p->block_table)
        bytes[FA_BUF_BLOCK_TABLE] = (int64_t(p->batch - 1) * p->block_table_batch_stride + p->max_blocks_per_seq) * 4;
}

int check_attention_shape(const fa_params *p, char *err, size_t errlen) {
    if (p->headdim < 1 || p->headdim > FA_MAX_HEADDIM)
        return fail(err, errlen, FA_ERR_VALUE, "headdim: expected 1..%d, got %d", FA_MAX_HEADDIM, p->headdim);
    if (p->headdim_v != p->headdim)
        return fail(err, errlen, FA_ERR_UNSUPPORTED, "headdim_v: must equal headdim (%d), got %d", p->headdim,
                    p->headdim_v);
    if (p->nheads_q < 1 || p->nheads_kv < 1 || p->nheads_q % p->nheads_kv != 0)
        return fail(err, errlen, FA_ERR_VALUE, "nheads: nheads_q (%d) must be a positive multiple of nheads_kv (%d)",
                    p->nheads_q, p->nheads_kv);
    if (!(p->dropout_p >= 0.0f && p->dropout_p < 1.0f))
        return fail(err, errlen, FA_ERR_VALUE, "dropout_p: expected 0 <= p < 1, got %g", double(p->dropout_p));
    return FA_OK;
}

int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

}  // namespace faplan

extern "C" int fa_plan_build(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, fa_plan *out,
                             char *err, size_t errlen) {
    if (!p || !out) return faplan::fail(err, errlen, FA_ERR_VALUE, "fa_plan_build: params and plan are required");
    std::memset(out, 0, sizeof(*out));
    out->kind = kind;
    if (err && errlen) err[0] = '\0';
    switch (kind) {
        case FA_PLAN_FORWARD: return fa_plan_forward(p, out, err, errlen);
        case FA_PLAN_BACKWARD: return fa_plan_backward(p, out, err, errlen);
        case FA_PLAN_KVCACHE_APPEND:
            if (!u) return faplan::fail(err, errlen, FA_ERR_VALUE, "fa_plan_build: kvcache append needs the update");
            return fa_plan_kvcache_append(p, u, out, err, errlen);
    }
    return faplan::fail(err, errlen, FA_ERR_VALUE, "fa_plan_build: unknown plan kind %d", int(kind));
}

extern "C" int fa_plan_build_for_device(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                                        fa_plan_launch_fits fits, fa_plan *out, char *err, size_t errlen) {
    int rc = fa_plan_build(kind, p, u, out, err, errlen);
    if (rc != FA_OK || fits == nullptr || kind != FA_PLAN_FORWARD) return rc;
    bool vector_fits = true;
    for (int li = 0; vector_fits && li < out->nlaunches; ++li)
        if (out->launches[li].desc.family == FA_KERNEL_VECTOR) vector_fits = fits(&out->launches[li]) != 0;
    if (vector_fits) return FA_OK;
    // The same call with the decode rows on the fragment kernel (the split-KV merge, if any, is unchanged).
    std::memset(out, 0, sizeof(*out));
    out->kind = kind;
    return fa_plan_forward(p, out, err, errlen, /*allow_vector=*/false);
}
