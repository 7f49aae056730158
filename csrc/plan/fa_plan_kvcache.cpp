// fa_plan_kvcache.cpp - the KV-cache append plan: one launch of fa_kvcache_append_<t> that rotates q in place,
// rotates the new keys and writes the new k/v rows into the cache (dense, batch-indirected or paged). Attention over
// the updated cache is a separate forward plan (the caller passes seqused_k + seqlen_new as the key counts).
#include <algorithm>
#include <cstring>

#include "fa_kernel_params.h"
#include "fa_plan_constants.h"
#include "fa_plan_internal.h"
#include "fa_tiles.h"

namespace {

using faplan::fail;
using faplan::view_extent;

// What the update does: rotate (q and/or the new keys), append new rows, or both.
struct AppendCall {
    const fa_params *p;
    const fa_kvcache_update *u;
    int eb;
    bool rotary;      // rotary tables given
    bool has_new;     // new k/v rows given
    int seqlen_new;   // 0 without new rows
};

int check_append(const AppendCall &c, char *err, size_t errlen) {
    const fa_params *p = c.p;
    const fa_kvcache_update *u = c.u;
    if (!faplan::dtype_tag(p->dtype))
        return fail(err, errlen, FA_ERR_UNSUPPORTED, "dtype: the Metal kernels serve float16, bfloat16 and float32");
    if (p->headdim < 1 || p->headdim > FA_MAX_HEADDIM)
        return fail(err, errlen, FA_ERR_VALUE, "headdim: expected 1..%d, got %d", FA_MAX_HEADDIM, p->headdim);
    if (p->cu_seqlens_q || p->cu_seqlens_k)
        return fail(err, errlen, FA_ERR_VALUE, "cu_seqlens: the KV-cache append takes dense q and caches");
    if (c.rotary && (u->rotary_dim % 2 != 0 || u->rotary_dim > p->headdim))
        return fail(err, errlen, FA_ERR_VALUE, "rotary_cos: rotary_dim must be even and <= headdim (%d), got %d",
                    p->headdim, u->rotary_dim);
    if (c.has_new && !u->vnew.data) return fail(err, errlen, FA_ERR_VALUE, "v: new k given without new v");
    if (p->block_table && p->page_block_size < 1)
        return fail(err, errlen, FA_ERR_VALUE, "page_block_size: expected >= 1 with a block_table");
    return FA_OK;
}

fa_append_params append_constants(const AppendCall &c) {
    const fa_params *p = c.p;
    const fa_kvcache_update *u = c.u;
    fa_append_params k;
    std::memset(&k, 0, sizeof(k));
    faplan::set_qkv_strides(k, p);
    faplan::set_strides(u->knew, k.kn_batch_stride, k.kn_row_stride, k.kn_head_stride);
    faplan::set_strides(u->vnew, k.vn_batch_stride, k.vn_row_stride, k.vn_head_stride);
    k.block_table_batch_stride = p->block_table_batch_stride;
    k.cache_batch_count = p->cache_batch_idx ? p->cache_batch_count : p->batch;
    k.num_blocks = p->num_blocks;
    k.batch = p->batch;
    k.seqlen_q = p->seqlen_q;
    k.seqlen_new = c.seqlen_new;
    k.seqlen_k = p->seqlen_k;
    k.nheads_q = p->nheads_q;
    k.nheads_kv = p->nheads_kv;
    k.headdim = p->headdim;
    k.rotary_dim = c.rotary ? u->rotary_dim : 0;
    k.seqlen_ro = c.rotary ? u->seqlen_ro : 0;
    k.page_block_size = p->page_block_size;
    k.max_blocks_per_seq = p->max_blocks_per_seq;
    uint32_t flags = 0;
    if (c.rotary && p->seqlen_q > 0) flags |= FA_APPEND_ROTATE_Q;
    if (c.rotary && c.has_new) flags |= FA_APPEND_ROTATE_K;
    if (u->rotary_interleaved) flags |= FA_APPEND_INTERLEAVED;
    if (u->rotate_q_causal) flags |= FA_APPEND_Q_CAUSAL;
    if (c.has_new) flags |= FA_APPEND_KV;
    if (p->seqused_k) flags |= FA_FLAG_SEQUSED_K;
    if (p->leftpad_k) flags |= FA_FLAG_LEFTPAD_K;
    if (p->cache_batch_idx) flags |= FA_FLAG_CACHE_BATCH_IDX;
    if (p->block_table) flags |= FA_FLAG_PAGED;
    k.flags = flags;
    return k;
}

void set_append_bytes(const AppendCall &c, const fa_append_params &k, fa_plan *out) {
    const fa_params *p = c.p;
    const fa_kvcache_update *u = c.u;
    const int d = p->headdim;
    int64_t *bytes = out->buffer_bytes;
    bytes[FA_BUF_Q] = faplan::q_side_bytes(p, p->q, c.eb);  // dense: the append takes no cu_seqlens
    const int64_t kv_outer = p->block_table ? p->num_blocks : k.cache_batch_count;
    const int64_t kv_rows = p->block_table ? p->page_block_size : p->seqlen_k;
    bytes[FA_BUF_K] = view_extent(kv_outer, p->k.batch_stride, kv_rows, p->k.row_stride, p->nheads_kv,
                                  p->k.head_stride, d) * c.eb;
    bytes[FA_BUF_V] = view_extent(kv_outer, p->v.batch_stride, kv_rows, p->v.row_stride, p->nheads_kv,
                                  p->v.head_stride, d) * c.eb;
    if (c.has_new) {
        bytes[FA_BUF_KNEW] = view_extent(p->batch, u->knew.batch_stride, c.seqlen_new, u->knew.row_stride,
                                         p->nheads_kv, u->knew.head_stride, d) * c.eb;
        bytes[FA_BUF_VNEW] = view_extent(p->batch, u->vnew.batch_stride, c.seqlen_new, u->vnew.row_stride,
                                         p->nheads_kv, u->vnew.head_stride, d) * c.eb;
    }
    if (c.rotary) {
        bytes[FA_BUF_ROTARY_COS] = int64_t(u->seqlen_ro) * (u->rotary_dim / 2) * c.eb;
        bytes[FA_BUF_ROTARY_SIN] = bytes[FA_BUF_ROTARY_COS];
    }
    faplan::set_index_buffer_bytes(p, out);
}

}  // namespace

int fa_plan_kvcache_append(const fa_params *p, const fa_kvcache_update *u, fa_plan *out, char *err, size_t errlen) {
    const bool rotary = u->rotary_cos && u->rotary_sin && u->rotary_dim > 0;
    const bool has_new = u->knew.data != nullptr && u->seqlen_new > 0;
    const AppendCall c{p, u, faplan::elem_bytes(p->dtype), rotary, has_new, has_new ? u->seqlen_new : 0};
    if (const int rc = check_append(c, err, errlen)) return rc;
    const int gx = std::max(rotary ? p->seqlen_q : 0, c.seqlen_new);
    if (p->batch <= 0 || gx <= 0) return FA_OK;  // nothing to rotate or append

    const fa_append_params k = append_constants(c);
    set_append_bytes(c, k, out);
    faplan::LaunchSpec s{faplan::kernel_desc(FA_KERNEL_KVCACHE_APPEND, p->dtype),
                         {uint32_t(gx), uint32_t(p->nheads_q + p->nheads_kv), uint32_t(p->batch)},
                         FA_APPEND_THREADS, 0, fa_tile{}, 0};
    // q is bound only to be rotated, the caches only to receive new rows (otherwise: the placeholder)
    if (!(k.flags & FA_APPEND_ROTATE_Q)) s.placeholder |= faplan::buffer_bit(FA_BUF_Q);
    if (!has_new) s.placeholder |= faplan::buffer_bit(FA_BUF_K) | faplan::buffer_bit(FA_BUF_V);
    return faplan::add_launch(out, s, k, err, errlen);
}
