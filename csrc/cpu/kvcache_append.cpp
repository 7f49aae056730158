// kvcache_append.cpp - the KV-cache update that precedes attention in flash_attn_with_kvcache:
// rotary embedding on q (in place; the Python side hands us a private copy) and on the new keys, then the new k/v
// rows are written into the cache (dense with cache_batch_idx/leftpad, or paged through block_table).
//
// Positions (flash_attn semantics): sequence b's cache holds valid rows leftpad .. leftpad+seqused_k[b]-1 (ABI:
// seqused_k counts valid rows, leftpad_k is the first one). New row t goes to cache row leftpad+seqused_k[b]+t and
// rotates at that same absolute position (flash_attn's cache_seqlens includes the left padding). Query row i rotates
// at that position + i when rotate_q_causal (causal/local attention), else every query at the first new position.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "call_env.h"
#include "cpu_dtype.h"
#include "fa_backends.h"
#include "seq_geometry.h"
#include "thread_pool.h"

namespace fa_cpu {
namespace {

// Bytes of rows one more thread must write to be worth waking (tens of microseconds of copying).
constexpr double MIN_BYTES_PER_THREAD = 256.0 * 1024;

// Rotate one row in place in Acc precision (fp32, or fp64 for FA_F64), reading cos/sin at position `pos`.
template <typename Acc>
void rotate_row(Acc *x, const fa_kvcache_update *u, fa_dtype dt, int64_t pos) {
    const int half = u->rotary_dim / 2;
    const int64_t base = pos * half;
    for (int i = 0; i < half; ++i) {
        const Acc c = load_elem<Acc>(u->rotary_cos, base + i, dt);
        const Acc s = load_elem<Acc>(u->rotary_sin, base + i, dt);
        const int i0 = u->rotary_interleaved ? 2 * i : i;       // GPT-J: pairs (0,1),(2,3),...
        const int i1 = u->rotary_interleaved ? 2 * i + 1 : i + half;  // GPT-NeoX: pairs (i, i + rotary_dim/2)
        const Acc x0 = x[i0], x1 = x[i1];
        x[i0] = x0 * c - x1 * s;
        x[i1] = x0 * s + x1 * c;
    }
}

template <typename Acc>
void copy_row(const void *src, void *dst, int d, fa_dtype dt, const fa_kvcache_update *u, int64_t rot_pos) {
    Acc tmp[FA_MAX_HEADDIM];
    for (int c = 0; c < d; ++c) tmp[c] = load_elem<Acc>(src, c, dt);
    if (rot_pos >= 0) rotate_row(tmp, u, dt, rot_pos);
    for (int c = 0; c < d; ++c) store_elem<Acc>(dst, c, dt, tmp[c]);
}

template <typename Acc>
void append_sequence(const fa_params *p, const fa_kvcache_update *u, int b, const SeqGeometry &g, int64_t pos0) {
    const fa_dtype dt = p->dtype;
    const int d = p->headdim;
    const bool rotary = u->rotary_dim > 0 && u->rotary_cos && u->rotary_sin;
    if (rotary) {
        for (int64_t i = 0; i < g.sq; ++i) {
            const int64_t pos = u->rotate_q_causal ? pos0 + i : pos0;
            for (int h = 0; h < p->nheads_q; ++h) {
                void *row = elem_ptr(p->q.data, g.q_row0 + i * p->q.row_stride + int64_t(h) * p->q.head_stride, dt);
                copy_row<Acc>(row, row, d, dt, u, pos);
            }
        }
    }
    if (!u->knew.data) return;
    for (int64_t t = 0; t < u->seqlen_new; ++t) {
        const int64_t row = pos0 + t;
        for (int h = 0; h < p->nheads_kv; ++h) {
            const int64_t src_off = int64_t(b) * u->knew.batch_stride + t * u->knew.row_stride + int64_t(h) * u->knew.head_stride;
            const int64_t vsrc_off = int64_t(b) * u->vnew.batch_stride + t * u->vnew.row_stride + int64_t(h) * u->vnew.head_stride;
            void *kdst = elem_ptr(p->k.data, kv_row_offset(p, g, row, false) + int64_t(h) * p->k.head_stride, dt);
            void *vdst = elem_ptr(p->v.data, kv_row_offset(p, g, row, true) + int64_t(h) * p->v.head_stride, dt);
            copy_row<Acc>(elem_ptr(u->knew.data, src_off, dt), kdst, d, dt, u, rotary ? row : -1);
            copy_row<Acc>(elem_ptr(u->vnew.data, vsrc_off, dt), vdst, d, dt, u, -1);
        }
    }
}

}  // namespace
}  // namespace fa_cpu

int fa_cpu_kvcache_append(const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    using namespace fa_cpu;
    const fa_cpu::CallEnvScope env;  // FLASH_ATTN_CY_CPU_ISA / _THREAD_CAPS read once for the whole call
    if (!p || !u || !p->q.data || !p->k.data || !p->v.data) {
        std::snprintf(err, errlen, "kvcache append: q, k_cache and v_cache must be non-NULL");
        return FA_ERR_VALUE;
    }
    if (p->cu_seqlens_q || p->cu_seqlens_k) {
        std::snprintf(err, errlen, "kvcache append: varlen (cu_seqlens) layouts are not supported with a KV cache");
        return FA_ERR_UNSUPPORTED;
    }
    if (p->headdim < 1 || p->headdim > FA_MAX_HEADDIM) {
        std::snprintf(err, errlen, "kvcache append: headdim %d out of range [1, %d]", p->headdim, FA_MAX_HEADDIM);
        return FA_ERR_VALUE;
    }
    const bool has_new = u->knew.data != nullptr;
    if (has_new && (!u->vnew.data || u->seqlen_new < 0)) {
        std::snprintf(err, errlen, "kvcache append: k and v must be given together (seqlen_new=%d)", u->seqlen_new);
        return FA_ERR_VALUE;
    }
    const bool rotary = u->rotary_dim > 0 && u->rotary_cos && u->rotary_sin;
    if (u->rotary_dim > 0 && (!rotary || (u->rotary_dim & 1) || u->rotary_dim > p->headdim)) {
        std::snprintf(err, errlen, "kvcache append: rotary_dim=%d must be even, <= headdim=%d, with cos and sin given",
                      u->rotary_dim, p->headdim);
        return FA_ERR_VALUE;
    }
    // Resolve and bound-check every sequence before writing anything.
    std::vector<SeqGeometry> seqs(size_t(p->batch));
    std::vector<int64_t> pos0(size_t(p->batch));
    for (int b = 0; b < p->batch; ++b) {
        if (!resolve_sequence(p, b, seqs[b], err, errlen)) return FA_ERR_VALUE;
        const SeqGeometry &g = seqs[b];
        pos0[b] = int64_t(g.leftpad) + (p->seqused_k ? g.sk : 0);
        const int64_t nnew = has_new ? u->seqlen_new : 0;
        const int64_t capacity = g.pages ? int64_t(p->max_blocks_per_seq) * p->page_block_size : p->seqlen_k;
        if (pos0[b] + nnew > capacity) {
            std::snprintf(err, errlen,
                          "kvcache append: sequence %d would write cache rows [%lld, %lld) but the cache has %lld rows",
                          b, (long long)pos0[b], (long long)(pos0[b] + nnew), (long long)capacity);
            return FA_ERR_VALUE;
        }
        if (g.pages && nnew > 0) {
            for (int64_t i = pos0[b] / p->page_block_size; i <= (pos0[b] + nnew - 1) / p->page_block_size; ++i) {
                if (g.pages[i] < 0 || g.pages[i] >= p->num_blocks) {
                    std::snprintf(err, errlen, "block_table[%d][%lld] = %d out of range [0, %lld)", b, (long long)i,
                                  g.pages[i], (long long)p->num_blocks);
                    return FA_ERR_VALUE;
                }
            }
        }
        if (rotary) {
            const int64_t last_q = u->rotate_q_causal ? pos0[b] + std::max(g.sq - 1, 0) : pos0[b];
            const int64_t last = std::max(last_q, pos0[b] + nnew - 1);
            if (last >= u->seqlen_ro) {
                std::snprintf(err, errlen,
                              "kvcache append: rotary position %lld needed for sequence %d but rotary_cos/sin have "
                              "only %d rows",
                              (long long)last, b, u->seqlen_ro);
                return FA_ERR_VALUE;
            }
        }
    }
    auto fn = [&](int64_t b) {
        if (p->dtype == FA_F64)
            append_sequence<double>(p, u, int(b), seqs[b], pos0[b]);
        else
            append_sequence<float>(p, u, int(b), seqs[b], pos0[b]);
    };
    // No cancellation token here: a started append always writes every row (fa_abi.h), so an interrupted
    // flash_attn_with_kvcache never leaves a cache half written.
    // Threads by the bytes written (new K/V rows and rotated q rows): one new token per sequence is far less than
    // the cost of waking a worker.
    const double row_bytes = double(p->headdim) * dtype_size(p->dtype);
    const double bytes = double(p->batch) * row_bytes *
                         ((has_new ? 2.0 * u->seqlen_new * p->nheads_kv : 0.0) + (rotary ? double(p->nheads_q) * p->seqlen_q : 0.0));
    const int threads = threads_for_work(p->batch, bytes, MIN_BYTES_PER_THREAD, p->num_threads);
    if (!parallel_for(p->batch, fn, threads)) {
        std::snprintf(err, errlen, "kvcache append: a worker failed");
        return FA_ERR_RUNTIME;
    }
    return FA_OK;
}
