// fa_plan_forward.cpp - the forward plan: which attention specialization, its grid, split-KV and the merge.
//
// Launch 1: fa_fwd_<t>_d<BD> (prefill, 32-row tiles), fa_dec_<t>_d<BD> (8-row fragment decode, 5..8 packed query rows
// per head block) or fa_vec1/fa_vec4_<t>_d<BD> (vector decode, 1 / 2..4 packed rows; the rule is explained in
// kernels/fa_tiles.h), grid (row tiles, head blocks, batch * num_splits). Launch 2 (only when the keys are split): fa_merge_<t>,
// grid (seqlen_q, nheads_q, batch), which combines the partials in SCRATCH0 (O, fp32) and SCRATCH1 (LSE, fp32).
// Last, only for return_attn_probs: fa_probs_<t> writes the probabilities (debug output, recomputes the scores).
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
enum class AttnKernel { Vector, Fragment, Prefill };

AttnKernel choose_kernel(int64_t rows) {
    if (rows <= FA_VEC_ROWS) return AttnKernel::Vector;
    if (rows <= FA_DEC_BQ) return AttnKernel::Fragment;
    return AttnKernel::Prefill;
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

// Debug launch for return_attn_probs: fa_probs_<t>, one threadgroup per (query row, head, batch). Independent of
// the attention launch (it recomputes the scores), so its position in the plan does not matter.
void add_probs_launch(const fa_params *p, const fa_fwd_params &k, const char *tag, fa_plan *out) {
    char name[FA_PLAN_KERNEL_NAME_LEN];
    std::snprintf(name, sizeof(name), "fa_probs_%s", tag);
    const uint32_t grid[3] = {uint32_t(p->seqlen_q), uint32_t(p->nheads_q), uint32_t(p->batch)};
    const uint32_t threads[3] = {FA_PROBS_THREADS, 1, 1};
    fa_launch *l = &out->launches[out->nlaunches++];
    faplan::launch_init(l, name, grid, threads, uint32_t(FA_PROBS_THREADS / FA_SIMD_WIDTH * 4));
    const struct {
        int index;
        fa_buffer_id buffer;
    } binds[] = {
        {FA_FWD_BUF_Q, FA_BUF_Q},
        {FA_FWD_BUF_K, FA_BUF_K},
        {FA_FWD_BUF_ALIBI, FA_BUF_ALIBI},
        {FA_FWD_BUF_CU_SEQLENS_Q, FA_BUF_CU_SEQLENS_Q},
        {FA_FWD_BUF_CU_SEQLENS_K, FA_BUF_CU_SEQLENS_K},
        {FA_FWD_BUF_SEQUSED_K, FA_BUF_SEQUSED_K},
        {FA_FWD_BUF_LEFTPAD_K, FA_BUF_LEFTPAD_K},
        {FA_FWD_BUF_CACHE_BATCH_IDX, FA_BUF_CACHE_BATCH_IDX},
        {FA_FWD_BUF_BLOCK_TABLE, FA_BUF_BLOCK_TABLE},
        {FA_FWD_BUF_ATTN_PROBS, FA_BUF_ATTN_PROBS},
    };
    int indices[sizeof(binds) / sizeof(binds[0])];
    int n = 0;
    for (const auto &b : binds) {
        indices[n++] = b.index;
        if (out->buffer_bytes[b.buffer] > 0) faplan::launch_bind(l, b.index, b.buffer);
    }
    faplan::launch_bind_unused(out, l, indices, n);
    faplan::launch_constants(l, FA_FWD_BUF_PARAMS, &k, sizeof(k));
}

}  // namespace

int fa_plan_forward(const fa_params *p, fa_plan *out, char *err, size_t errlen, bool allow_vector) {
    const char *tag = faplan::dtype_tag(p->dtype);
    const int eb = faplan::elem_bytes(p->dtype);
    if (!tag) return fail(err, errlen, FA_ERR_UNSUPPORTED, "dtype: the Metal kernels serve float16, bfloat16 and float32");
    if (const int rc = faplan::check_attention_shape(p, err, errlen)) return rc;
    if (p->block_table && p->page_block_size < 1)
        return fail(err, errlen, FA_ERR_VALUE, "page_block_size: expected >= 1 with a block_table");

    const bool varlen_q = p->cu_seqlens_q != nullptr;
    const bool varlen_k = p->cu_seqlens_k != nullptr;
    const int64_t q_rows = varlen_q ? p->total_q : int64_t(p->batch) * p->seqlen_q;
    if (p->batch <= 0 || p->seqlen_q <= 0 || q_rows <= 0) return FA_OK;  // nothing to compute: empty plan

    const int bd = fa_bucket_headdim(p->headdim);
    const int group = p->nheads_q / p->nheads_kv;
    const int pack = (group > 1 && p->seqlen_q < FA_FWD_BQ) ? group : 1;  // packed GQA for short queries
    const int64_t rows = int64_t(p->seqlen_q) * pack;                      // packed rows per head block
    AttnKernel kind = choose_kernel(rows);
    if (kind == AttnKernel::Vector && !allow_vector) kind = AttnKernel::Fragment;
    const bool vector = kind == AttnKernel::Vector;
    const bool decode = kind == AttnKernel::Fragment;
    const int bq = vector ? fa_vec_rows(int(rows)) : decode ? FA_DEC_BQ : FA_FWD_BQ;
    const int bk = vector ? FA_VEC_BK : decode ? fa_dec_bk(bd, eb) : fa_fwd_bk(bd, eb);
    const int nsg = vector ? FA_VEC_SIMDGROUPS : decode ? FA_DEC_SIMDGROUPS : FA_FWD_SIMDGROUPS;
    const uint32_t tg_bytes = uint32_t(vector ? fa_vec_tg_bytes(bd) : fa_kv_tile_bytes(bk, bd, eb));

    const int64_t gx = (rows + bq - 1) / bq;
    const int64_t gy = p->nheads_q / pack;
    const int key_tiles = ceil_div(std::max(p->seqlen_k, 0), bk);
    const int64_t partial_bytes_per_split = int64_t(p->nheads_q) * q_rows * (int64_t(p->headdim) + 1) * 4;
    const int64_t splits64 = choose_splits(p, gx * gy * p->batch, key_tiles, bk, vector ? FA_VEC_SIMDGROUPS : bk,
                                           partial_bytes_per_split, eb);
    if (gx > 0xffffffffLL || gy > 0xffffffffLL || int64_t(p->batch) * splits64 > 0xffffffffLL)
        return fail(err, errlen, FA_ERR_VALUE, "shape: grid too large for one dispatch");
    const int splits = int(splits64);  // <= seqlen_k / 32 + 1: fits
    const int acc_block = kind == AttnKernel::Prefill ? acc_block_tiles(ceil_div(key_tiles, splits), bk) : 0;

    // ---- constants ----
    fa_fwd_params k;
    std::memset(&k, 0, sizeof(k));
    faplan::set_attention_common(k, p);
    k.block_table_batch_stride = p->block_table_batch_stride;
    k.partial_rows = q_rows;
    k.probs_batch_stride = p->attn_probs_batch_stride;
    k.probs_head_stride = p->attn_probs_head_stride;
    k.probs_row_stride = p->attn_probs_row_stride;
    k.pack = pack;
    const float log2e = 1.4426950408889634f;
    const bool softcap = p->softcap > 0.0f;
    k.q_scale = float(softcap ? p->softmax_scale : p->softmax_scale * log2e);
    k.softcap_inv = softcap ? float(1.0 / p->softcap) : 0.0f;
    k.softcap_log2 = softcap ? float(p->softcap * log2e) : 0.0f;
    uint32_t flags = 0;
    if (has_tensor(p, p->lse, FA_BUF_LSE)) flags |= FA_FLAG_LSE;
    if (has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI)) flags |= FA_FLAG_ALIBI;
    if (varlen_q) flags |= FA_FLAG_VARLEN_Q;
    if (varlen_k) flags |= FA_FLAG_VARLEN_K;
    if (p->seqused_k) flags |= FA_FLAG_SEQUSED_K;
    if (p->leftpad_k) flags |= FA_FLAG_LEFTPAD_K;
    if (p->cache_batch_idx) flags |= FA_FLAG_CACHE_BATCH_IDX;
    if (p->block_table) flags |= FA_FLAG_PAGED;
    if (p->dropout_p > 0.0f) flags |= FA_FLAG_DROPOUT;
    if (splits > 1) flags |= FA_FLAG_SPLIT;
    if (vector && kv_vector_aligned(p, fa_vec_width(bd), eb)) flags |= FA_FLAG_KV_ALIGNED;
    k.flags = flags;
    k.page_block_size = p->page_block_size;
    k.max_blocks_per_seq = p->max_blocks_per_seq;
    k.num_splits = splits;
    k.acc_block_tiles = acc_block;

    // ---- byte sizes of the user buffers (executor bounds checks) ----
    const int d = p->headdim;
    int64_t *bytes = out->buffer_bytes;
    if (varlen_q) {
        bytes[FA_BUF_Q] = view_extent(1, 0, p->total_q, p->q.row_stride, p->nheads_q, p->q.head_stride, d) * eb;
        bytes[FA_BUF_OUT] = view_extent(1, 0, p->total_q, p->out.row_stride, p->nheads_q, p->out.head_stride, d) * eb;
        if (has_tensor(p, p->lse, FA_BUF_LSE)) bytes[FA_BUF_LSE] = view_extent(1, 0, p->nheads_q, p->lse_head_stride, p->total_q, p->lse_row_stride, 1) * 4;
    } else {
        bytes[FA_BUF_Q] = view_extent(p->batch, p->q.batch_stride, p->seqlen_q, p->q.row_stride, p->nheads_q,
                                      p->q.head_stride, d) * eb;
        bytes[FA_BUF_OUT] = view_extent(p->batch, p->out.batch_stride, p->seqlen_q, p->out.row_stride, p->nheads_q,
                                        p->out.head_stride, d) * eb;
        if (has_tensor(p, p->lse, FA_BUF_LSE))
            bytes[FA_BUF_LSE] = view_extent(p->batch, p->lse_batch_stride, p->nheads_q, p->lse_head_stride,
                                            p->seqlen_q, p->lse_row_stride, 1) * 4;
    }
    int64_t kv_outer, kv_rows;
    if (p->block_table) {
        kv_outer = p->num_blocks;
        kv_rows = p->page_block_size;
    } else if (varlen_k) {
        kv_outer = 1;
        kv_rows = p->total_k;
    } else {
        kv_outer = p->cache_batch_idx ? p->cache_batch_count : p->batch;
        kv_rows = p->seqlen_k;
    }
    const int64_t kbs = varlen_k && !p->block_table ? 0 : p->k.batch_stride;
    const int64_t vbs = varlen_k && !p->block_table ? 0 : p->v.batch_stride;
    bytes[FA_BUF_K] = view_extent(kv_outer, kbs, kv_rows, p->k.row_stride, p->nheads_kv, p->k.head_stride, d) * eb;
    bytes[FA_BUF_V] = view_extent(kv_outer, vbs, kv_rows, p->v.row_stride, p->nheads_kv, p->v.head_stride, d) * eb;
    if (has_tensor(p, p->alibi_slopes, FA_BUF_ALIBI))
        bytes[FA_BUF_ALIBI] = (int64_t(p->batch - 1) * p->alibi_batch_stride + p->nheads_q) * 4;
    if (varlen_q) bytes[FA_BUF_CU_SEQLENS_Q] = int64_t(p->batch + 1) * 4;
    if (varlen_k) bytes[FA_BUF_CU_SEQLENS_K] = int64_t(p->batch + 1) * 4;
    if (p->seqused_k) bytes[FA_BUF_SEQUSED_K] = int64_t(p->batch) * 4;
    if (p->leftpad_k) bytes[FA_BUF_LEFTPAD_K] = int64_t(p->batch) * 4;
    if (p->cache_batch_idx) bytes[FA_BUF_CACHE_BATCH_IDX] = int64_t(p->batch) * 4;
    if (p->block_table)
        bytes[FA_BUF_BLOCK_TABLE] = (int64_t(p->batch - 1) * p->block_table_batch_stride + p->max_blocks_per_seq) * 4;
    if (has_tensor(p, p->attn_probs, FA_BUF_ATTN_PROBS))
        bytes[FA_BUF_ATTN_PROBS] = view_extent(p->batch, p->attn_probs_batch_stride, p->nheads_q, p->attn_probs_head_stride,
                                               p->seqlen_q, p->attn_probs_row_stride, p->seqlen_k) * 4;
    if (splits > 1) {
        out->scratch_bytes[0] = int64_t(splits) * p->nheads_q * q_rows * d * 4;  // O partials
        out->scratch_bytes[1] = int64_t(splits) * p->nheads_q * q_rows * 4;      // LSE partials
    }

    // ---- launch 1: attention ----
    char name[FA_PLAN_KERNEL_NAME_LEN];
    if (vector)
        std::snprintf(name, sizeof(name), "fa_vec%d_%s_d%d", bq, tag, bd);
    else
        std::snprintf(name, sizeof(name), "fa_%s_%s_d%d", decode ? "dec" : acc_block ? "fwd_long" : "fwd", tag, bd);
    const uint32_t grid[3] = {uint32_t(gx), uint32_t(gy), uint32_t(int64_t(p->batch) * splits)};
    const uint32_t threads[3] = {uint32_t(nsg * FA_SIMD_WIDTH), 1, 1};
    fa_launch *att = &out->launches[out->nlaunches++];
    faplan::launch_init(att, name, grid, threads, tg_bytes);
    const struct {
        int index;
        fa_buffer_id buffer;
    } att_bindings[] = {
        {FA_FWD_BUF_Q, FA_BUF_Q},
        {FA_FWD_BUF_K, FA_BUF_K},
        {FA_FWD_BUF_V, FA_BUF_V},
        {FA_FWD_BUF_OUT, FA_BUF_OUT},
        {FA_FWD_BUF_LSE, FA_BUF_LSE},
        {FA_FWD_BUF_ALIBI, FA_BUF_ALIBI},
        {FA_FWD_BUF_CU_SEQLENS_Q, FA_BUF_CU_SEQLENS_Q},
        {FA_FWD_BUF_CU_SEQLENS_K, FA_BUF_CU_SEQLENS_K},
        {FA_FWD_BUF_SEQUSED_K, FA_BUF_SEQUSED_K},
        {FA_FWD_BUF_LEFTPAD_K, FA_BUF_LEFTPAD_K},
        {FA_FWD_BUF_CACHE_BATCH_IDX, FA_BUF_CACHE_BATCH_IDX},
        {FA_FWD_BUF_BLOCK_TABLE, FA_BUF_BLOCK_TABLE},
    };
    for (const auto &b : att_bindings) {
        if (b.buffer == FA_BUF_OUT && splits > 1) continue;  // the merge writes out and lse
        if (b.buffer == FA_BUF_LSE && splits > 1) continue;
        if (bytes[b.buffer] > 0) faplan::launch_bind(att, b.index, b.buffer);
    }
    if (splits > 1) {
        faplan::launch_bind(att, FA_FWD_BUF_O_PARTIAL, FA_BUF_SCRATCH0);
        faplan::launch_bind(att, FA_FWD_BUF_LSE_PARTIAL, FA_BUF_SCRATCH1);
    }
    static const int att_indices[] = {FA_FWD_BUF_Q, FA_FWD_BUF_K, FA_FWD_BUF_V, FA_FWD_BUF_OUT, FA_FWD_BUF_LSE,
                                      FA_FWD_BUF_ALIBI, FA_FWD_BUF_CU_SEQLENS_Q, FA_FWD_BUF_CU_SEQLENS_K,
                                      FA_FWD_BUF_SEQUSED_K, FA_FWD_BUF_LEFTPAD_K, FA_FWD_BUF_CACHE_BATCH_IDX,
                                      FA_FWD_BUF_BLOCK_TABLE, FA_FWD_BUF_O_PARTIAL, FA_FWD_BUF_LSE_PARTIAL};
    faplan::launch_bind_unused(out, att, att_indices, int(sizeof(att_indices) / sizeof(att_indices[0])));
    faplan::launch_constants(att, FA_FWD_BUF_PARAMS, &k, sizeof(k));
    if (splits == 1) {
        if (has_tensor(p, p->attn_probs, FA_BUF_ATTN_PROBS)) add_probs_launch(p, k, tag, out);
        return FA_OK;
    }

    // ---- launch 2: merge the splits ----
    fa_merge_params mp;
    std::memset(&mp, 0, sizeof(mp));
    faplan::set_strides(p->out, mp.o_batch_stride, mp.o_row_stride, mp.o_head_stride);
    faplan::set_lse_strides(mp, p);
    mp.partial_rows = q_rows;
    mp.batch = p->batch;
    mp.seqlen_q = p->seqlen_q;
    mp.nheads_q = p->nheads_q;
    mp.headdim = d;
    mp.num_splits = splits;
    mp.flags = flags & (FA_FLAG_LSE | FA_FLAG_VARLEN_Q);
    std::snprintf(name, sizeof(name), "fa_merge_%s", tag);
    const uint32_t mgrid[3] = {uint32_t(p->seqlen_q), uint32_t(p->nheads_q), uint32_t(p->batch)};
    const uint32_t mthreads[3] = {FA_MERGE_THREADS, 1, 1};
    fa_launch *merge = &out->launches[out->nlaunches++];
    faplan::launch_init(merge, name, mgrid, mthreads, 0);
    faplan::launch_bind(merge, FA_MERGE_BUF_O_PARTIAL, FA_BUF_SCRATCH0);
    faplan::launch_bind(merge, FA_MERGE_BUF_LSE_PARTIAL, FA_BUF_SCRATCH1);
    faplan::launch_bind(merge, FA_MERGE_BUF_OUT, FA_BUF_OUT);
    if (has_tensor(p, p->lse, FA_BUF_LSE)) faplan::launch_bind(merge, FA_MERGE_BUF_LSE, FA_BUF_LSE);
    if (varlen_q) faplan::launch_bind(merge, FA_MERGE_BUF_CU_SEQLENS_Q, FA_BUF_CU_SEQLENS_Q);
    static const int merge_indices[] = {FA_MERGE_BUF_O_PARTIAL, FA_MERGE_BUF_LSE_PARTIAL, FA_MERGE_BUF_OUT,
                                        FA_MERGE_BUF_LSE, FA_MERGE_BUF_CU_SEQLENS_Q};
    faplan::launch_bind_unused(out, merge, merge_indices, int(sizeof(merge_indices) / sizeof(merge_indices[0])));
    faplan::launch_constants(merge, FA_MERGE_BUF_PARAMS, &mp, sizeof(mp));
    if (has_tensor(p, p->attn_probs, FA_BUF_ATTN_PROBS)) add_probs_launch(p, k, tag, out);
    return FA_OK;
}
