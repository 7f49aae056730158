// fa_check.cpp - structural validation of fa_params shared by every backend (fa_check_params in fa_abi.h).
//
// Python validates first and gives the friendliest messages; this is the second line of defence so that no backend
// indexes out of bounds even when the ABI is called directly. Messages name arguments as the Python API spells them
// (q, k, v, cu_seqlens_q, cache_seqlens, block_table, ...). All index arithmetic is 64-bit and overflow-checked.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fa_abi.h"
#include "fa_check_internal.h"

namespace fa_check {

// Largest element offset reachable by the view (0 if any extent is 0), or -1 on overflow.
int64_t max_offset(const Axis *axes, int n) {
    int64_t off = 0;
    for (int i = 0; i < n; ++i) {
        if (axes[i].extent <= 0) return 0;
        int64_t next;
        if (!mul_add(axes[i].extent - 1, axes[i].stride, off, &next)) return -1;
        off = next;
    }
    return off;
}

// True if no two distinct index tuples of the view map to the same element (needed for outputs: two threads must
// never write one address). Sufficient test: sort axes by stride; each stride must step over everything inside it.
bool non_aliasing(const Axis *axes_in, int n) {
    Axis axes[6];
    int m = 0;
    for (int i = 0; i < n; ++i) {
        if (axes_in[i].extent == 0) return true;  // empty view
        if (axes_in[i].extent > 1) axes[m++] = axes_in[i];
    }
    for (int i = 1; i < m; ++i)  // insertion sort by stride (m <= 6)
        for (int j = i; j > 0 && axes[j].stride < axes[j - 1].stride; --j) {
            Axis t = axes[j];
            axes[j] = axes[j - 1];
            axes[j - 1] = t;
        }
    int64_t span = 1;  // elements covered by the inner axes
    for (int i = 0; i < m; ++i) {
        if (axes[i].stride < span) return false;
        int64_t next;
        if (!mul_add(axes[i].extent - 1, axes[i].stride, 1, &next)) return false;
        span = next;
    }
    return true;
}

int check_tensor(const Ctx &c, const char *name, const fa_tensor &t, int slot, bool packed, int64_t n0, int64_t rows,
                 int64_t heads, int64_t dim, bool written) {
    if (!present(c, t.data, slot)) return fail(c.err, c.errlen, FA_ERR_VALUE, "%s: data pointer is NULL", name);
    if ((!packed && t.batch_stride < 0) || t.row_stride < 0 || t.head_stride < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE,
                    "%s: strides must be non-negative (got batch %lld, row %lld, head %lld)", name,
                    (long long)t.batch_stride, (long long)t.row_stride, (long long)t.head_stride);
    Axis axes[4] = {{packed ? 1 : n0, packed ? 0 : t.batch_stride}, {rows, t.row_stride}, {heads, t.head_stride},
                    {dim, 1}};
    int64_t last = max_offset(axes, 4);
    if (last < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "%s: shape and strides overflow 64-bit element offsets", name);
    if (written && !non_aliasing(axes, 4))
        return fail(c.err, c.errlen, FA_ERR_VALUE,
                    "%s: strides make distinct elements overlap; an output must not alias itself", name);
    if (c.dev && !t.data && slot >= 0 && c.dev->handle[slot]) {
        int64_t bytes = kI64Max;  // what the message reports when the size overflows
        if (!mul_add(last, (int64_t)dtype_size(c.p->dtype), (int64_t)dtype_size(c.p->dtype), &bytes) ||
            c.dev->byte_offset[slot] < 0 || bytes > c.dev->byte_length[slot])
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "%s: view needs %lld bytes but its Metal buffer has %lld from offset %lld", name,
                        (long long)bytes, (long long)c.dev->byte_length[slot], (long long)c.dev->byte_offset[slot]);
    }
    return FA_OK;
}

}  // namespace fa_check

namespace {

using namespace fa_check;

// Checks a cu_seqlens array (host memory): starts at 0, non-decreasing, each length <= max_len, last <= total.
int check_cu_seqlens(const Ctx &c, const char *name, const int32_t *cu, int32_t batch, int64_t total,
                     const char *total_name, int32_t max_len, const char *max_name) {
    if (!cu) return FA_OK;  // device-only copy: contents cannot be read on the host
    if (cu[0] != 0) return fail(c.err, c.errlen, FA_ERR_VALUE, "%s[0] must be 0, got %d", name, cu[0]);
    for (int32_t b = 0; b < batch; ++b) {
        int64_t len = (int64_t)cu[b + 1] - cu[b];
        if (len < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "%s must be non-decreasing, but %s[%d]=%d > %s[%d]=%d", name,
                        name, b, cu[b], name, b + 1, cu[b + 1]);
        if (len > max_len)  // max_seqlen is the caller's claim about cu_seqlens: the claim is what is wrong
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "%s: %d is less than the longest sequence in %s (sequence %d has %lld rows)", max_name,
                        max_len, name, b, (long long)len);
    }
    if (total >= 0 && cu[batch] > total)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "%s[-1]=%d exceeds the %lld rows of %s", name, cu[batch],
                    (long long)total, total_name);
    return FA_OK;
}



int check_shapes(const Ctx &c) {
    const fa_params *p = c.p;
    if (p->batch < 1) return fail(c.err, c.errlen, FA_ERR_VALUE, "batch size must be >= 1, got %d", p->batch);
    // varlen: seqlen_q/k are the caller's max_seqlen_q/k; otherwise they come from q's and k's shapes
    if (p->seqlen_q < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "%s must be >= 0, got %d",
                    c.varlen ? "max_seqlen_q" : "q: seqlen_q", p->seqlen_q);
    if (p->seqlen_k < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "%s must be >= 0, got %d",
                    c.varlen ? "max_seqlen_k" : "k: seqlen_k", p->seqlen_k);
    if (p->nheads_q < 1 || p->nheads_kv < 1)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "number of heads must be >= 1 (q: %d, k/v: %d)", p->nheads_q,
                    p->nheads_kv);
    if (p->nheads_q % p->nheads_kv != 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE,
                    "number of heads in q (%d) must be a multiple of the number of heads in k/v (%d)", p->nheads_q,
                    p->nheads_kv);
    if (p->headdim < 1 || p->headdim > FA_MAX_HEADDIM)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "head dimension must be in 1..%d, got %d", FA_MAX_HEADDIM,
                    p->headdim);
    if (p->headdim_v != p->headdim)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "v head dimension (%d) must equal the q/k head dimension (%d)",
                    p->headdim_v, p->headdim);
    if (dtype_size(p->dtype) == 0)
        return fail(c.err, c.errlen, FA_ERR_TYPE, "unknown dtype code %d", (int)p->dtype);
    return FA_OK;
}

int check_numerics(const Ctx &c) {
    const fa_params *p = c.p;
    if (!std::isfinite(p->softmax_scale))
        return fail(c.err, c.errlen, FA_ERR_VALUE, "softmax_scale must be finite, got %g", (double)p->softmax_scale);
    if (p->window_left < -1 || p->window_right < -1)
        return fail(c.err, c.errlen, FA_ERR_VALUE,
                    "window_size values must be -1 (unbounded) or >= 0, got (%d, %d)", p->window_left,
                    p->window_right);
    if (!(p->softcap >= 0.0f) || !std::isfinite(p->softcap))
        return fail(c.err, c.errlen, FA_ERR_VALUE, "softcap must be a finite number >= 0, got %g", (double)p->softcap);
    if (!(p->dropout_p >= 0.0f && p->dropout_p < 1.0f))
        return fail(c.err, c.errlen, FA_ERR_VALUE, "dropout_p must be in [0, 1), got %g", (double)p->dropout_p);
    if (p->alibi_slopes && p->alibi_batch_stride < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "alibi_slopes: batch stride must be >= 0");
    if (p->num_splits < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "num_splits must be >= 0, got %d", p->num_splits);
    if (p->num_threads < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "num_threads must be >= 0, got %d", p->num_threads);
    return FA_OK;
}

// q/out/lse/attn_probs/dout/dq: the query side.
int check_query_side(const Ctx &c, bool backward) {
    const fa_params *p = c.p;
    int64_t rows = c.varlen ? p->total_q : p->seqlen_q;
    if (c.varlen && p->total_q < 0)
        return fail(c.err, c.errlen, FA_ERR_VALUE, "q: total_q must be >= 0, got %lld", (long long)p->total_q);
    int rc;
    if ((rc = check_tensor(c, "q", p->q, FA_BUF_Q, c.varlen, p->batch, rows, p->nheads_q, p->headdim, false)))
        return rc;
    if ((rc = check_tensor(c, "out", p->out, FA_BUF_OUT, c.varlen, p->batch, rows, p->nheads_q, p->headdim, !backward)))
        return rc;
    if (backward) {
        if ((rc = check_tensor(c, "dout", p->dout, FA_BUF_DOUT, c.varlen, p->batch, rows, p->nheads_q, p->headdim,
                               false)))
            return rc;
        if ((rc = check_tensor(c, "dq", p->dq, FA_BUF_DQ, c.varlen, p->batch, rows, p->nheads_q, p->headdim, true)))
            return rc;
        if (!present(c, p->lse, FA_BUF_LSE))
            return fail(c.err, c.errlen, FA_ERR_VALUE, "softmax_lse from the forward pass is required for backward");
    }
    if (p->lse || present(c, nullptr, FA_BUF_LSE)) {
        if (p->lse_batch_stride < 0 || p->lse_head_stride < 0 || p->lse_row_stride < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "softmax_lse: strides must be non-negative");
        Axis axes[3] = {{c.varlen ? 1 : p->batch, c.varlen ? 0 : p->lse_batch_stride},
                        {p->nheads_q, p->lse_head_stride},
                        {rows, p->lse_row_stride}};
        int64_t last = max_offset(axes, 3);
        if (last < 0) return fail(c.err, c.errlen, FA_ERR_VALUE, "softmax_lse: offsets overflow");
        if (!p->lse && c.dev && c.dev->handle[FA_BUF_LSE]) {
            int64_t bytes = kI64Max;  // what the message reports when the size overflows
            if (!mul_add(last, 4, 4, &bytes) || c.dev->byte_offset[FA_BUF_LSE] < 0 ||
                bytes > c.dev->byte_length[FA_BUF_LSE])
                return fail(c.err, c.errlen, FA_ERR_VALUE,
                            "softmax_lse: view needs %lld bytes but its Metal buffer has %lld", (long long)bytes,
                            (long long)c.dev->byte_length[FA_BUF_LSE]);
        }
        if (!backward && !non_aliasing(axes, 3))
            return fail(c.err, c.errlen, FA_ERR_VALUE, "softmax_lse: strides make distinct elements overlap");
    }
    if (p->attn_probs) {
        // varlen: [batch, nheads, max_seqlen_q, max_seqlen_k], sequence b in the top-left corner of its slice
        if (p->attn_probs_batch_stride < 0 || p->attn_probs_head_stride < 0 || p->attn_probs_row_stride < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "attn_probs: strides must be non-negative");
        Axis axes[4] = {{p->batch, p->attn_probs_batch_stride},
                        {p->nheads_q, p->attn_probs_head_stride},
                        {p->seqlen_q, p->attn_probs_row_stride},
                        {p->seqlen_k, 1}};
        if (max_offset(axes, 4) < 0) return fail(c.err, c.errlen, FA_ERR_VALUE, "attn_probs: offsets overflow");
        if (!non_aliasing(axes, 4))
            return fail(c.err, c.errlen, FA_ERR_VALUE, "attn_probs: strides make distinct elements overlap");
    }
    if (c.varlen) {
        if (!p->cu_seqlens_k && !p->block_table)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "cu_seqlens_k is required together with cu_seqlens_q");
        if ((rc = check_cu_seqlens(c, "cu_seqlens_q", p->cu_seqlens_q, p->batch, p->total_q, "q", p->seqlen_q,
                                   "max_seqlen_q")))
            return rc;
    }
    return FA_OK;
}

// Rows of the k/v tensor view and how sequence b addresses them.
int check_key_side(const Ctx &c, bool backward) {
    const fa_params *p = c.p;
    int rc;
    int64_t n0, rows;
    bool packed;
    if (c.paged) {
        if (p->page_block_size < 1 || p->page_block_size % 16 != 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "block_table: page size (k_cache.shape[1]) must be a positive "
                        "multiple of 16, got %d", p->page_block_size);
        if (p->num_blocks < 1)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "k_cache: number of pages must be >= 1, got %lld",
                        (long long)p->num_blocks);
        if (p->max_blocks_per_seq < 1 || p->block_table_batch_stride < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "block_table: must be (batch, max_blocks) with max_blocks >= 1");
        // varlen: seqlen_k is the caller's max_seqlen_k; the KV-cache path sets it to the table's capacity
        if ((int64_t)p->seqlen_k > (int64_t)p->max_blocks_per_seq * p->page_block_size)
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "%s: %d is more than the %d pages x %d rows that block_table can address",
                        c.varlen ? "max_seqlen_k" : "block_table: seqlen_k", p->seqlen_k, p->max_blocks_per_seq,
                        p->page_block_size);
        if (p->cache_batch_idx)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "cache_batch_idx cannot be combined with block_table");
        if (p->leftpad_k)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "cache_leftpad cannot be combined with block_table");
        n0 = p->num_blocks;
        rows = p->page_block_size;
        packed = false;
    } else if (c.varlen && p->cu_seqlens_k) {
        if (p->total_k < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "k: total_k must be >= 0, got %lld", (long long)p->total_k);
        n0 = 1;
        rows = p->total_k;
        packed = true;
    } else {
        if (p->cache_batch_idx && p->cache_batch_count < 1)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "k_cache: batch dimension must be >= 1 with cache_batch_idx");
        n0 = p->cache_batch_idx ? p->cache_batch_count : p->batch;
        rows = p->seqlen_k;
        packed = false;
    }
    const char *kname = (c.paged || p->seqused_k) ? "k_cache" : "k";
    const char *vname = (c.paged || p->seqused_k) ? "v_cache" : "v";
    if ((rc = check_tensor(c, kname, p->k, FA_BUF_K, packed, n0, rows, p->nheads_kv, p->headdim, false))) return rc;
    if ((rc = check_tensor(c, vname, p->v, FA_BUF_V, packed, n0, rows, p->nheads_kv, p->headdim, false))) return rc;
    if (backward) {
        if ((rc = check_tensor(c, "dk", p->dk, FA_BUF_DK, packed, n0, rows, p->nheads_kv, p->headdim, true))) return rc;
        if ((rc = check_tensor(c, "dv", p->dv, FA_BUF_DV, packed, n0, rows, p->nheads_kv, p->headdim, true))) return rc;
    }

    if (c.varlen && p->cu_seqlens_k && !c.paged) {
        if ((rc = check_cu_seqlens(c, "cu_seqlens_k", p->cu_seqlens_k, p->batch, p->total_k, "k", p->seqlen_k,
                                   "max_seqlen_k")))
            return rc;
    } else if (c.varlen && p->cu_seqlens_k && c.paged) {
        if ((rc = check_cu_seqlens(c, "cu_seqlens_k", p->cu_seqlens_k, p->batch, -1, "k", p->seqlen_k,
                                   "max_seqlen_k")))
            return rc;
    }

    // Per-sequence key ranges: rows leftpad .. leftpad + used - 1 of the sequence's cache must exist.
    if (p->cache_batch_idx) {
        for (int32_t b = 0; b < p->batch; ++b)
            if (p->cache_batch_idx[b] < 0 || p->cache_batch_idx[b] >= p->cache_batch_count)
                return fail(c.err, c.errlen, FA_ERR_VALUE,
                            "cache_batch_idx[%d]=%d is outside the %lld batch rows of k_cache", b,
                            p->cache_batch_idx[b], (long long)p->cache_batch_count);
    }
    for (int32_t b = 0; b < p->batch; ++b) {
        int64_t cap = p->seqlen_k;
        if (c.varlen && p->cu_seqlens_k) cap = (int64_t)p->cu_seqlens_k[b + 1] - p->cu_seqlens_k[b];
        int64_t left = p->leftpad_k ? p->leftpad_k[b] : 0;
        int64_t used = p->seqused_k ? p->seqused_k[b] : cap - left;
        if (left < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "cache_leftpad[%d]=%lld must be >= 0", b, (long long)left);
        if (!p->seqused_k && left > cap)  // no cache_seqlens: the whole cache is used, so the padding is at fault
            return fail(c.err, c.errlen, FA_ERR_VALUE, "cache_leftpad[%d]=%lld exceeds the cache of %lld rows", b,
                        (long long)left, (long long)cap);
        if (p->seqused_k && used < 0)
            return fail(c.err, c.errlen, FA_ERR_VALUE, "cache_seqlens[%d]=%lld must be >= 0", b, (long long)used);
        if (used < 0 || left + used > cap)
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "cache_seqlens[%d]: %lld keys from row %lld do not fit the cache of %lld rows", b,
                        (long long)used, (long long)left, (long long)cap);
        if (c.paged && p->block_table) {
            int64_t pages = (left + used + p->page_block_size - 1) / p->page_block_size;
            for (int64_t j = 0; j < pages; ++j) {
                int32_t blk = p->block_table[(int64_t)b * p->block_table_batch_stride + j];
                if (blk < 0 || blk >= p->num_blocks)
                    return fail(c.err, c.errlen, FA_ERR_VALUE,
                                "block_table[%d, %lld]=%d is outside the %lld pages of k_cache", b, (long long)j, blk,
                                (long long)p->num_blocks);
            }
        }
    }
    return FA_OK;
}

}  // namespace

extern "C" int fa_check_params(const fa_params *p, int backward, char *err, size_t errlen) {
    if (!p) return fail(err, errlen, FA_ERR_VALUE, "params must not be NULL");
    Ctx c{p, err, errlen, p->cu_seqlens_q != nullptr, p->block_table != nullptr, p->device_buffers};
    int rc;
    if ((rc = check_shapes(c))) return rc;
    if ((rc = check_numerics(c))) return rc;
    if (backward && c.paged)
        return fail(err, errlen, FA_ERR_UNSUPPORTED, "backward through a paged KV cache is not supported");
    if (!c.varlen && p->cu_seqlens_k && !p->block_table)
        return fail(err, errlen, FA_ERR_VALUE, "cu_seqlens_k given without cu_seqlens_q");
    if ((rc = check_query_side(c, backward != 0))) return rc;
    if ((rc = check_key_side(c, backward != 0))) return rc;
    return FA_OK;
}
