// fa_check_kvcache.cpp - checks of the KV-cache update descriptor (fa_check_kvcache_update, called by
// fa_kvcache_append and fa_describe_plan after fa_check_params): new rows, rotary tables, cache capacity, and
// that the in-place append never writes one address twice nor an address it reads.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "fa_check_internal.h"

namespace {

using namespace fa_check;

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

// The interval from a set's lowest to its highest byte. Two sets whose spans are apart share no byte: told in O(1),
// which is the common case (separate allocations), before the exact search of bytes_meet.
struct Span {
    const void *space;
    __int128 lo, hi;
    bool empty;
};

Span span_of(const ByteSet &s) {
    Span sp{s.space, s.base, s.base, false};
    for (int i = 0; i < s.n; ++i) {
        if (s.ax[i].extent <= 0) sp.empty = true;  // an empty set meets nothing
        const __int128 reach = (__int128)(s.ax[i].extent - 1) * s.ax[i].stride;
        (reach < 0 ? sp.lo : sp.hi) += reach;
    }
    return sp;
}

bool spans_meet(const Span &a, const Span &b) {
    return a.space == b.space && !a.empty && !b.empty && a.lo <= b.hi && b.lo <= a.hi;
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
    // A dense cache without cache_batch_idx: sequence b writes cache row b, so no unit is written twice and the
    // units written are rows 0..batch-1; only the rows written are gathered (no list, no sort).
    const bool row_per_sequence = !c.paged && !p->cache_batch_idx;
    for (int32_t b = 0; row_per_sequence && b < p->batch; ++b) {
        const int64_t start = (p->leftpad_k ? p->leftpad_k[b] : 0) + p->seqused_k[b];
        row_lo = std::min(row_lo, start);
        row_hi = std::max(row_hi, start + n - 1);
    }
    for (int32_t b = 0; !row_per_sequence && b < p->batch; ++b) {
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
    const int64_t unit_lo = row_per_sequence ? 0 : writes.front().unit;
    const int64_t units = row_per_sequence ? p->batch : writes.back().unit - unit_lo + 1;
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
    Span read_spans[5];
    for (int i = 0; i < 5; ++i) read_spans[i] = span_of(reads[i].bytes);
    for (int w = 0; w < 2; ++w) {
        const ByteSet written = byte_set(c, *caches[w], slots[w], unit_lo, units, row_lo, rows, p->nheads_kv,
                                         p->headdim);
        const Span written_span = span_of(written);
        for (int i = 0; i < 5; ++i) {
            const Read &r = reads[i];
            if (r.name == names[w]) continue;  // the cache's own other rows: read after the append, never torn
            if (spans_meet(written_span, read_spans[i]) && bytes_meet(written, r.bytes))
                return fail(c.err, c.errlen, FA_ERR_VALUE,
                            "%s: shares memory with the rows of %s the append writes; the caches written in place "
                            "must not overlap each other or an input (q, k, v)", r.name, names[w]);
        }
    }
    return FA_OK;
}

}  // namespace

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
