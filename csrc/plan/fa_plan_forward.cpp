// fa_plan_forward.cpp - the forward plan: which attention specialization, its grid, split-KV and the merge.
//
// Launch 1: fa_fwd_<t>_d<BD> (prefill, 32-row tiles), fa_dec_<t>_d<BD> (8-row fragment decode, 5..8 packed query rows
// per head block) or fa_vec1/fa_vec4_<t>_d<BD> (vector decode, 1 / 2..4 packed rows; the rule is explained in
// kernels/fa_tiles.h), grid (row tiles, head blocks, batch * num_splits). Launch 2 (only when the keys are split): fa_merge_<t>,
// grid (seqlen_q, nheads_q, batch), which combines the partials in SCRATCH0 (O, fp32) and SCRATCH1 (LSE, fp32).
// Last, only for return_attn_probs: fa_probs_<t> writes the probabilities (debug output, recomputes the scores).
// fa_plan_forward is the steps in order: checks, tile choice, split choice, grid, buffer sizes, constants, launches.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>

#include "fa_kernel_params.h"
#include "fa_plan_constants.h"
#include "fa_plan_internal.h"
#include "fa_tiles.h"

namespace {

using faplan::fail;
using faplan::view_extent;
using faplan::has_tensor;

constexpr int kAutoSplitTargetThreadgroups = 128;  // enough threadgroups to fill an M-series GPU (8..76 cores)
constexpr int kMinKeysPerSplit = 256;  // auto: shorter splits cost more in launches and merging than they win
constexpr int kMaxSplits = 128;
constexpr int64_t kMaxPartialBytes = int64_t(256) << 20;  // scratch cap for split-KV partials (auto and forced)

// Most fp32 accumulator additions one work item (one split of one threadgroup) makes. The kernels keep the softmax
// row sum l and O in fp32 across all the keys of their split, and every addition rounds: the relative error of n
// additions is at worst about n * 2^-24 (with constant terms the rounding is systematic: unbounded, the sum stops
// absorbing terms at 2^26 keys, error 0.5 at 2^28). An accumulator takes one addition per key tile (BK keys) in the
// tiled kernels and one per FA_VEC_SIMDGROUPS = 8 keys in the vector kernel (each simdgroup adds every 8th key).
// 512 additions: worst case 512 * 2^-24 = 3.1e-5, 8x under the float16 floor (2.5e-4) of the tolerance rule
// (flash_attn_cy/reference.py); typical (random rounding) sqrt(512) * 2^-24 = 1.3e-6, under the float32 floor 4e-6.
// So a split takes at most 512 x (keys per addition) keys: 4096 for vector decode, 512 x BK (4096..16384) for the
// fragment and prefill kernels. Longer key ranges are split (flash-decoding) and the merge (kernels/fa_merge.h) sums
// the splits pairwise, so the error stays at this level up to the ABI's 2^31 - 1 keys, as long as the split partials
// (fp32, splits x q rows x heads x (headdim + 1)) stay within forced_partial_budget(): decode and short-query calls
// always do; a long prefill (e.g. 32k x 32k tokens, 32 heads: 0.5 GB of partials a split) keeps FlashAttention's O(N)
// memory instead and runs the blocked prefill kernel (fa_fwd_long_*, accumulation_block_tiles): ~sqrt(tiles) additions
// per accumulator level, e.g. 64k keys at BK 32 (2048 tiles): 46 + 45 instead of 2048, and 2^31 keys 8192 + 8192.
constexpr int kMaxAccumulatorAddsPerSplit = 512;
constexpr int64_t kMinForcedPartialBytes = int64_t(1) << 30;  // see forced_partial_budget

// Scratch the accuracy-forced splits may take: 1 GiB, or 1/16 of the K/V bytes the call reads if that is more (a
// decode over 2^31 keys reads terabytes; its partials are a small fraction of that).
// For tests only, FLASH_ATTN_CY_TEST_FORCED_PARTIAL_BYTES replaces it (0 or more: no forced split that needs more),
// so the simulator can run the blocked kernel on a key range it runs in seconds.
int64_t forced_partial_budget(const fa_params *p, int eb) {
    if (const char *e = std::getenv("FLASH_ATTN_CY_TEST_FORCED_PARTIAL_BYTES")) {
        const long long v = std::strtoll(e, nullptr, 10);
        if (v >= 0) return v;
    }
    const int64_t kv_bytes = 2 * int64_t(p->batch) * std::max<int64_t>(p->seqlen_k, 0) * p->nheads_kv * p->headdim * eb;
    return std::max(kMinForcedPartialBytes, kv_bytes / 16);
}

// Most keys per split for a kernel adding one term per `keys_per_add` keys, or for tests only the environment's
// FLASH_ATTN_CY_TEST_MAX_KEYS_PER_SPLIT (a multiple of 32, hence of every BK, no larger than the limit), so the
// simulator can exercise the forced minimum at a size it runs in seconds.
int64_t max_keys_per_split(int keys_per_add) {
    const int64_t limit = int64_t(kMaxAccumulatorAddsPerSplit) * keys_per_add;
    if (const char *e = std::getenv("FLASH_ATTN_CY_TEST_MAX_KEYS_PER_SPLIT")) {
        const long v = std::strtol(e, nullptr, 10);
        if (v >= 32 && v <= limit && v % 32 == 0) return v;
    }
    return limit;
}

// Fewest splits that give no split more than max_keys_per_split() keys. A split takes ceil(blocks / splits) whole
// key blocks (fa_tg_keys_of in kernels/fa_forward.h); the limit is a multiple of the block size (BK, or FA_VEC_BK for
// the vector kernel), so this count suffices.
int64_t min_splits_for(int64_t seqlen_k, int keys_per_add) {
    const int64_t m = max_keys_per_split(keys_per_add);
    return (std::max<int64_t>(seqlen_k, 0) + m - 1) / m;
}

int ceil_div(int64_t a, int64_t b) { return int((a + b - 1) / b); }

// Blocked accumulation of the prefill kernel (kernels/fa_forward.h, fa_fold_block): key tiles per block for a split
// of up to `tiles_per_split` key tiles, or 0 when one running sum stays within max_keys_per_split() (the plan then
// names fa_fwd_*, else fa_fwd_long_*). ceil(sqrt(tiles)) balances the two levels: each makes about sqrt(tiles)
// additions, at most 8192 for the ABI's 2^31 - 1 keys at BK 32 (worst case 8192 * 2^-24 = 4.9e-4 per level, typical
// sqrt(8192) * 2^-24 = 5.4e-6), against 2^26 for one running sum. Only the prefill kernel needs it: decode and
// short-query calls split within forced_partial_budget().
int acc_block_tiles(int64_t tiles_per_split, int bk) {
    if (tiles_per_split <= max_keys_per_split(bk) / bk) return 0;
    int64_t b = int64_t(std::sqrt(double(tiles_per_split)));
    while (b * b < tiles_per_split) ++b;
    return int(b);
}

// Which attention kernel serves `rows` packed query rows per head block (kernels/fa_tiles.h gives the reasons).
fa_kernel_family choose_family(int64_t rows, bool allow_vector) {
    if (rows <= FA_VEC_ROWS && allow_vector) return FA_KERNEL_VECTOR;
    if (rows <= FA_DEC_BQ) return FA_KERNEL_FRAGMENT;
    return FA_KERNEL_PREFILL;
}

// Whether the vector kernel may read K/V rows as vectors of `width` elements (FA_FLAG_KV_ALIGNED): headdim, every
// stride it uses and each base address (host pointer, or the MTLBuffer offset of a device tensor) are multiples of
// the width. Otherwise it reads scalars (any layout still works).
bool kv_vector_aligned(const fa_params *p, int width, int eb) {
    if (width <= 1) return true;
    if (p->headdim % width != 0) return false;
    const bool batch_stride_used = p->block_table || !p->cu_seqlens_k;
    const fa_tensor *views[2] = {&p->k, &p->v};
    const fa_buffer_id slots[2] = {FA_BUF_K, FA_BUF_V};
    for (int t = 0; t < 2; ++t) {
        const fa_tensor &x = *views[t];
        if (x.row_stride % width || x.head_stride % width || (batch_stride_used && x.batch_stride % width)) return false;
        int64_t base;
        if (p->device_buffers && p->device_buffers->handle[slots[t]])
            base = p->device_buffers->byte_offset[slots[t]];
        else
            base = int64_t(reinterpret_cast<uintptr_t>(x.data) % uintptr_t(width * eb));
        if (base % (width * eb) != 0) return false;
    }
    return true;
}

// Split-KV decision: 1 = none. Auto (num_splits == 0) splits only when the grid is too small to fill the GPU.
// Whatever num_splits asks (1 included) and whatever the caps say, there are at least min_splits_for(seqlen_k) splits:
// a smaller forced num_splits is raised to that minimum (accuracy, see kMaxAccumulatorAddsPerSplit).
int64_t choose_splits(const fa_params *p, int64_t blocks, int key_tiles, int bk, int keys_per_add,
                      int64_t partial_bytes_per_split, int eb) {
    int64_t forced_min = std::max<int64_t>(min_splits_for(p->seqlen_k, keys_per_add), 1);
    if (forced_min > 1 && partial_bytes_per_split > 0)  // within the scratch budget only (kMaxAccumulatorAddsPerSplit)
        forced_min = std::max<int64_t>(1, std::min(forced_min, forced_partial_budget(p, eb) / partial_bytes_per_split));
    if (p->num_splits == 1 || key_tiles < 2) return forced_min;
    int s;
    if (p->num_splits > 1) {
        s = std::min(p->num_splits, key_tiles);
    } else {
        if (blocks >= kAutoSplitTargetThreadgroups) return forced_min;
        s = ceil_div(kAutoSplitTargetThreadgroups, blocks);
        s = std::min<int64_t>(s, int64_t(key_tiles) * bk / kMinKeysPerSplit);
    }
    s = std::min(s, kMaxSplits);
    if (partial_bytes_per_split > 0) s = int(std::min<int64_t>(s, kMaxPartialBytes / partial_bytes_per_split));
    return std::max<int64_t>(s, forced_min);
}

// What every step needs to know about the call.
struct ForwardCall {
    const fa_params *p;
    int eb;          // element bytes of q/k/v/out
    int64_t q_rows;  // query rows of all sequences: total_q (varlen) or batch * seqlen_q
};

// ---- step 1: the tile (kernel family, head-dim bucket, GQA packing, tile sizes) ----
struct AttentionTiles {
    fa_kernel_family family;
    int bd;                      // head-dim bucket: the kernel's BD
    int pack;                    // query heads sharing a head block (packed GQA for short queries), 1 = none
    int64_t rows;                // packed query rows per head block
    fa_tile tile;                // rows (BQ), keys (BK; FA_VEC_BK for the vector kernel), simdgroups
    uint32_t threadgroup_bytes;
    int keys_per_add;            // keys per fp32 accumulator addition (kMaxAccumulatorAddsPerSplit)
};

AttentionTiles choose_tiles(const ForwardCall &c, bool allow_vector) {
    const fa_params *p = c.p;
    AttentionTiles t;
    t.bd = fa_bucket_headdim(p->headdim);
    const int group = p->nheads_q / p->nheads_kv;
    t.pack = (group > 1 && p->seqlen_q < FA_FWD_BQ) ? group : 1;
    t.rows = int64_t(p->seqlen_q) * t.pack;
    t.family = choose_family(t.rows, allow_vector);
    if (t.family == FA_KERNEL_VECTOR) {
        t.tile = fa_tile{fa_vec_rows(int(t.rows)), FA_VEC_BK, FA_VEC_SIMDGROUPS};
        t.threadgroup_bytes = uint32_t(fa_vec_tg_bytes(t.bd));
        t.keys_per_add = FA_VEC_SIMDGROUPS;
    } else {
        const bool fragment = t.family == FA_KERNEL_FRAGMENT;
        const int bk = fragment ? fa_dec_bk(t.bd, c.eb) : fa_fwd_bk(t.bd, c.eb);
        t.tile = fa_tile{fragment ? FA_DEC_BQ : FA_FWD_BQ, bk, fragment ? FA_DEC_SIMDGROUPS : FA_FWD_SIMDGROUPS};
        t.threadgroup_bytes = uint32_t(fa_kv_tile_bytes(bk, t.bd, c.eb));
        t.keys_per_add = bk;
    }
    return t;
}

fa_kernel_desc attention_desc(const fa_params *p, const AttentionTiles &t) {
    return faplan::kernel_desc(t.family, p->dtype, t.bd, t.family == FA_KERNEL_VECTOR ? t.tile.rows : 0);
}

int64_t row_tiles(const AttentionTiles &t) { return (t.rows + t.tile.rows - 1) / t.tile.rows; }
int64_t head_blocks(const fa_params *p, const AttentionTiles &t) { return p->nheads_q / t.pack; }

// ---- step 2: the split count (split-KV: 1 = none; see choose_splits) ----
int64_t split_count(const ForwardCall &c, const AttentionTiles &t) {
    const fa_params *p = c.p;
    const int key_tiles = ceil_div(std::max(p->seqlen_k, 0), t.tile.keys);
    const int64_t partial_bytes_per_split = int64_t(p->nheads_q) * c.q_rows * (int64_t(p->headdim) + 1) * 4;
    return choose_splits(p, row_tiles(t) * head_blocks(p, t) * p->batch, key_tiles, t.tile.keys, t.keys_per_add,
                         partial_bytes_per_split, c.eb);
}

// ---- step 3: the grid (row tiles, head blocks, batch * splits), within Metal's 32-bit dispatch sizes ----
int attention_grid(const ForwardCall &c, const AttentionTiles &t, int64_t splits, uint32_t grid[3], char *err,
                   size_t errlen) {
    const int64_t g[3] = {row_tiles(t), head_blocks(c.p, t), int64_t(c.p->batch) * splits};
    for (int i = 0; i < 3; ++i) {
        if (g[i] > 0xffffffffLL) return fail(err, errlen, FA_ERR_VALUE, "shape: grid too large for one dispatch");
        grid[i] = uint32_t(g[i]);
    }
    return FA_OK;
}

// ---- step 4: byte sizes of the buffers (executor bounds checks; a binding needs bytes > 0) ----
// k and v: pages (paged), packed rows (varlen) or [batch or cache rows, seqlen_k, heads, d].
void set_kv_bytes(const ForwardCall &c, fa_plan *out) {
    const fa_params *p = c.p;
    int64_t kv_outer, kv_rows;
    if (p->block_table) {
        kv_outer = p->num_blocks;
        kv_rows = p->page_block_size;
    } else if (p->cu_seqlens_k) {
        kv_outer = 1;
        kv_rows = p->total_k;
    } else {
        kv_outer = p->cache_batch_idx ? p->cache_batch_count : p->batch;
        kv_rows = p->seqlen_k;
    }
    const bool packed = p->cu_seqlens_k && !p->block_table;
    const fa_tensor *views[2] = {&p->k, &p->v};
    const fa_buffer_id ids[2] = {FA_BUF_K, FA_BUF_V};
    for (int i = 0; i < 2; ++i)
        out->buffer_bytes[ids[i]] = view_extent(kv_outer, packed ? 0 : views[i]->batch_stride, kv_rows,
                                                views[i]->row_stride, p->nheads_kv, views[i]->head_stride,
                                                p->headdim) * c.eb;
}

void set_forward_bytes(const ForwardCall &c, int splits, fa_plan *out) {
    const fa_params *p = c.p;
    int64_t *bytes = out->buffer_bytes;
    bytes[FA_BUF_Q] = faplan::q_side_bytes(p, p->q, c.eb);
    bytes[FA_BUF_OUT] = faplan::q_side_bytes(p, p->out, c.eb);
    if (has_tensor(p, p->lse, FA_BUF_LSE)) bytes[FA_BUF_LSE] = faplan::lse_bytes(p);
    set_kv_bytes(c, out);
    faplan::set_index_buffer_bytes(p, out);
    if (has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI)) bytes[FA_BUF_ALIBI] = faplan::alibi_bytes(p);
    if (has_tensor(p, p->attn_probs, FA_BUF_ATTN_PROBS))
        bytes[FA_BUF_ATTN_PROBS] = view_extent(p->batch, p->attn_probs_batch_stride, p->nheads_q,
                                               p->attn_probs_head_stride, p->seqlen_q, p->attn_probs_row_stride,
                                               p->seqlen_k) * 4;
    if (splits > 1) {
        out->scratch_bytes[0] = int64_t(splits) * p->nheads_q * c.q_rows * p->headdim * 4;  // O partials
        out->scratch_bytes[1] = int64_t(splits) * p->nheads_q * c.q_rows * 4;               // LSE partials
    }
}

// ---- step 5: the constant block ----
uint32_t forward_flags(const ForwardCall &c, const AttentionTiles &t, int splits) {
    const fa_params *p = c.p;
    uint32_t flags = 0;
    if (has_tensor(p, p->lse, FA_BUF_LSE)) flags |= FA_FLAG_LSE;
    if (has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI)) flags |= FA_FLAG_ALIBI;
    if (p->cu_seqlens_q) flags |= FA_FLAG_VARLEN_Q;
    if (p->cu_seqlens_k) flags |= FA_FLAG_VARLEN_K;
    if (p->seqused_k) flags |= FA_FLAG_SEQUSED_K;
    if (p->leftpad_k) flags |= FA_FLAG_LEFTPAD_K;
    if (p->cache_batch_idx) flags |= FA_FLAG_CACHE_BATCH_IDX;
    if (p->block_table) flags |= FA_FLAG_PAGED;
    if (p->dropout_p > 0.0f) flags |= FA_FLAG_DROPOUT;
    if (splits > 1) flags |= FA_FLAG_SPLIT;
    if (t.family == FA_KERNEL_VECTOR && kv_vector_aligned(p, fa_vec_width(t.bd), c.eb)) flags |= FA_FLAG_KV_ALIGNED;
    return flags;
}

fa_fwd_params forward_constants(const ForwardCall &c, const AttentionTiles &t, int splits, int acc_block) {
    const fa_params *p = c.p;
    fa_fwd_params k;
    std::memset(&k, 0, sizeof(k));
    faplan::set_attention_common(k, p);
    k.block_table_batch_stride = p->block_table_batch_stride;
    k.partial_rows = c.q_rows;
    k.probs_batch_stride = p->attn_probs_batch_stride;
    k.probs_head_stride = p->attn_probs_head_stride;
    k.probs_row_stride = p->attn_probs_row_stride;
    k.pack = t.pack;
    const float log2e = 1.4426950408889634f;
    const bool softcap = p->softcap > 0.0f;
    k.q_scale = float(softcap ? p->softmax_scale : p->softmax_scale * log2e);
    k.softcap_inv = softcap ? float(1.0 / p->softcap) : 0.0f;
    k.softcap_log2 = softcap ? float(p->softcap * log2e) : 0.0f;
    k.flags = forward_flags(c, t, splits);
    k.page_block_size = p->page_block_size;
    k.max_blocks_per_seq = p->max_blocks_per_seq;
    k.num_splits = splits;
    k.acc_block_tiles = acc_block;
    return k;
}

fa_merge_params merge_constants(const ForwardCall &c, const fa_fwd_params &k) {
    const fa_params *p = c.p;
    fa_merge_params mp;
    std::memset(&mp, 0, sizeof(mp));
    faplan::set_strides(p->out, mp.o_batch_stride, mp.o_row_stride, mp.o_head_stride);
    faplan::set_lse_strides(mp, p);
    mp.partial_rows = c.q_rows;
    mp.batch = p->batch;
    mp.seqlen_q = p->seqlen_q;
    mp.nheads_q = p->nheads_q;
    mp.headdim = p->headdim;
    mp.num_splits = k.num_splits;
    mp.flags = k.flags & (FA_FLAG_LSE | FA_FLAG_VARLEN_Q);
    return mp;
}

// ---- step 6: the launches (bindings come from each kernel's signature, kernels/fa_kernel_args.h) ----
// The attention kernel; split, it writes partials to scratch and leaves out and the LSE to the merge.
int add_attention_launch(const ForwardCall &c, const AttentionTiles &t, const uint32_t grid[3],
                         const fa_fwd_params &k, fa_plan *out, char *err, size_t errlen) {
    faplan::LaunchSpec s{attention_desc(c.p, t), {grid[0], grid[1], grid[2]},
                         uint32_t(t.tile.simdgroups * FA_SIMD_WIDTH), t.threadgroup_bytes, t.tile, 0};
    if (k.num_splits > 1) s.placeholder = faplan::buffer_bit(FA_BUF_OUT) | faplan::buffer_bit(FA_BUF_LSE);
    return faplan::add_launch(out, s, k, err, errlen);
}

// fa_merge_<t>, one threadgroup per (query row, head, batch): combines the split partials into out and the LSE.
int add_merge_launch(const ForwardCall &c, const fa_fwd_params &k, fa_plan *out, char *err, size_t errlen) {
    const fa_params *p = c.p;
    const faplan::LaunchSpec s{faplan::kernel_desc(FA_KERNEL_MERGE, p->dtype),
                               {uint32_t(p->seqlen_q), uint32_t(p->nheads_q), uint32_t(p->batch)},
                               FA_MERGE_THREADS, 0, fa_tile{}, 0};
    return faplan::add_launch(out, s, merge_constants(c, k), err, errlen);
}

// Debug launch for return_attn_probs: fa_probs_<t>, one threadgroup per (query row, head, batch). Independent of
// the attention launch (it recomputes the scores), so its position in the plan does not matter.
int add_probs_launch(const ForwardCall &c, const fa_fwd_params &k, fa_plan *out, char *err, size_t errlen) {
    const fa_params *p = c.p;
    const faplan::LaunchSpec s{faplan::kernel_desc(FA_KERNEL_PROBS, p->dtype),
                               {uint32_t(p->seqlen_q), uint32_t(p->nheads_q), uint32_t(p->batch)},
                               FA_PROBS_THREADS, uint32_t(FA_PROBS_THREADS / FA_SIMD_WIDTH * 4), fa_tile{}, 0};
    return faplan::add_launch(out, s, k, err, errlen);
}

int check_forward(const fa_params *p, char *err, size_t errlen) {
    if (!faplan::dtype_tag(p->dtype))
        return fail(err, errlen, FA_ERR_UNSUPPORTED, "dtype: the Metal kernels serve float16, bfloat16 and float32");
    if (const int rc = faplan::check_attention_shape(p, err, errlen)) return rc;
    if (p->block_table && p->page_block_size < 1)
        return fail(err, errlen, FA_ERR_VALUE, "page_block_size: expected >= 1 with a block_table");
    return FA_OK;
}

}  // namespace

int fa_plan_forward(const fa_params *p, fa_plan *out, char *err, size_t errlen, bool allow_vector) {
    if (const int rc = check_forward(p, err, errlen)) return rc;
    const int64_t q_rows = p->cu_seqlens_q ? p->total_q : int64_t(p->batch) * p->seqlen_q;
    const ForwardCall c{p, faplan::elem_bytes(p->dtype), q_rows};
    if (p->batch <= 0 || p->seqlen_q <= 0 || c.q_rows <= 0) return FA_OK;  // nothing to compute: empty plan

    const AttentionTiles tiles = choose_tiles(c, allow_vector);
    const int64_t splits64 = split_count(c, tiles);
    uint32_t grid[3] = {0, 0, 0};
    if (const int rc = attention_grid(c, tiles, splits64, grid, err, errlen)) return rc;
    const int splits = int(splits64);  // <= seqlen_k / 32 + 1: fits
    set_forward_bytes(c, splits, out);
    // A prefill split too long for one running sum accumulates in blocks (the fa_fwd_long_* kernels)
    AttentionTiles t = tiles;
    const int acc_block = t.family == FA_KERNEL_PREFILL
                              ? acc_block_tiles(ceil_div(ceil_div(std::max(p->seqlen_k, 0), t.tile.keys), splits),
                                                t.tile.keys)
                              : 0;
    if (acc_block > 0) t.family = FA_KERNEL_PREFILL_LONG;
    const fa_fwd_params k = forward_constants(c, t, splits, acc_block);

    int rc = add_attention_launch(c, t, grid, k, out, err, errlen);
    if (rc == FA_OK && splits > 1) rc = add_merge_launch(c, k, out, err, errlen);
    if (rc == FA_OK && has_tensor(p, p->attn_probs, FA_BUF_ATTN_PROBS)) rc = add_probs_launch(c, k, out, err, errlen);
    return rc;
}
