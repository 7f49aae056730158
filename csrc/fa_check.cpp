// fa_check.cpp - structural validation of fa_params shared by every backend (fa_check_params in fa_abi.h).
//
// Python validates first and gives the friendliest messages; this is the second line of defence so that no backend
// indexes out of bounds even when the ABI is called directly. Messages name arguments as the Python API spells them
// (q, k, v, cu_seqlens_q, cache_seqlens, block_table, ...). All index arithmetic is 64-bit and overflow-checked.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fa_abi.h"
#include "plan/fa_plan.h"
#include "plan/fa_plan_internal.h"  // faplan::fail

namespace {

using faplan::fail;

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

// a * b + c without signed overflow; false on overflow (all inputs >= 0).
bool mul_add(int64_t a, int64_t b, int64_t c, int64_t *out) {
    if (a < 0 || b < 0 || c < 0) return false;
    if (a != 0 && b > (kI64Max - c) / a) return false;
    *out = a * b + c;
    return true;
}

size_t dtype_size(fa_dtype d) {
    switch (d) {
        case FA_F32: return 4;
        case FA_F16: return 2;
        case FA_BF16: return 2;
        case FA_F64: return 8;
    }
    return 0;
}

// One strided axis of a tensor view.
struct Axis {
    int64_t extent;
    int64_t stride;
};

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

struct Ctx {
    const fa_params *p;
    char *err;
    size_t errlen;
    bool varlen;
    bool paged;
    const fa_device_buffers *dev;
};

// Is buffer `slot` given (host pointer or Metal buffer handle)?
bool present(const Ctx &c, const void *host, int slot) {
    if (host) return true;
    return c.dev && slot >= 0 && slot < FA_DEVICE_BUFFER_SLOTS && c.dev->handle[slot] != nullptr;
}

// Checks one 4-d tensor view [n0, rows, heads, dim] (or [rows, heads, dim] when `packed`): presence, non-negative
// strides, no int64 overflow, device byte bounds, and non-aliasing when the tensor is written.
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

// ---- aliasing of the in-place KV-cache append ---------------------------------------------------------------------
// The append writes new rows into the caller's caches. If two of the elements it writes are one address (two
// sequences on one cache row or page, a zero stride on a written axis), or a written element is also a cache
// element or an input element the call reads, the result depends on the order the writes land in: it tears. Such
// calls are refused before anything is written, whatever the backend and whoever calls the ABI.

// A strided set of bytes { base + sum_i x_i * stride_i : 0 <= x_i < extent_i } in one address space: `space` is
// nullptr for host memory, else the MTLBuffer handle (offsets in different MTLBuffers never meet).
struct ByteSet {
    const void *space;
    int64_t base;
    int n;
    Axis ax[5];  // the tensor's axes with strides in bytes, then the bytes of one element
};

// The bytes of the box [n0_start, n0_start + n0) x [row_start, row_start + rows) x heads x dim of tensor t.
ByteSet byte_set(const Ctx &c, const fa_tensor &t, int slot, int64_t n0_start, int64_t n0, int64_t row_start,
                 int64_t rows, int64_t heads, int64_t dim) {
    const int64_t isz = (int64_t)dtype_size(c.p->dtype);
    ByteSet s{nullptr, 0, 5, {{n0, t.batch_stride * isz}, {rows, t.row_stride * isz}, {heads, t.head_stride * isz},
                              {dim, isz}, {isz, 1}}};
    if (t.data) {
        s.base = (int64_t)(intptr_t)t.data;
    } else {
        s.space = c.dev->handle[slot];
        s.base = c.dev->byte_offset[slot];
    }
    s.base += (n0_start * t.batch_stride + row_start * t.row_stride) * isz;
    return s;
}

// Does a byte of `a` equal a byte of `b`? Solves a.base + sum x_i a_i == b.base + sum y_j b_j over the boxes: one
// integer term per distinct stride (equal strides merged: x - y ranges over [-(ny - 1), nx - 1]), a depth-first
// search from the largest stride down that keeps only the choices the smaller strides can still complete. Exact for
// every layout; strided views of one buffer (interleaved K/V, permuted layouts) take a handful of steps. Past
// kMaxSteps it answers "yes", refusing the call rather than guessing.
bool bytes_meet(const ByteSet &a, const ByteSet &b) {
    if (a.space != b.space) return false;
    for (const ByteSet *s : {&a, &b})
        for (int i = 0; i < s->n; ++i)
            if (s->ax[i].extent <= 0) return false;  // an empty set meets nothing
    struct Term {
        __int128 coef, lo, hi;
    };
    Term terms[10];
    int m = 0;
    auto add = [&](int64_t coef, int64_t lo, int64_t hi) {
        if (coef == 0 || lo == hi) return;  // a zero stride or a single index adds nothing
        for (int i = 0; i < m; ++i)
            if (terms[i].coef == coef) {
                terms[i].lo += lo;
                terms[i].hi += hi;
                return;
            }
        terms[m++] = Term{coef, lo, hi};
    };
    for (int i = 0; i < a.n; ++i) add(a.ax[i].stride, 0, a.ax[i].extent - 1);
    for (int i = 0; i < b.n; ++i) add(b.ax[i].stride, -(b.ax[i].extent - 1), 0);
    std::sort(terms, terms + m, [](const Term &x, const Term &y) { return x.coef > y.coef; });
    __int128 rest_lo[11], rest_hi[11];  // the range terms i.. can reach
    rest_lo[m] = rest_hi[m] = 0;
    for (int i = m - 1; i >= 0; --i) {
        rest_lo[i] = rest_lo[i + 1] + terms[i].lo * terms[i].coef;
        rest_hi[i] = rest_hi[i + 1] + terms[i].hi * terms[i].coef;
    }
    constexpr int kMaxSteps = 1 << 16;
    int steps = 0;
    auto floor_div = [](__int128 x, __int128 d) { return x >= 0 ? x / d : -((-x + d - 1) / d); };
    // Iterative search: z[i] is the value of term i on the current path, r[i] what terms i.. must still add up to.
    __int128 z[10], zmax[10], r[11];
    r[0] = (__int128)b.base - a.base;
    if (r[0] < rest_lo[0] || r[0] > rest_hi[0]) return false;
    if (m == 0) return r[0] == 0;
    int i = 0;
    auto enter = [&](int lvl) {  // first and last value of term lvl that leave a reachable remainder
        const Term &t = terms[lvl];
        __int128 lo = -floor_div(-(r[lvl] - rest_hi[lvl + 1]), t.coef);  // ceil
        __int128 hi = floor_div(r[lvl] - rest_lo[lvl + 1], t.coef);
        z[lvl] = std::max(lo, t.lo);
        zmax[lvl] = std::min(hi, t.hi);
    };
    enter(0);
    while (i >= 0) {
        if (++steps > kMaxSteps) return true;
        if (z[i] > zmax[i]) {  // this level is exhausted: back up
            if (--i >= 0) ++z[i];
            continue;
        }
        r[i + 1] = r[i] - z[i] * terms[i].coef;
        if (i + 1 == m) {
            if (r[m] == 0) return true;
            ++z[i];
            continue;
        }
        ++i;
        enter(i);
    }
    return false;
}

// Refuses an append whose writes alias (see above). Units of ownership: a cache row (dense cache, through
// cache_batch_idx) or a page (block_table); each may be written by one sequence only. Pages that are only read
// may be shared freely.
int check_append_aliasing(const Ctx &c, const fa_kvcache_update *u) {
    const fa_params *p = c.p;
    const int64_t n = u->seqlen_new;
    if (n <= 0 || p->batch < 1) return FA_OK;
    const int64_t P = c.paged ? p->page_block_size : 0;
    struct Write {
        int64_t unit;  // cache row or page
        int32_t b;     // sequence
        int64_t j;     // column of block_table (paged)
    };
    std::vector<Write> writes;
    int64_t row_lo = std::numeric_limits<int64_t>::max(), row_hi = -1;  // rows (offsets in a page) written
    for (int32_t b = 0; b < p->batch; ++b) {
        const int64_t start = (p->leftpad_k ? p->leftpad_k[b] : 0) + p->seqused_k[b], end = start + n;
        if (!c.paged) {
            writes.push_back({p->cache_batch_idx ? p->cache_batch_idx[b] : b, b, 0});
            row_lo = std::min(row_lo, start);
            row_hi = std::max(row_hi, end - 1);
            continue;
        }
        const int64_t first = start / P, last = (end - 1) / P;
        row_lo = std::min(row_lo, first == last ? start % P : 0);
        row_hi = std::max(row_hi, first == last ? (end - 1) % P : P - 1);
        for (int64_t j = first; j <= last; ++j) {
            const int32_t blk = p->block_table[(int64_t)b * p->block_table_batch_stride + j];
            if (blk < 0 || blk >= p->num_blocks)
                return fail(c.err, c.errlen, FA_ERR_VALUE,
                            "block_table[%d, %lld]=%d is outside the %lld pages of k_cache", b, (long long)j, blk,
                            (long long)p->num_blocks);
            writes.push_back({blk, b, j});
        }
    }
    std::sort(writes.begin(), writes.end(), [](const Write &x, const Write &y) {
        return x.unit != y.unit ? x.unit < y.unit : (x.b != y.b ? x.b < y.b : x.j < y.j);
    });
    for (size_t i = 1; i < writes.size(); ++i) {
        const Write &x = writes[i - 1], &y = writes[i];
        if (x.unit != y.unit) continue;
        if (!c.paged)
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "cache_batch_idx: sequences %d and %d both append to cache row %lld (cache_batch_idx[%d] == "
                        "cache_batch_idx[%d]); rows written in place by two sequences would tear, so each appending "
                        "sequence needs its own cache row",
                        x.b, y.b, (long long)x.unit, x.b, y.b);
        if (x.b == y.b)
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "block_table: page %lld is appended to twice by sequence %d (block_table[%d, %lld] and "
                        "block_table[%d, %lld]); a page being written must appear once", (long long)x.unit, x.b, x.b,
                        (long long)x.j, y.b, (long long)y.j);
        return fail(c.err, c.errlen, FA_ERR_VALUE,
                    "block_table: page %lld is appended to by sequences %d and %d in the same call (block_table[%d, "
                    "%lld] and block_table[%d, %lld]); pages written in place must belong to one sequence (shared "
                    "pages may only be read)", (long long)x.unit, x.b, y.b, x.b, (long long)x.j, y.b, (long long)y.j);
    }
    // The written region of each cache, as one box: from the first to the last unit written and from the first to
    // the last row written (a superset of what is written, exact for the common one-row decode step).
    const int64_t unit_lo = writes.front().unit, units = writes.back().unit - unit_lo + 1;
    const int64_t rows = row_hi - row_lo + 1;
    const char *names[2] = {"k_cache", "v_cache"};
    const fa_tensor *caches[2] = {&p->k, &p->v};
    const int slots[2] = {FA_BUF_K, FA_BUF_V};
    for (int w = 0; w < 2; ++w) {
        const fa_tensor &t = *caches[w];
        Axis axes[4] = {{units, t.batch_stride}, {rows, t.row_stride}, {p->nheads_kv, t.head_stride},
                        {p->headdim, 1}};
        if (!non_aliasing(axes, 4))
            return fail(c.err, c.errlen, FA_ERR_VALUE,
                        "%s: the rows being appended overlap one another in memory (a zero or overlapping stride "
                        "on a written axis, e.g. a cache made with expand()); a cache written in place must not "
                        "alias itself", names[w]);
    }
    // Everything the call reads, against each written region.
    const int64_t n0 = c.paged ? p->num_blocks : (p->cache_batch_idx ? p->cache_batch_count : p->batch);
    const int64_t cache_rows = c.paged ? p->page_block_size : p->seqlen_k;
    struct Read {
        const char *name;
        ByteSet bytes;
    };
    Read reads[5] = {
        {"k_cache", byte_set(c, p->k, FA_BUF_K, 0, n0, 0, cache_rows, p->nheads_kv, p->headdim)},
        {"v_cache", byte_set(c, p->v, FA_BUF_V, 0, n0, 0, cache_rows, p->nheads_kv, p->headdim)},
        {"k", byte_set(c, u->knew, FA_BUF_KNEW, 0, p->batch, 0, n, p->nheads_kv, p->headdim)},
        {"v", byte_set(c, u->vnew, FA_BUF_VNEW, 0, p->batch, 0, n, p->nheads_kv, p->headdim)},
        {"q", byte_set(c, p->q, FA_BUF_Q, 0, p->batch, 0, p->seqlen_q, p->nheads_q, p->headdim)},
    };
    for (int w = 0; w < 2; ++w) {
        const ByteSet written = byte_set(c, *caches[w], slots[w], unit_lo, units, row_lo, rows, p->nheads_kv,
                                         p->headdim);
        for (const Read &r : reads) {
            if (r.name == names[w]) continue;  // the cache's own other rows: read after the append, never torn
            if (bytes_meet(written, r.bytes))
                return fail(c.err, c.errlen, FA_ERR_VALUE,
                            "%s: shares memory with the rows of %s the append writes; the caches written in place "
                            "must not overlap each other or an input (q, k, v)", r.name, names[w]);
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

// Checks of the KV-cache update descriptor (called by fa_kvcache_append / fa_describe_plan after fa_check_params).
extern "C" int fa_check_kvcache_update(const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    if (!u) return fail(err, errlen, FA_ERR_VALUE, "KV-cache update descriptor must not be NULL");
    Ctx c{p, err, errlen, p->cu_seqlens_q != nullptr, p->block_table != nullptr, p->device_buffers};
    if (c.varlen) return fail(err, errlen, FA_ERR_UNSUPPORTED, "the KV-cache update does not take cu_seqlens");
    if (u->seqlen_new < 0) return fail(err, errlen, FA_ERR_VALUE, "k: seqlen_new must be >= 0");
    bool has_k = present(c, u->knew.data, FA_BUF_KNEW), has_v = present(c, u->vnew.data, FA_BUF_VNEW);
    if (has_k != has_v) return fail(err, errlen, FA_ERR_VALUE, "k and v must be given together");
    int rc;
    if (has_k) {
        if (!p->seqused_k) return fail(err, errlen, FA_ERR_VALUE, "cache_seqlens is required when appending k/v");
        if ((rc = check_tensor(c, "k", u->knew, FA_BUF_KNEW, false, p->batch, u->seqlen_new, p->nheads_kv, p->headdim,
                               false)))
            return rc;
        if ((rc = check_tensor(c, "v", u->vnew, FA_BUF_VNEW, false, p->batch, u->seqlen_new, p->nheads_kv, p->headdim,
                               false)))
            return rc;
    }
    int64_t new_rows = has_k ? u->seqlen_new : 0;
    bool has_cos = present(c, u->rotary_cos, FA_BUF_ROTARY_COS), has_sin = present(c, u->rotary_sin, FA_BUF_ROTARY_SIN);
    if (has_cos != has_sin) return fail(err, errlen, FA_ERR_VALUE, "rotary_cos and rotary_sin must be given together");
    if (has_cos) {
        if (u->rotary_dim < 2 || u->rotary_dim % 2 != 0 || u->rotary_dim > p->headdim)
            return fail(err, errlen, FA_ERR_VALUE,
                        "rotary_cos: rotary_dim (2 * rotary_cos.shape[1]) must be even and in 2..headdim=%d, got %d",
                        p->headdim, u->rotary_dim);
        if (u->seqlen_ro < 0) return fail(err, errlen, FA_ERR_VALUE, "rotary_cos: seqlen_ro must be >= 0");
    }
    for (int32_t b = 0; b < p->batch; ++b) {
        int64_t cap = p->seqlen_k;
        int64_t left = p->leftpad_k ? p->leftpad_k[b] : 0;
        int64_t used = p->seqused_k ? p->seqused_k[b] : cap - left;
        if (left + used + new_rows > cap)
            return fail(err, errlen, FA_ERR_VALUE,
                        "cache_seqlens[%d]=%lld plus %lld new rows exceed the cache capacity of %lld rows", b,
                        (long long)(left + used), (long long)new_rows, (long long)cap);
        if (has_cos) {
            int64_t qspan = u->rotate_q_causal ? p->seqlen_q : (p->seqlen_q > 0 ? 1 : 0);
            int64_t span = new_rows > qspan ? new_rows : qspan;
            if (span > 0 && left + used + span > u->seqlen_ro)
                return fail(err, errlen, FA_ERR_VALUE,
                            "rotary_cos/rotary_sin: %d positions, but sequence %d needs positions up to %lld",
                            u->seqlen_ro, b, (long long)(left + used + span - 1));
        }
    }
    return has_k ? check_append_aliasing(c, u) : FA_OK;
}
