// attention_forward.cpp - FlashAttention-2 forward on the CPU: work split, band/tile walk, write-out.
//
// One work item = up to QUERY_TILES_PER_ITEM tiles of BLOCK_M query rows of one sequence and one KV head (each K/V
// tile is loaded once for all of them). With GQA/MQA the rows of a tile are the (query, head) pairs of all query heads sharing that KV head (row r -> query r / G, head hk*G + r % G), so every
// K/V tile loaded is used by the whole group; decode (1 query) with GQA thereby fills a tile with G heads.
// For each K/V tile inside the causal/local band: S^T = K·Q^T, logit features (only on tiles that need them),
// online-softmax step, optional dropout, O^T = alpha*O^T + V^T·P^T. One normalisation at the end.
// Extra memory: a fixed per-thread workspace (O(BLOCK_M * headdim)), independent of the sequence length.
// Bits: the K/V tiles sit on a fixed grid (multiples of BLOCK_N), the row-layout kernels serve only one-tile sequences
// and long key ranges fold in chunks at fixed positions (key_chunks.h), so no result depends on how query tiles are
// grouped into work items, i.e. on the thread count. Cancellation (fa_params.cancel) is checked per K/V tile.
// Decode (at most DECODE_MAX_ROWS rows per KV head, no dropout) runs in decode_forward.cpp instead.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "call_env.h"
#include "cpu_dtype.h"
#include "decode_forward.h"
#include "fa_backends.h"
#include "key_chunks.h"
#include "row_output.h"
#include "score_features.h"
#include "seq_geometry.h"
#include "thread_pool.h"
#include "tile_kernels.h"
#include "workspace.h"

namespace fa_cpu {
namespace {

thread_local Workspace tl_workspace;  // per thread: the tiles of one work item (workspace.h)
thread_local Workspace tl_chunk_totals;  // per thread: the double chunk totals of one work item (key_chunks.h)
static_assert(KEY_CHUNK % BLOCK_N == 0, "chunk ends lie on the K/V tile grid");

template <typename Acc>
struct ForwardJob {
    const fa_params *p;
    const TileKernels<Acc> *kern;
    std::vector<SeqGeometry> seqs;
    std::vector<int64_t> item_start;  // first work item of each sequence (prefix sums), size batch+1
    std::vector<int32_t> tiles;       // query tiles per sequence
    int group;                        // query heads per KV head
    DropoutParams drop;
    bool dropout;
    double scale;  // softmax scale in double (see effective_scale)
    int tiles_per_item;  // query tiles per work item, <= QUERY_TILES_PER_ITEM
};

// The ABI carries softmax_scale as a double, so the fp64 path (gradient checks) sees the exact scale.
double effective_scale(const fa_params *p) { return p->softmax_scale; }

// Query tiles per work item (lane layout), at most. Each K/V tile is then fetched and prepared once for all of them
// (with one per item, ~27% of fp32 d=128 time sat in the K/V tile copies' cache misses). 8 kept qT + oT in a 1 MiB L2
// (measured 2-4% faster than 4 then); on Zen 5 (1 thread, 2048 keys) 32 beat 8 by 3-4% (AVX2) and 2-5% (AVX-512) though
// the state spills L2 (streamed in order, which the prefetchers follow): the strided gather per tile, memory-latency
// bound, is shared by 4x the rows. Few-tile jobs use fewer (tiles_per_item()); the workspace grows with the tiles.
constexpr int QUERY_TILES_PER_ITEM = 32;

template <typename Acc>
struct TileBuffers {
    Acc *qT, *sT, *oT, *m, *l, *alpha;  // query tile 0 (and the row layout)
    char *stage_k, *stage_v, *scratch;
    char *kpack, *vpack, *pbuf;  // prepared K/V tile (KvTile::packed) and P in the table's format
    // qT, oT, m, l, alpha of query tiles 1.. of an item, `extra_tile_bytes()` each, after the buffers above.
    char *extra;
    static size_t extra_tile_bytes() {
        return qT_bytes<Acc>() + sizeof(Acc) * (size_t(HEADDIM_PAD) * BLOCK_M + 3 * BLOCK_M) + 5 * 64;
    }
    static size_t bytes(int64_t elem_size, int extra_tiles = 0) {
        return qT_bytes<Acc>() +
               sizeof(Acc) * (size_t(HEADDIM_PAD) * BLOCK_M + size_t(BLOCK_N) * BLOCK_M + 3 * BLOCK_M) +
               2 * size_t(BLOCK_N) * HEADDIM_PAD * elem_size + TILE_SCRATCH_BYTES + 2 * KV_PACK_BYTES +
               P_PACK_BYTES + 11 * 64 +
               size_t(extra_tiles) * extra_tile_bytes();
    }
    void carve(char *base, int64_t elem_size) {
        auto take = [&](size_t n) {
            char *r = base;
            base += (n + 63) & ~size_t(63);
            return r;
        };
        qT = reinterpret_cast<Acc *>(take(qT_bytes<Acc>()));
        oT = reinterpret_cast<Acc *>(take(sizeof(Acc) * HEADDIM_PAD * BLOCK_M));
        sT = reinterpret_cast<Acc *>(take(sizeof(Acc) * BLOCK_N * BLOCK_M));
        m = reinterpret_cast<Acc *>(take(sizeof(Acc) * BLOCK_M));
        l = reinterpret_cast<Acc *>(take(sizeof(Acc) * BLOCK_M));
        alpha = reinterpret_cast<Acc *>(take(sizeof(Acc) * BLOCK_M));
        stage_k = take(size_t(BLOCK_N) * HEADDIM_PAD * elem_size);
        stage_v = take(size_t(BLOCK_N) * HEADDIM_PAD * elem_size);
        scratch = take(TILE_SCRATCH_BYTES);
        kpack = take(KV_PACK_BYTES);
        vpack = take(KV_PACK_BYTES);
        pbuf = take(P_PACK_BYTES);
        extra = base;
    }
    // State of query tile i (0 = the buffers above) of an item.
    void tile_state(int i, Acc *&q, Acc *&o, Acc *&mm, Acc *&ll, Acc *&al) const {
        if (i == 0) {
            q = qT, o = oT, mm = m, ll = l, al = alpha;
            return;
        }
        char *base = extra + size_t(i - 1) * extra_tile_bytes();
        auto take = [&](size_t n) {
            char *r = base;
            base += (n + 63) & ~size_t(63);
            return reinterpret_cast<Acc *>(r);
        };
        q = take(qT_bytes<Acc>());
        o = take(sizeof(Acc) * HEADDIM_PAD * BLOCK_M);
        mm = take(sizeof(Acc) * BLOCK_M);
        ll = take(sizeof(Acc) * BLOCK_M);
        al = take(sizeof(Acc) * BLOCK_M);
    }
};

// Rows [key0, key0+nk) of KV head hk as (pointer, row stride). Dense/varlen caches and tiles inside one page are used
// in place; a tile that straddles pages is gathered into `stage` first.
const void *kv_tile(const fa_params *p, const SeqGeometry &g, int hk, int64_t key0, int nk, bool is_v, char *stage,
                    int64_t &stride) {
    const fa_tensor &t = is_v ? p->v : p->k;
    const int64_t esz = dtype_size(p->dtype);
    const int64_t row0 = g.leftpad + key0;
    const int64_t head_off = int64_t(hk) * t.head_stride;
    if (!g.pages || row0 / p->page_block_size == (row0 + nk - 1) / p->page_block_size) {
        stride = t.row_stride;
        return elem_ptr(t.data, kv_row_offset(p, g, row0, is_v) + head_off, p->dtype);
    }
    const int d = p->headdim;
    for (int j = 0; j < nk; ++j) {
        const void *src = elem_ptr(t.data, kv_row_offset(p, g, row0 + j, is_v) + head_off, p->dtype);
        std::memcpy(stage + int64_t(j) * d * esz, src, size_t(d * esz));
    }
    stride = d;
    return stage;
}

// q . k for a query row already widened to Acc: the dtype switch sits outside the loop (the same products and sum
// order as widening both per element).
template <typename Acc>
Acc dot_widened(const Acc *q, const void *krow, int d, fa_dtype dt) {
    Acc s = 0;
    switch (dt) {
        case FA_F32: for (int c = 0; c < d; ++c) s += q[c] * load_elem<Acc>(krow, c, FA_F32); break;
        case FA_F64: for (int c = 0; c < d; ++c) s += q[c] * load_elem<Acc>(krow, c, FA_F64); break;
        case FA_F16: for (int c = 0; c < d; ++c) s += q[c] * load_elem<Acc>(krow, c, FA_F16); break;
        case FA_BF16: for (int c = 0; c < d; ++c) s += q[c] * load_elem<Acc>(krow, c, FA_BF16); break;
    }
    return s;
}

// Debug output: the normalised probabilities of every (row, key), dropped ones negated (flash_attn's S_dmask).
// Recomputes the scores with scalar code, only used when attn_probs is requested.
template <typename Acc>
void write_attn_probs(const ForwardJob<Acc> &job, int b, const SeqGeometry &g, const RowInfo &row, Acc m, Acc l,
                      const MaskParams &mp) {
    const fa_params *p = job.p;
    if (row.i >= p->seqlen_q) return;
    float *dst = p->attn_probs + int64_t(b) * p->attn_probs_batch_stride + int64_t(row.head) * p->attn_probs_head_stride +
                 int64_t(row.i) * p->attn_probs_row_stride;
    const void *qrow = elem_ptr(p->q.data, g.q_row0 + int64_t(row.i) * p->q.row_stride +
                                               int64_t(row.head) * p->q.head_stride, p->dtype);
    const int hk = row.head / job.group;
    const int64_t ncols = std::min<int64_t>(g.sk, p->seqlen_k);
    const uint32_t bh = uint32_t(b) * uint32_t(p->nheads_q) + uint32_t(row.head);
    Acc q[HEADDIM_PAD];
    for (int c = 0; c < p->headdim; ++c) q[c] = load_elem<Acc>(qrow, c, p->dtype);
    for (int64_t j = 0; j < ncols; ++j) {
        Acc prob = 0;
        if (l > 0 && key_visible(mp, row.i, j)) {
            const void *krow = elem_ptr(p->k.data, kv_row_offset(p, g, g.leftpad + j, false) +
                                                       int64_t(hk) * p->k.head_stride, p->dtype);
            const Acc qk = dot_widened(q, krow, p->headdim, p->dtype);
            prob = std::exp2(logit_log2(mp, qk, row, j, true) - m) / l;
            if (job.dropout &&
                !fa_dropout_keep(job.drop.seed, job.drop.offset, bh, uint32_t(row.i), uint32_t(j), job.drop.threshold))
                prob = -prob;
        }
        dst[j] = float(prob);
    }
    for (int64_t j = ncols; j < p->seqlen_k; ++j) dst[j] = 0.0f;
}

// The rows of query tile `tile` of (sequence b, KV head hk) and what masks need to know about them.
struct TileRows {
    RowInfo rows[BLOCK_M];
    const void *qrows[BLOCK_M];
    int nrows;
    int64_t i_min, i_max;  // query index range of the rows
};

template <typename Acc>
void build_tile_rows(const ForwardJob<Acc> &job, int b, int hk, int tile, TileRows &t) {
    const fa_params *p = job.p;
    const SeqGeometry &g = job.seqs[b];
    const int G = job.group;
    // (query i, head h) pairs, queries major so the tile spans few query positions.
    const int64_t r0 = int64_t(tile) * BLOCK_M;
    t.nrows = int(std::min<int64_t>(BLOCK_M, int64_t(g.sq) * G - r0));
    for (int r = 0; r < t.nrows; ++r) {
        const int64_t rr = r0 + r;
        RowInfo &row = t.rows[r];
        row.i = int32_t(rr / G);
        row.head = hk * G + int32_t(rr % G);
        row.slope = p->alibi_slopes ? p->alibi_slopes[int64_t(b) * p->alibi_batch_stride + row.head] : 0.0f;
        t.qrows[r] = elem_ptr(p->q.data, g.q_row0 + int64_t(row.i) * p->q.row_stride +
                                             int64_t(row.head) * p->q.head_stride, p->dtype);
    }
    t.i_min = t.rows[0].i;
    t.i_max = t.rows[t.nrows - 1].i;
}

template <typename Acc>
MaskParams mask_params(const ForwardJob<Acc> &job, const SeqGeometry &g) {
    MaskParams mp;
    mp.offset = int64_t(g.sk) - g.sq;
    mp.sq = g.sq;
    mp.sk = g.sk;
    mp.window_left = job.p->window_left;
    mp.window_right = job.p->window_right;
    mp.scale = job.scale;
    mp.softcap = job.p->softcap;
    mp.alibi = job.p->alibi_slopes != nullptr;
    return mp;
}

// Keys [lo, hi) visible to any row of the tile; tiles outside are never touched (causal/local early exit).
inline void key_band(const MaskParams &mp, int64_t sk, const TileRows &t, int64_t &lo, int64_t &hi) {
    (void)sk;  // mp.sk (kernels/fa_mask.h clamps to it)
    lo = fa_mask_key_lo(t.i_min, mp.sq, mp.sk, mp.window_left);
    hi = fa_mask_key_hi(t.i_max, mp.sq, mp.sk, mp.window_right);
}

// Only key tiles crossing a band edge need per-element masks.
inline bool tile_needs_mask(const MaskParams &mp, const TileRows &t, int64_t t0, int64_t t1) {
    return !fa_mask_block_full(t.i_min, t.i_max, t0, t1, mp.sq, mp.sk, mp.window_left, mp.window_right);
}

// LSE (natural log, +inf when the row saw no key) and, on request, the S_dmask row of a finished row.
template <typename Acc>
void finish_row_stats(const ForwardJob<Acc> &job, int b, const RowInfo &row, Acc m, Acc l, const MaskParams &mp) {
    const fa_params *p = job.p;
    const SeqGeometry &g = job.seqs[b];
    write_row_lse(p, g, row, m, l);
    if (p->attn_probs) write_attn_probs(job, b, g, row, m, l, mp);
}

// Normalise one row (accumulator element c at acc[c * cstride]) and write it out, then its LSE / S_dmask.
// `normalised`: acc already holds the normalised output (a row folded in chunks, key_chunks.h).
template <typename Acc>
void finish_row(const ForwardJob<Acc> &job, int b, const RowInfo &row, const Acc *acc, int cstride, Acc m, Acc l,
                const MaskParams &mp, bool normalised = false) {
    const fa_params *p = job.p;
    const int d = p->headdim;
    const Acc inv = normalised ? Acc(1) : row_inv_sum(l);
    void *orow = out_row_ptr(p, job.seqs[b], row);
    switch (p->dtype) {
        case FA_F32: for (int c = 0; c < d; ++c) static_cast<float *>(orow)[c] = float(acc[c * cstride] * inv); break;
        case FA_F64: for (int c = 0; c < d; ++c) static_cast<double *>(orow)[c] = double(acc[c * cstride] * inv); break;
        case FA_F16: for (int c = 0; c < d; ++c) static_cast<uint16_t *>(orow)[c] = f32_to_f16(float(acc[c * cstride] * inv)); break;
        case FA_BF16: for (int c = 0; c < d; ++c) static_cast<uint16_t *>(orow)[c] = f32_to_bf16(float(acc[c * cstride] * inv)); break;
    }
    finish_row_stats(job, b, row, m, l, mp);
}

// One K/V tile [t0, t0+nk) of KV head hk for the rows of `t` in the row layout (decode kernels).
template <typename Acc>
void row_layout_tile(const ForwardJob<Acc> &job, int b, int hk, const TileRows &t, const MaskParams &mp, int64_t t0,
                     int nk, const Acc *qR, Acc *oR, Acc *m, Acc *l, TileBuffers<Acc> &buf) {
    const fa_params *p = job.p;
    const SeqGeometry &g = job.seqs[b];
    const TileKernels<Acc> &kern = *job.kern;
    int64_t kstride, vstride;
    const void *kt = kv_tile(p, g, hk, t0, nk, false, buf.stage_k, kstride);
    kern.scores_rows(kt, kstride, nk, p->headdim, qR, t.nrows, buf.sT);
    Acc mul = Acc(job.scale * LOG2E);
    const bool masked = tile_needs_mask(mp, t, t0, t0 + nk);
    if (masked || mp.softcap > 0 || mp.alibi) {
        apply_score_features(buf.sT, nk, t.nrows, LANES, t.rows, t0, mp, masked);
        mul = Acc(1);
    }
    kern.softmax(buf.sT, nk, 1, mul, m, l, buf.alpha);
    if (job.dropout) {
        DropoutParams drop = job.drop;
        drop.batch_index = b;
        apply_dropout(buf.sT, nk, t.nrows, t.rows, t0, drop);
    }
    const void *vt = kv_tile(p, g, hk, t0, nk, true, buf.stage_v, vstride);
    kern.pv_rows(vt, vstride, nk, p->headdim, buf.sT, t.nrows, buf.alpha, oR);
}

// One query tile of a work item in the lane layout: its rows, state and visible key band.
template <typename Acc>
struct QueryTile {
    TileRows t;
    Acc *qT, *oT, *m, *l, *alpha;
    int nv, lanes;
    int64_t lo, hi;
    bool folded;  // some chunk was folded into the double totals (key_chunks.h)
};

// Keys [t0, t0+nk) = keys j0.. of the prepared K/V tiles kt/vt for one query tile: S^T, logit features, softmax
// step, dropout, O^T update.
template <typename Acc>
void lane_layout_tile(const ForwardJob<Acc> &job, QueryTile<Acc> &q, const MaskParams &mp, const DropoutParams &drop,
                      const KvTile &kt, const KvTile &vt, int64_t t0, int j0, int nk, TileBuffers<Acc> &buf) {
    const TileKernels<Acc> &kern = *job.kern;
    const int d = job.p->headdim;
    const bool masked = tile_needs_mask(mp, q.t, t0, t0 + nk);
    kern.scores(kt, j0, nk, d, q.qT, q.nv, buf.sT, buf.scratch);
    Acc mul = Acc(job.scale * LOG2E);
    if (masked && !(mp.softcap > 0) && !mp.alibi && job.scale > 0) {
        mask_band_edges(buf.sT, nk, q.t.nrows, q.lanes, q.t.rows, t0, mp);
    } else if (masked || mp.softcap > 0 || mp.alibi) {
        apply_score_features(buf.sT, nk, q.t.nrows, q.lanes, q.t.rows, t0, mp, masked);
        mul = Acc(1);
    }
    const void *pmat = buf.sT;
    if (kern.softmax_p && !job.dropout) {
        kern.softmax_p(buf.sT, nk, q.nv, mul, q.m, q.l, q.alpha, buf.pbuf);  // P straight into pv's format
        pmat = buf.pbuf;
    } else {
        kern.softmax(buf.sT, nk, q.nv, mul, q.m, q.l, q.alpha);
        if (job.dropout) apply_dropout(buf.sT, nk, q.t.nrows, q.t.rows, t0, drop);
        if (kern.pack_p) {
            kern.pack_p(buf.sT, nk, q.nv, buf.pbuf);
            pmat = buf.pbuf;
        }
    }
    kern.pv(vt, j0, nk, d, pmat, q.nv, q.alpha, q.oT, buf.scratch);
}

// Ask for the K and V rows of keys [key0, key0 + n) of KV head hk to be brought into L2. Issued for the NEXT K/V
// tile, a slice per query tile, while the current one is processed: the first reader of a tile (the contiguous copy
// or conversion at the start of scores/pv) otherwise stalls on memory (~12% of fp32 d=128 time). Rows are
// nheads*headdim apart, usually on different pages, where the hardware prefetchers do not follow.
void prefetch_kv_rows(const fa_params *p, const SeqGeometry &g, int hk, int64_t key0, int n) {
#if defined(__GNUC__) || defined(__clang__)
    const int64_t bytes = int64_t(p->headdim) * dtype_size(p->dtype);
    for (int j = 0; j < n; ++j) {
        const int64_t row = g.leftpad + key0 + j;
        const char *k = static_cast<const char *>(
            elem_ptr(p->k.data, kv_row_offset(p, g, row, false) + int64_t(hk) * p->k.head_stride, p->dtype));
        const char *v = static_cast<const char *>(
            elem_ptr(p->v.data, kv_row_offset(p, g, row, true) + int64_t(hk) * p->v.head_stride, p->dtype));
        for (int64_t off = 0; off < bytes; off += 64) {
            __builtin_prefetch(k + off, 0, 2);
            __builtin_prefetch(v + off, 0, 2);
        }
    }
#else
    (void)p, (void)g, (void)hk, (void)key0, (void)n;
#endif
}

// Query tiles [tile0, tile0 + ntiles) of (sequence b, KV head hk), ntiles <= QUERY_TILES_PER_ITEM.
template <typename Acc>
void run_tiles(const ForwardJob<Acc> &job, int b, int hk, int tile0, int ntiles) {
    const fa_params *p = job.p;
    const SeqGeometry &g = job.seqs[b];
    const TileKernels<Acc> &kern = *job.kern;
    const int d = p->headdim;
    const int64_t esz = dtype_size(p->dtype);

    TileBuffers<Acc> buf;
    buf.carve(tl_workspace.get(TileBuffers<Acc>::bytes(esz, ntiles - 1)), esz);
    const MaskParams mp = mask_params(job, g);
    QueryTile<Acc> qt[QUERY_TILES_PER_ITEM];
    for (int i = 0; i < ntiles; ++i) {
        QueryTile<Acc> &q = qt[i];
        build_tile_rows(job, b, hk, tile0 + i, q.t);
        buf.tile_state(i, q.qT, q.oT, q.m, q.l, q.alpha);
        q.nv = (q.t.nrows + LANES - 1) / LANES;
        q.lanes = q.nv * LANES;
        key_band(mp, g.sk, q.t, q.lo, q.hi);
        q.folded = false;
        for (int r = 0; r < q.lanes; ++r) {
            q.m[r] = Acc(-INFINITY);
            q.l[r] = Acc(0);
        }
    }

    // Double totals of the item's query tiles, when a band is longer than a chunk (key_chunks.h); allocated at the
    // first fold.
    ChunkTotals totals[QUERY_TILES_PER_ITEM];
    bool have_totals = false;
    auto fold = [&](int i, int64_t ors, int64_t ocs) {
        QueryTile<Acc> &q = qt[i];
        if (!have_totals) {
            const size_t per = size_t(HEADDIM_PAD) * BLOCK_M + 2 * BLOCK_M;
            double *base = reinterpret_cast<double *>(tl_chunk_totals.get(sizeof(double) * per * ntiles));
            for (int j = 0; j < ntiles; ++j) {
                totals[j].M = base + per * j;
                totals[j].L = totals[j].M + BLOCK_M;
                totals[j].O = totals[j].L + BLOCK_M;
                totals[j].row_stride = ors;
                totals[j].col_stride = ocs;
            }
            have_totals = true;
        }
        if (!q.folded) totals[i].reset(q.t.nrows, d);
        fold_chunk(q.t.nrows, d, q.m, q.l, q.oT, ors, ocs, totals[i]);
        q.folded = true;
    };

    // Few rows (decode) in a one-tile sequence: vectors over the head dim instead of over query rows (see
    // tile_kernels.h). Chosen by the sequence, not by the item, so that the thread count never changes the kernels.
    const TileRows &t = qt[0].t;
    if (job.tiles[b] == 1 && t.nrows <= ROW_LAYOUT_MAX_ROWS && kern.pv_rows != nullptr) {
        kern.pack_q_rows(t.qrows, t.nrows, d, buf.qT);
        std::fill(buf.oT, buf.oT + size_t(t.nrows) * HEADDIM_PAD, Acc(0));
        QueryTile<Acc> &q = qt[0];
        q.oT = buf.oT;  // row layout: oR[r * HEADDIM_PAD + c]
        for (int64_t t0 = q.lo, t1; t0 < q.hi; t0 = t1) {  // tiles on the grid of multiples of BLOCK_N
            if (fa_cancel_rt::check(p->cancel)) return;
            t1 = std::min<int64_t>((t0 / BLOCK_N + 1) * BLOCK_N, q.hi);
            row_layout_tile(job, b, hk, t, mp, t0, int(t1 - t0), buf.qT, buf.oT, buf.m, buf.l, buf);
            if (chunk_ends_at(t1, q.hi, KEY_CHUNK)) fold(0, HEADDIM_PAD, 1);
        }
        if (q.folded) {
            fold(0, HEADDIM_PAD, 1);
            unfold_normalised(t.nrows, d, q.m, q.l, q.oT, HEADDIM_PAD, 1, totals[0]);
        }
        for (int r = 0; r < t.nrows; ++r)
            finish_row(job, b, t.rows[r], buf.oT + r * HEADDIM_PAD, 1, buf.m[r], buf.l[r], mp, q.folded);
        return;
    }

    int64_t band_lo = qt[0].lo, band_hi = qt[0].hi;
    for (int i = 0; i < ntiles; ++i) {
        QueryTile<Acc> &q = qt[i];
        kern.pack_qT(q.t.qrows, q.t.nrows, d, q.nv, q.qT);
        std::memset(static_cast<void *>(q.oT), 0, sizeof(Acc) * size_t(d) * BLOCK_M);
        band_lo = std::min(band_lo, q.lo);
        band_hi = std::max(band_hi, q.hi);
    }
    DropoutParams drop = job.drop;
    drop.batch_index = b;
    // K/V tiles on one grid, multiples of BLOCK_N from key 0 (so a query tile meets the same tile edges whichever
    // item holds it); each query tile takes the part of a tile inside its own band (causal/local tiles outside it
    // are skipped), so the tile just loaded is reused by every query tile of the item.
    // bf16 tiles are half the bytes: there the prefetch measured 1-3% slower (d=64 and 128, tiles prepared once).
    const bool prefetch_next = p->dtype != FA_BF16;
    const int prefetch_slice = (BLOCK_N + ntiles - 1) / ntiles;  // keys of the next tile prefetched per query tile
    KvTile kt, vt;
    kt.packed = buf.kpack;
    vt.packed = buf.vpack;
    for (int64_t g0 = band_lo / BLOCK_N * BLOCK_N; g0 < band_hi; g0 += BLOCK_N) {
        if (fa_cancel_rt::check(p->cancel)) return;
        const int64_t g1 = std::min<int64_t>(g0 + BLOCK_N, band_hi);
        bool used = false;
        for (int i = 0; i < ntiles; ++i) used |= std::max(g0, qt[i].lo) < std::min(g1, qt[i].hi);
        if (!used) continue;  // a gap between the bands of the item's query tiles (local attention)
        // The K/V tile is gathered/prepared once here and read by every query tile of the item.
        kt.nk = vt.nk = int(g1 - g0);
        kt.rows = kv_tile(p, g, hk, g0, kt.nk, false, buf.stage_k, kt.stride);
        vt.rows = kv_tile(p, g, hk, g0, vt.nk, true, buf.stage_v, vt.stride);
        if (kern.prep_k) kern.prep_k(kt, d);
        if (kern.prep_v) kern.prep_v(vt, d);
        for (int i = 0; i < ntiles; ++i) {
            const int64_t pf0 = g0 + BLOCK_N + int64_t(i) * prefetch_slice;
            const int64_t pf1 = std::min<int64_t>(std::min<int64_t>(pf0 + prefetch_slice, g0 + 2 * BLOCK_N), band_hi);
            if (prefetch_next && pf0 < pf1) prefetch_kv_rows(p, g, hk, pf0, int(pf1 - pf0));
            QueryTile<Acc> &q = qt[i];
            const int64_t t0 = std::max(g0, q.lo), t1 = std::min(g1, q.hi);
            if (t0 < t1) lane_layout_tile(job, q, mp, drop, kt, vt, t0, int(t0 - g0), int(t1 - t0), buf);
            if (t0 < t1 && chunk_ends_at(t1, q.hi, KEY_CHUNK)) fold(i, 1, BLOCK_M);
        }
    }
    for (int i = 0; i < ntiles; ++i) {
        QueryTile<Acc> &q = qt[i];
        if (!q.folded) continue;
        fold(i, 1, BLOCK_M);
        unfold_normalised(q.t.nrows, d, q.m, q.l, q.oT, 1, BLOCK_M, totals[i]);
    }
    // One normalisation at the end, transposing O^T back to rows.
    for (int i = 0; i < ntiles; ++i) {
        const QueryTile<Acc> &q = qt[i];
        if (!kern.write_rows) {
            for (int r = 0; r < q.t.nrows; ++r)
                finish_row(job, b, q.t.rows[r], q.oT + r, BLOCK_M, q.m[r], q.l[r], mp, q.folded);
            continue;
        }
        alignas(64) Acc inv_l[BLOCK_M] = {};
        void *out_rows[BLOCK_M];
        for (int r = 0; r < q.t.nrows; ++r) {
            inv_l[r] = q.folded ? Acc(1) : row_inv_sum(q.l[r]);
            out_rows[r] = out_row_ptr(p, g, q.t.rows[r]);
        }
        kern.write_rows(q.oT, q.t.nrows, d, inv_l, out_rows);
        for (int r = 0; r < q.t.nrows; ++r) finish_row_stats(job, b, q.t.rows[r], q.m[r], q.l[r], mp);
    }
}

// Work items of one (sequence, KV head): its query tiles in groups of QUERY_TILES_PER_ITEM.
inline int tile_groups(int tiles, int per_item) { return (tiles + per_item - 1) / per_item; }

// Multiply-adds one more thread must get to be worth waking: ~50-100 us of tile products on one core, several times
// the cost of handing it the job (a few us when it polls, tens of us to wake it from sleep).
constexpr double MIN_MACS_PER_THREAD = 4.0e6;

// Threads for the call: its multiply-adds (rows x visible keys x (d + dv), per query tile and its key band) against
// MIN_MACS_PER_THREAD, counted only until they could keep every allowed thread busy.
template <typename Acc>
int forward_threads(const ForwardJob<Acc> &job, int64_t total_tiles) {
    const fa_params *p = job.p;
    const int most = threads_for_work(total_tiles, INFINITY, 1.0, p->num_threads);
    const double enough = double(most) * MIN_MACS_PER_THREAD;
    const double per_key = double(p->headdim + p->headdim_v);
    double macs = 0;
    for (int b = 0; b < p->batch && macs < enough; ++b) {
        const SeqGeometry &g = job.seqs[b];
        const int64_t rows = int64_t(g.sq) * job.group;
        for (int t = 0; t < job.tiles[b] && macs < enough; ++t) {
            const int64_t r0 = int64_t(t) * BLOCK_M, r1 = std::min<int64_t>(r0 + BLOCK_M, rows);
            const int64_t lo = fa_mask_key_lo(r0 / job.group, g.sq, g.sk, p->window_left);
            const int64_t hi = fa_mask_key_hi((r1 - 1) / job.group, g.sq, g.sk, p->window_right);
            if (hi > lo) macs += double(r1 - r0) * double(hi - lo) * per_key * p->nheads_kv;
        }
    }
    return threads_for_work(total_tiles, macs, MIN_MACS_PER_THREAD, p->num_threads);
}

// The largest power of two <= QUERY_TILES_PER_ITEM that still leaves about 4 work items per thread (load balance).
inline int tiles_per_item(int64_t total_tiles, int threads) {
    int per = QUERY_TILES_PER_ITEM;
    while (per > 1 && total_tiles / per < 4 * int64_t(threads)) per /= 2;
    return per;
}

template <typename Acc>
int forward_impl(const fa_params *p, const TileKernels<Acc> *kern, char *err, size_t errlen) {
    // One job per calling thread and Acc, reused so that its vectors keep their capacity (no allocation per call;
    // calls never nest on a thread). Every field is set below before it is read.
    thread_local ForwardJob<Acc> tl_job;
    ForwardJob<Acc> &job = tl_job;
    job.p = p;
    job.kern = kern;
    job.group = p->nheads_q / p->nheads_kv;
    job.scale = effective_scale(p);
    job.seqs.resize(p->batch);
    job.tiles.resize(p->batch);
    job.item_start.assign(size_t(p->batch) + 1, 0);
    for (int b = 0; b < p->batch; ++b) {
        if (!resolve_sequence(p, b, job.seqs[b], err, errlen)) return FA_ERR_VALUE;
        job.tiles[b] = int32_t((int64_t(job.seqs[b].sq) * job.group + BLOCK_M - 1) / BLOCK_M);
    }
    if (decode_path_applies(p, job.seqs)) {  // few query rows per KV head: decode_forward.cpp
        if (!run_decode(p, job.seqs)) {  // (a cancelled call becomes FA_ERR_CANCELLED in fa_abi.cpp)
            std::snprintf(err, errlen, "cpu forward: a worker failed (out of memory?)");
            return FA_ERR_RUNTIME;
        }
        return FA_OK;
    }
    int64_t total_tiles = 0;
    for (int b = 0; b < p->batch; ++b) total_tiles += int64_t(job.tiles[b]) * p->nheads_kv;
    const int threads = forward_threads(job, total_tiles);
    job.tiles_per_item = tiles_per_item(total_tiles, threads);
    for (int b = 0; b < p->batch; ++b)
        job.item_start[b + 1] = job.item_start[b] + int64_t(tile_groups(job.tiles[b], job.tiles_per_item)) * p->nheads_kv;
    job.dropout = p->dropout_p > 0.0f;
    if (job.dropout) {
        job.drop.seed = p->dropout_seed;
        job.drop.offset = p->dropout_offset;
        job.drop.threshold = dropout_threshold(p->dropout_p);
        job.drop.inv_keep = p->dropout_p < 1.0f ? 1.0 / (1.0 - double(p->dropout_p)) : 0.0;
        job.drop.nheads_q = p->nheads_q;
    }
    const int64_t total = job.item_start[p->batch];
    auto item_fn = [&job](int64_t item) {
        const int b = int(std::upper_bound(job.item_start.begin(), job.item_start.end(), item) - job.item_start.begin()) - 1;
        const int64_t local = item - job.item_start[b];
        const int tiles = job.tiles[b];
        const int groups = tile_groups(tiles, job.tiles_per_item);
        const int hk = int(local / groups);
        // Hand out the last query tiles first: under a causal mask they are the most expensive.
        const int tile0 = (groups - 1 - int(local % groups)) * job.tiles_per_item;
        run_tiles(job, b, hk, tile0, std::min(job.tiles_per_item, tiles - tile0));
    };
    if (!parallel_for(total, item_fn, threads, p->cancel)) {
        std::snprintf(err, errlen, "cpu forward: a worker failed (out of memory?)");
        return FA_ERR_RUNTIME;
    }
    return FA_OK;
}

}  // namespace
}  // namespace fa_cpu

int fa_cpu_forward(const fa_params *p, char *err, size_t errlen) {
    using namespace fa_cpu;
    const fa_cpu::CallEnvScope env;  // FLASH_ATTN_CY_CPU_ISA / _THREAD_CAPS read once for the whole call
    if (!p || !p->q.data || !p->k.data || !p->v.data || !p->out.data) {
        std::snprintf(err, errlen, "cpu forward: q, k, v and out must be non-NULL");
        return FA_ERR_VALUE;
    }
    if (p->headdim < 1 || p->headdim > FA_MAX_HEADDIM || p->nheads_kv <= 0 || p->nheads_q % p->nheads_kv != 0 ||
        p->batch < 0) {
        std::snprintf(err, errlen, "cpu forward: bad shape (headdim=%d, nheads_q=%d, nheads_kv=%d, batch=%d)",
                      p->headdim, p->nheads_q, p->nheads_kv, p->batch);
        return FA_ERR_VALUE;
    }
    if (!(p->dropout_p >= 0.0f && p->dropout_p <= 1.0f)) {
        std::snprintf(err, errlen, "cpu forward: dropout_p must be in [0, 1], got %g", double(p->dropout_p));
        return FA_ERR_VALUE;
    }
    if (p->dtype == FA_F64) return forward_impl<double>(p, portable_kernels_f64(), err, errlen);
    const TileKernels<float> *k = select_kernels_f32(p->dtype);
    if (!k) {
        std::snprintf(err, errlen, "cpu forward: unsupported dtype %d", int(p->dtype));
        return FA_ERR_TYPE;
    }
    return forward_impl<float>(p, k, err, errlen);
}
