// decode_forward.cpp - decode driver: split-K ("flash-decoding") over the cached keys, all KV heads per work item.
//
// A work item is one KEY RANGE of one sequence for ALL KV heads (the cache layout [.., seqlen, nheads_kv, d] keeps
// every head of a key together, so the kernels of decode_kernels.h read the range as one linear stream). Splitting
// the keys gives every thread work even for batch 1; each split leaves (m, l, unnormalised O) per row, merged by
// their log-sum-exp at the end. Per block of DECODE_BLOCK keys: raw scores of every row, logit features (softcap,
// ALiBi, masks: only when on, masks only on blocks crossing a band edge), online-softmax step, O += P V.
// Bits: the number of splits depends on the batch and key count only (never on the thread count), the fp32
// accumulators fold into double totals every KEY_CHUNK keys and at the split's end (key_chunks.h), and the merge
// sums the splits in order in double, so results are identical for every thread count and accurate up to 2^31 keys.
// Extra memory: O(batch * splits * nheads_q * headdim) for the partial results, plus a per-thread workspace.
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

// Keys per split at least: the per-item setup (packing q, the fold, the merge) stays negligible next to streaming
// them, and each split streams long enough for the hardware prefetchers (256-key splits measured 1.4-2x slower on 2
// threads than the 2048-key splits the thread-dependent split used to choose there).
constexpr int64_t MIN_KEYS_PER_SPLIT = 1024;
// Work items (splits times batch) aimed at: 2 per thread on 16 threads, fixed so that the split - and with it the bits
// of the result - does not depend on the thread count of the machine or the call.
constexpr int64_t TARGET_ITEMS = 32;

struct DecodeJob {
    const fa_params *p;
    const std::vector<SeqGeometry> *seqs;
    const DecodeKernels *kern;
    int group;   // query heads per KV head
    int splits;  // key ranges per sequence
    MaskParams mp_base;
    int max_rows;  // query rows per KV head, largest over the sequences
    int pitch;     // row pitch of O (decode_pitch(headdim))
    // Partial results (double totals of key_chunks.h), [batch][splits][nheads_kv * max_rows slots]; row (hk, r) of
    // sequence b is slot hk * rows(b) + r (the kernels' layout). Every item writes all its rows.
    double *m, *l, *o;
    size_t slot0(int b, int s) const { return (size_t(b) * splits + s) * size_t(p->nheads_kv) * max_rows; }
    int rows(int b) const { return (*seqs)[b].sq * group; }
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
thread_local Workspace tl_decode_partials;   // per calling thread: the splits' (m, l, O)

// Keys of split s of sequence b, all KV heads.
void decode_item(const DecodeJob &job, int b, int s) {
    const fa_params *p = job.p;
    const SeqGeometry &g = (*job.seqs)[b];
    const int R = job.rows(b), hkv = p->nheads_kv, d = p->headdim, n = hkv * R;
    if (R == 0) return;
    const int pitch = job.pitch;
    ChunkTotals totals;
    totals.M = job.m + job.slot0(b, s);
    totals.L = job.l + job.slot0(b, s);
    totals.O = job.o + job.slot0(b, s) * pitch;
    totals.row_stride = pitch;
    totals.col_stride = 1;
    totals.reset(n, d);
    const MaskParams mp = mask_params(job, g);
    int64_t lo, hi;
    key_band(mp, g, lo, hi);
    const int64_t nblocks = hi > lo ? (hi - lo + DECODE_BLOCK - 1) / DECODE_BLOCK : 0;
    const int64_t blk_begin = nblocks * s / job.splits, blk_end = nblocks * (s + 1) / job.splits;
    if (blk_begin >= blk_end) return;

    // Workspace: packed q [n][pitch] (at most 4 bytes an element), scores [n][DECODE_BLOCK], the kernels' partial
    // scores [n][64], q row pointers [n], the fp32 accumulators m, l [n] and o [n][pitch].
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
    for (int row = 0; row < n; ++row) {
        m[row] = -INFINITY;
        l[row] = 0.0f;
        std::fill(o + size_t(row) * pitch, o + size_t(row + 1) * pitch, 0.0f);
    }
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
    // Key rows of a block by group: krows[4*grp + u] is key grp + 4u (see decode_kernels.h).
    const void *krows[DECODE_BLOCK], *vrows[DECODE_BLOCK];
    for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
        if (fa_cancel_rt::check(p->cancel)) return;
        if (blk > blk_begin && (blk - blk_begin) % (KEY_CHUNK / DECODE_BLOCK) == 0) fold_chunk(n, d, m, l, o, pitch, 1, totals);
        const int64_t t0 = lo + blk * DECODE_BLOCK;
        const int nk = int(std::min<int64_t>(DECODE_BLOCK, hi - t0));
        for (int grp = 0; grp < 4; ++grp)
            for (int u = 0; u < 4; ++u) {
                const int j = grp + 4 * u;  // keys past nk repeat the first one (read, never used)
                const int64_t row = g.leftpad + t0 + (j < nk ? j : 0);
                krows[4 * grp + u] = elem_ptr(p->k.data, kv_row_offset(p, g, row, false), p->dtype);
                vrows[4 * grp + u] = elem_ptr(p->v.data, kv_row_offset(p, g, row, true), p->dtype);
            }
        const int groups = std::min(4, nk);  // group grp holds (nk - grp + 3) / 4 keys
        for (int grp = 0; grp < groups; ++grp)
            kern.scores_group(krows + 4 * grp, p->k.head_stride, hkv, R, d, pitch, qpack, grp, partial);
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
            kern.pv(vrows + 4 * grp, (nk - grp + 3) / 4, p->v.head_stride, hkv, R, d, pitch, sc + grp, 4, o);
    }
    fold_chunk(n, d, m, l, o, pitch, 1, totals);
}

// Normalise one row and write it out with its LSE (natural log; +inf when the row saw no key).
void write_row(const DecodeJob &job, int b, const RowInfo &row, const double *acc, double m, double l) {
    const fa_params *p = job.p;
    const SeqGeometry &g = (*job.seqs)[b];
    const double inv = row_inv_sum(l);
    void *orow = out_row_ptr(p, g, row);
    for (int c = 0; c < p->headdim; ++c) store_elem<float>(orow, c, p->dtype, float(acc[c] * inv));
    write_row_lse(p, g, row, m, l);
}

// Merge the splits of (sequence b, KV head hk): rescale each by 2^(m_s - M) and normalise once.
void decode_merge(const DecodeJob &job, int b, int hk) {
    const int R = job.rows(b);
    double acc[FA_MAX_HEADDIM];
    for (int r = 0; r < R; ++r) {
        const size_t row = size_t(hk) * R + r;
        double M = -INFINITY;
        bool nan_seen = false;  // a NaN/inf input makes a split's row sum NaN; the merged row must stay NaN
        for (int s = 0; s < job.splits; ++s) {
            M = std::max(M, job.m[job.slot0(b, s) + row]);
            nan_seen |= std::isnan(job.l[job.slot0(b, s) + row]);
        }
        double L = 0.0;
        std::fill(acc, acc + FA_MAX_HEADDIM, 0.0);
        if (M != -INFINITY) {
            for (int s = 0; s < job.splits; ++s) {  // in split order: the same bits for any schedule
                const size_t ix = job.slot0(b, s) + row;
                if (job.l[ix] == 0.0) continue;
                const double w = std::exp2(job.m[ix] - M);
                L += job.l[ix] * w;
                const double *os = job.o + ix * job.pitch;
                for (int c = 0; c < job.p->headdim; ++c) acc[c] += w * os[c];
            }
        }
        if (nan_seen) L = NAN;
        write_row(job, b, row_info(job, b, hk, r), acc, M, L);
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
    DecodeJob job;
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
    int64_t max_keys = 0;
    for (const SeqGeometry &g : seqs) max_keys = std::max<int64_t>(max_keys, g.sk);
    const int64_t want = (TARGET_ITEMS + p->batch - 1) / std::max(1, p->batch);
    int64_t splits = std::max<int64_t>(1, std::min<int64_t>(want, max_keys / MIN_KEYS_PER_SPLIT));
    if (p->num_splits > 0) splits = std::min<int64_t>(splits, p->num_splits);
    job.splits = int(splits);
    job.max_rows = 0;
    for (int b = 0; b < p->batch; ++b) job.max_rows = std::max(job.max_rows, job.rows(b));
    const size_t slots = size_t(p->batch) * job.splits * p->nheads_kv * job.max_rows;
    job.pitch = decode_pitch(p->headdim);
    double *partials = reinterpret_cast<double *>(tl_decode_partials.get(slots * (job.pitch + 2) * sizeof(double)));
    job.o = partials;
    job.m = partials + slots * job.pitch;
    job.l = job.m + slots;
    const bool ok = parallel_for(int64_t(p->batch) * job.splits, [&](int64_t item) {
        decode_item(job, int(item / job.splits), int(item % job.splits));
    }, p->num_threads, p->cancel);
    return ok && parallel_for(int64_t(p->batch) * p->nheads_kv, [&](int64_t item) {
        decode_merge(job, int(item / p->nheads_kv), int(item % p->nheads_kv));
    }, p->num_threads, p->cancel);
}

}  // namespace fa_cpu
