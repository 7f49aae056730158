// decode_forward.cpp - decode driver: split-K ("flash-decoding") over the cached keys, all KV heads per work item.
//
// A work item is one KEY RANGE of one sequence for ALL KV heads (the cache layout [.., seqlen, nheads_kv, d] keeps
// every head of a key together, so the kernels of decode_kernels.h read the range as one linear stream). Splitting
// the keys gives every thread work even for batch 1; each split leaves (m, l, unnormalised O) per row, merged by
// their log-sum-exp at the end. Per block of DECODE_BLOCK keys: raw scores of every row, logit features (softcap,
// ALiBi, masks: only when on, masks only on blocks crossing a band edge), online-softmax step, O += P V.
//
// Bits vs threads: the keys of a sequence are cut into UNITS, a function of the problem only (64 keys to a few
// KEY_CHUNKs, at most about MAX_UNITS per call). Every unit starts afresh (running max -inf) and leaves its own result
// (m, l, unnormalised O in fp32: the accumulators of a one-chunk unit, or the double totals of a longer one, folded
// every KEY_CHUNK keys from the unit's start as in key_chunks.h and rounded once), and the merge sums the units in
// key order in double. A work item is a run of whole units, as many per item as the thread count calls for (a few
// items per thread, so that every thread gets work, for batch 1 too); how units are grouped into items changes
// nothing in any unit's arithmetic, so results are identical for every thread count and accurate up to 2^31 keys.
// Extra memory: the unit results, O(units * nheads_q * headdim) floats (at most 1/16 of the K/V bytes read, and
// bounded by MAX_UNITS), plus a per-thread workspace.
#include "decode_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>

#include "cpu_dtype.h"
#include "decode_kernels.h"
#include "key_chunks.h"
#include "row_output.h"
#include "score_features.h"
#include "thread_pool.h"
#include "workspace.h"

namespace fa_cpu {
namespace {

// Units (see the file comment). Short units give many threads work at moderate key counts (an 8k-key cache at
// 8 KV heads x d128 is 32 units of 256 keys in fp32, 16 of 512 in bf16), but each unit costs its result: n rows x
// (d + 2) floats zeroed, written and merged. A unit is therefore the smallest power of two from MIN_UNIT_KEYS to
// KEY_CHUNK keys whose K/V bytes reach both MIN_UNIT_KV_BYTES and UNIT_BYTES_PER_TOTAL_BYTE times its result (a
// function of the problem only), and beyond MAX_UNITS per call units grow by whole chunks (folded into double totals
// every KEY_CHUNK keys), so that the unit results stay small however long the cache. Measured at 1 thread (Zen 5,
// 8k keys, 32/8 heads, d128): units of 1 MiB cost ~5% more than one long split, 2 MiB ~1%, 4 MiB nothing measurable.
constexpr int64_t MIN_UNIT_KEYS = 64;
constexpr double MIN_UNIT_KV_BYTES = 2.0 * 1024 * 1024;
constexpr double UNIT_BYTES_PER_TOTAL_BYTE = 16.0;
constexpr int64_t CHUNK_BLOCKS = KEY_CHUNK / DECODE_BLOCK;
constexpr int64_t MAX_UNITS = 256;  // 64 threads: 4 items each
static_assert(KEY_CHUNK % MIN_UNIT_KEYS == 0 && MIN_UNIT_KEYS % DECODE_BLOCK == 0, "units tile chunks and blocks");
// Work items aimed at per thread: equal items, but threads start at different times (wake-up latency, a busy core).
constexpr int64_t ITEMS_PER_THREAD = 4;
// K/V bytes one more thread must get to be worth waking (~30-100 us of streaming on one core).
constexpr double MIN_KV_BYTES_PER_THREAD = 512.0 * 1024;
// Bytes of unit results one more merge thread must get.
constexpr double MIN_MERGE_BYTES_PER_THREAD = 256.0 * 1024;

struct DecodeJob {
    const fa_params *p;
    const std::vector<SeqGeometry> *seqs;
    const DecodeKernels *kern;
    int group;   // query heads per KV head
    MaskParams mp_base;
    int max_rows;  // query rows per KV head, largest over the sequences
    int pitch;     // row pitch of O (decode_pitch(headdim))
    // Per sequence b: keys [lo, hi) visible to some row, cut into units of unit_blocks[b] blocks; its units are
    // unit_start[b] .. unit_start[b+1] - 1 of the call, its work items item_start[b] .. item_start[b+1] - 1, each
    // of units_per_item[b] units (the last one fewer).
    std::vector<int64_t> lo, hi, unit_blocks, unit_start, item_start, units_per_item;
    // Unit results, unit_floats floats per unit (64-byte aligned): o [n][pitch], then m [n] and l [n] (padded to 16)
    // for the n = nheads_kv * rows(b) rows of its sequence, row (hk, r) at hk * rows(b) + r (the kernels' layout):
    // the fp32 accumulators of a one-chunk unit as they are, or a longer unit's double totals rounded once to fp32
    // (relative to its running max m, unnormalised). Every unit writes all its rows.
    float *results;
    size_t unit_floats;
    size_t ml_pad() const { return (size_t(p->nheads_kv) * max_rows + 15) & ~size_t(15); }
    float *unit_o(int64_t unit) const { return results + size_t(unit) * unit_floats; }
    float *unit_m(int64_t unit) const { return unit_o(unit) + size_t(p->nheads_kv) * max_rows * pitch; }
    float *unit_l(int64_t unit) const { return unit_m(unit) + ml_pad(); }
    int rows(int b) const { return (*seqs)[b].sq * group; }
    int64_t units(int b) const { return unit_start[b + 1] - unit_start[b]; }
};

// Query row r of KV head hk: (query i, head) with the group's heads fastest, as the general forward.
inline RowInfo row_info(const DecodeJob &job, int b, int hk, int r) {
    const fa_params *p = job.p;
    RowInfo row;
    row.i = r / job.group;
    row.head = hk * job.group + r % job.group;
    row.slope = p->alibi_slopes ? p->alibi_slopes[int64_t(b) * p->alibi_batch_stride + row.head] : 0.0f;
    return row;
}

inline MaskParams mask_params(const DecodeJob &job, const SeqGeometry &g) {
    MaskParams mp = job.mp_base;
    mp.offset = int64_t(g.sk) - g.sq;
    mp.sq = g.sq;
    mp.sk = g.sk;
    return mp;
}

// Keys [lo, hi) visible to any query row of sequence g (rows have query indices 0..sq-1).
inline void key_band(const MaskParams &mp, const SeqGeometry &g, int64_t &lo, int64_t &hi) {
    lo = fa_mask_key_lo(0, g.sq, g.sk, mp.window_left);
    hi = fa_mask_key_hi(int64_t(g.sq) - 1, g.sq, g.sk, mp.window_right);
}

// Only blocks crossing the band edge of some row need per-element masks.
inline bool block_needs_mask(const MaskParams &mp, const SeqGeometry &g, int64_t t0, int64_t t1) {
    return !fa_mask_block_full(0, int64_t(g.sq) - 1, t0, t1, g.sq, g.sk, mp.window_left, mp.window_right);
}

thread_local Workspace tl_decode_workspace;  // per worker: packed q, scores, kernel scratch
thread_local Workspace tl_decode_results;    // per calling thread: the unit results (m, l, O)
thread_local Workspace tl_decode_totals;     // per worker: double totals of a unit longer than a chunk

// Units [u0, u1) of sequence b (indices within the sequence), all KV heads.
void decode_item(const DecodeJob &job, int b, int64_t u0, int64_t u1) {
    const fa_params *p = job.p;
    const SeqGeometry &g = (*job.seqs)[b];
    const int R = job.rows(b), hkv = p->nheads_kv, d = p->headdim, n = hkv * R;
    if (R == 0) return;
    const int pitch = job.pitch;
    const MaskParams mp = mask_params(job, g);
    const int64_t lo = job.lo[b], hi = job.hi[b];
    const int64_t nblocks = hi > lo ? (hi - lo + DECODE_BLOCK - 1) / DECODE_BLOCK : 0;

    // Workspace: packed q [n][pitch] (at most 4 bytes an element), scores [n][DECODE_BLOCK], the kernels' partial
    // scores [n][64], q row pointers [n], the fp32 accumulators m, l [n] and o [n][pitch] of units longer than a
    // chunk (a one-chunk unit accumulates in its result slot).
    const size_t q_bytes = size_t(n) * pitch * sizeof(float);
    const size_t s_bytes = size_t(n) * DECODE_BLOCK * sizeof(float);
    const size_t p_bytes = (size_t(n) * sizeof(void *) + 63) & ~size_t(63);
    const size_t ml_bytes = (size_t(n) * sizeof(float) + 63) & ~size_t(63);
    char *ws = tl_decode_workspace.get(2 * q_bytes + 5 * s_bytes + p_bytes + 2 * ml_bytes);
    void *qpack = ws;
    float *sc = reinterpret_cast<float *>(ws + q_bytes);
    float *partial = reinterpret_cast<float *>(ws + q_bytes + s_bytes);
    const void **qrows = reinterpret_cast<const void **>(ws + q_bytes + 5 * s_bytes);
    float *o = reinterpret_cast<float *>(ws + q_bytes + 5 * s_bytes + p_bytes);  // 64-byte aligned rows
    float *m = reinterpret_cast<float *>(ws + 2 * q_bytes + 5 * s_bytes + p_bytes);
    float *l = m + ml_bytes / sizeof(float);
    for (int hk = 0; hk < hkv; ++hk) {
        for (int r = 0; r < R; ++r) {
            const RowInfo ri = row_info(job, b, hk, r);
            qrows[hk * R + r] = elem_ptr(p->q.data, g.q_row0 + int64_t(ri.i) * p->q.row_stride +
                                                        int64_t(ri.head) * p->q.head_stride, p->dtype);
        }
    }
    const DecodeKernels &kern = *job.kern;
    kern.pack_q(qrows, n, d, pitch, qpack);

    const bool features = mp.softcap > 0 || mp.alibi;
    const float mul_plain = float(mp.scale * LOG2E);
    // Key rows of a block by group: krows[grp][u] is key grp + 4u, krows[grp][4 + u] the same key of the next block
    // (nullptr after the last one), for the kernels that prefetch it (see decode_kernels.h).
    const void *krows[4][8], *vrows[4][8];
    const bool multi_chunk = job.unit_blocks[b] > CHUNK_BLOCKS;
    ChunkTotals totals;
    if (multi_chunk) {
        double *t = reinterpret_cast<double *>(tl_decode_totals.get(size_t(n) * (pitch + 2) * sizeof(double)));
        totals.O = t;
        totals.M = t + size_t(n) * pitch;
        totals.L = totals.M + n;
        totals.row_stride = pitch;
        totals.col_stride = 1;
    }
    for (int64_t unit = u0; unit < u1; ++unit) {
        const int64_t gu = job.unit_start[b] + unit;
        if (!multi_chunk) {
            o = job.unit_o(gu);
            m = job.unit_m(gu);
            l = job.unit_l(gu);
        } else {
            totals.reset(n, d);
        }
        // Every unit starts afresh: its bits do not depend on the units before it (nor on which item holds it).
        for (int row = 0; row < n; ++row) {
            m[row] = -INFINITY;
            l[row] = 0.0f;
            std::fill(o + size_t(row) * pitch, o + size_t(row + 1) * pitch, 0.0f);
        }
        const int64_t blk_begin = unit * job.unit_blocks[b];
        const int64_t blk_end = std::min(nblocks, blk_begin + job.unit_blocks[b]);
        for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
            if (fa_cancel_rt::check(p->cancel)) return;
            if (multi_chunk && blk > blk_begin && (blk - blk_begin) % CHUNK_BLOCKS == 0)
                fold_chunk(n, d, m, l, o, pitch, 1, totals);
            const int64_t t0 = lo + blk * DECODE_BLOCK;
            const int nk = int(std::min<int64_t>(DECODE_BLOCK, hi - t0));
            const int64_t t_next = t0 + DECODE_BLOCK;
            const int nk_next = blk + 1 < nblocks ? int(std::min<int64_t>(DECODE_BLOCK, hi - t_next)) : 0;
            for (int grp = 0; grp < 4; ++grp)
                for (int u = 0; u < 4; ++u) {
                    const int j = grp + 4 * u;  // keys past nk repeat the first one (read, never used)
                    if (blk > blk_begin) {  // this block's rows: the previous block's "next" ones, same rule
                        krows[grp][u] = krows[grp][4 + u];
                        vrows[grp][u] = vrows[grp][4 + u];
                    } else {
                        const int64_t row = g.leftpad + t0 + (j < nk ? j : 0);
                        krows[grp][u] = elem_ptr(p->k.data, kv_row_offset(p, g, row, false), p->dtype);
                        vrows[grp][u] = elem_ptr(p->v.data, kv_row_offset(p, g, row, true), p->dtype);
                    }
                    const int64_t next = g.leftpad + t_next + (j < nk_next ? j : 0);
                    krows[grp][4 + u] = nk_next ? elem_ptr(p->k.data, kv_row_offset(p, g, next, false), p->dtype) : nullptr;
                    vrows[grp][4 + u] = nk_next ? elem_ptr(p->v.data, kv_row_offset(p, g, next, true), p->dtype) : nullptr;
                }
            const int groups = std::min(4, nk);  // group grp holds (nk - grp + 3) / 4 keys
            for (int grp = 0; grp < groups; ++grp)
                kern.scores_group(krows[grp], p->k.head_stride, hkv, R, d, pitch, qpack, grp, partial);
            kern.scores_finish(partial, n, sc);
            // logits in log2 units: features and masks (only on blocks crossing a band edge) by the scalar pass
            float mul = mul_plain;
            const bool masked = block_needs_mask(mp, g, t0, t0 + nk);
            if (masked || features) {
                for (int row = 0; row < n; ++row) {
                    const RowInfo ri = row_info(job, b, row / R, row % R);
                    float *sr = sc + row * DECODE_BLOCK;
                    for (int j = 0; j < nk; ++j) sr[j] = logit_log2(mp, sr[j], ri, t0 + j, masked);
                }
                mul = 1.0f;
            }
            kern.softmax(sc, n, nk, mul, m, l, o, d, pitch);
            for (int grp = 0; grp < groups; ++grp)
                kern.pv(vrows[grp], (nk - grp + 3) / 4, p->v.head_stride, hkv, R, d, pitch, sc + grp, 4, o);
        }
        if (multi_chunk) {  // the double totals, rounded once, as the unit's result
            fold_chunk(n, d, m, l, o, pitch, 1, totals);
            float *uo = job.unit_o(gu), *um = job.unit_m(gu), *ul = job.unit_l(gu);
            for (int row = 0; row < n; ++row) {
                um[row] = float(totals.M[row]);
                ul[row] = float(totals.L[row]);
                for (int c = 0; c < d; ++c) uo[size_t(row) * pitch + c] = float(totals.O[size_t(row) * pitch + c]);
            }
        }
    }
}

// out[c] = acc[c] * scale / l for one row of dtype DT. The dtype is a template argument (and d a value) because the
// stores through orow could alias *p: read from p inside the loop they would be reloaded per element and keep the
// loop scalar. 0.0 + ...: the general sum starts from +0, so a -0 product comes out +0 here too.
template <fa_dtype DT, typename A>
void store_row(void *orow, const A *acc, double scale, double inv, int d) {
    for (int c = 0; c < d; ++c) store_elem<float>(orow, c, DT, float((0.0 + scale * double(acc[c])) * inv));
}

// Normalise one row and write it out with its LSE (natural log; +inf when the row saw no key): out = acc * scale
// / l, acc a unit's fp32 O row as it is, or the merge's double totals.
template <typename A>
void write_row(const DecodeJob &job, int b, const RowInfo &row, const A *acc, double scale, double m, double l) {
    const fa_params *p = job.p;
    const SeqGeometry &g = (*job.seqs)[b];
    const double inv = row_inv_sum(l);
    void *orow = out_row_ptr(p, g, row);
    switch (p->dtype) {
        case FA_F32: store_row<FA_F32>(orow, acc, scale, inv, p->headdim); break;
        case FA_F16: store_row<FA_F16>(orow, acc, scale, inv, p->headdim); break;
        case FA_BF16: store_row<FA_BF16>(orow, acc, scale, inv, p->headdim); break;
        case FA_F64: store_row<FA_F64>(orow, acc, scale, inv, p->headdim); break;
    }
    write_row_lse(p, g, row, m, l);
}

// Merge the units of (sequence b, KV head hk), in key order: rescale each by 2^(m_u - M) and normalise once.
// A sequence of one unit (every decode step on a short cache) has nothing to merge: its weight is 2^0 = 1, so its
// row is written straight from the unit's O with the very bits the general sum would give.
void decode_merge(const DecodeJob &job, int b, int hk) {
    const int R = job.rows(b);
    const int64_t first = job.unit_start[b], units = job.units(b);
    double acc[FA_MAX_HEADDIM];
    for (int r = 0; r < R; ++r) {
        const size_t row = size_t(hk) * R + r;
        double M = -INFINITY;
        bool nan_seen = false;  // a NaN/inf input makes a unit's row sum NaN; the merged row must stay NaN
        for (int64_t u = 0; u < units; ++u) {
            M = std::max(M, double(job.unit_m(first + u)[row]));
            nan_seen |= std::isnan(job.unit_l(first + u)[row]);
        }
        const RowInfo info = row_info(job, b, hk, r);
        const double l1 = job.unit_l(first)[row];
        if (units == 1 && M != -INFINITY && l1 != 0.0) {  // (an empty unit takes the general path: zeros)
            const double w = std::exp2(double(job.unit_m(first)[row]) - M);
            write_row(job, b, info, job.unit_o(first) + row * job.pitch, w, M, nan_seen ? NAN : 0.0 + l1 * w);
            continue;
        }
        double L = 0.0;
        std::fill(acc, acc + job.p->headdim, 0.0);
        if (M != -INFINITY) {
            for (int64_t u = 0; u < units; ++u) {  // in key order: the same bits for any schedule
                const double lu = job.unit_l(first + u)[row];
                if (lu == 0.0) continue;
                const double w = std::exp2(double(job.unit_m(first + u)[row]) - M);
                L += lu * w;
                const float *os = job.unit_o(first + u) + row * job.pitch;
                for (int c = 0; c < job.p->headdim; ++c) acc[c] += w * double(os[c]);
            }
        }
        if (nan_seen) L = NAN;
        write_row(job, b, info, acc, 1.0, M, L);
    }
}

}  // namespace

bool decode_path_applies(const fa_params *p, const std::vector<SeqGeometry> &seqs) {
    if (p->dtype == FA_F64 || p->dropout_p > 0.0f || p->attn_probs || p->headdim_v != p->headdim) return false;
    if (!select_decode_kernels(p->dtype)) return false;
    const int group = p->nheads_q / p->nheads_kv;
    for (const SeqGeometry &g : seqs)
        if (int64_t(g.sq) * group > DECODE_MAX_ROWS) return false;
    return true;
}

bool run_decode(const fa_params *p, const std::vector<SeqGeometry> &seqs) {
    // One job per calling thread, reused: its vectors keep their capacity, so a decode step allocates nothing (six
    // mallocs and frees were ~5% of a one-token call's host time). Every field is set below before it is read.
    thread_local DecodeJob tl_job;
    DecodeJob &job = tl_job;
    job.p = p;
    job.seqs = &seqs;
    job.kern = select_decode_kernels(p->dtype);
    job.group = p->nheads_q / p->nheads_kv;
    job.mp_base.offset = 0;
    job.mp_base.window_left = p->window_left;
    job.mp_base.window_right = p->window_right;
    job.mp_base.scale = p->softmax_scale;
    job.mp_base.softcap = p->softcap;
    job.mp_base.alibi = p->alibi_slopes != nullptr;
    const int batch = p->batch;
    job.max_rows = 0;
    for (int b = 0; b < batch; ++b) job.max_rows = std::max(job.max_rows, job.rows(b));

    // Units: a function of the problem only (bits), see the file comment.
    const int64_t max_units_per_seq = std::max<int64_t>(1, (MAX_UNITS + batch - 1) / std::max(1, batch));
    const double key_bytes = 2.0 * p->nheads_kv * p->headdim * dtype_size(p->dtype);
    const double total_bytes = double(p->nheads_kv) * job.max_rows * (decode_pitch(p->headdim) + 2) * sizeof(float);
    const double unit_bytes = std::max(MIN_UNIT_KV_BYTES, UNIT_BYTES_PER_TOTAL_BYTE * total_bytes);
    int64_t short_unit_keys = MIN_UNIT_KEYS;
    while (short_unit_keys < KEY_CHUNK && double(short_unit_keys) * key_bytes < unit_bytes) short_unit_keys *= 2;
    job.lo.assign(batch, 0);
    job.hi.assign(batch, 0);
    job.unit_blocks.assign(batch, CHUNK_BLOCKS);
    job.unit_start.assign(size_t(batch) + 1, 0);
    double kv_bytes = 0;
    for (int b = 0; b < batch; ++b) {
        const SeqGeometry &g = seqs[b];
        int64_t units = 0;
        if (job.rows(b) > 0) {
            key_band(mask_params(job, g), g, job.lo[b], job.hi[b]);
            const int64_t keys = std::max<int64_t>(0, job.hi[b] - job.lo[b]);
            int64_t unit_keys = short_unit_keys;
            if ((keys + unit_keys - 1) / unit_keys > max_units_per_seq) {  // long: whole chunks per unit
                const int64_t chunks = (keys + KEY_CHUNK - 1) / KEY_CHUNK;
                unit_keys = KEY_CHUNK * ((chunks + max_units_per_seq - 1) / max_units_per_seq);
            }
            job.unit_blocks[b] = unit_keys / DECODE_BLOCK;
            units = std::max<int64_t>(1, (keys + unit_keys - 1) / unit_keys);  // 1: empty band
            kv_bytes += 2.0 * double(keys) * p->nheads_kv * p->headdim * dtype_size(p->dtype);
        }
        job.unit_start[b + 1] = job.unit_start[b] + units;
    }
    const int64_t total_units = job.unit_start[batch];

    // Work items: runs of units, a few per thread (the grouping never changes the bits).
    const int threads = threads_for_work(total_units, kv_bytes, MIN_KV_BYTES_PER_THREAD, p->num_threads);
    const int64_t per_item = std::max<int64_t>(1, total_units / (ITEMS_PER_THREAD * threads));
    job.units_per_item.assign(batch, per_item);
    job.item_start.assign(size_t(batch) + 1, 0);
    for (int b = 0; b < batch; ++b) {
        int64_t &upi = job.units_per_item[b];
        if (p->num_splits > 0) upi = std::max(upi, (job.units(b) + p->num_splits - 1) / p->num_splits);
        job.item_start[b + 1] = job.item_start[b] + (job.units(b) + upi - 1) / upi;
    }

    job.pitch = decode_pitch(p->headdim);
    job.unit_floats = size_t(p->nheads_kv) * job.max_rows * job.pitch + 2 * job.ml_pad();
    job.results = reinterpret_cast<float *>(tl_decode_results.get(size_t(total_units) * job.unit_floats * sizeof(float)));
    const bool ok = parallel_for(job.item_start[batch], [&](int64_t item) {
        const int b = int(std::upper_bound(job.item_start.begin(), job.item_start.end(), item) - job.item_start.begin()) - 1;
        const int64_t u0 = (item - job.item_start[b]) * job.units_per_item[b];
        decode_item(job, b, u0, std::min(job.units(b), u0 + job.units_per_item[b]));
    }, threads, p->cancel);
    const double merge_bytes = double(total_units) * job.unit_floats * sizeof(float);
    const int merge_threads = threads_for_work(int64_t(batch) * p->nheads_kv, merge_bytes, MIN_MERGE_BYTES_PER_THREAD,
                                               p->num_threads);
    return ok && parallel_for(int64_t(batch) * p->nheads_kv, [&](int64_t item) {
        decode_merge(job, int(item / p->nheads_kv), int(item % p->nheads_kv));
    }, merge_threads, p->cancel);
}

}  // namespace fa_cpu
