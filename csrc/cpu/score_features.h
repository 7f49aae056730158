// score_features.h - the scalar passes that turn raw Q·K^T tiles into flash_attn's logits and apply dropout.
//
// They only run on tiles that need them: boundary tiles of a causal/local band, or every tile when softcap, ALiBi
// or dropout is on. Interior tiles of plain attention go straight to the vectorized softmax kernel.
#pragma once

#include <cmath>
#include <cstdint>

#include "fa_mask.h"
#include "fa_philox.h"
#include "tile_kernels.h"

namespace fa_cpu {

constexpr double LOG2E = 1.4426950408889634;
constexpr double LN2 = 0.6931471805599453;

// What a tile row (one query of one head) needs to evaluate masks and biases.
struct RowInfo {
    int32_t i;      // query index within its sequence
    int32_t head;   // query head
    float slope;    // ALiBi slope (0 when off)
};

struct MaskParams {
    int64_t offset;      // sk - sq: bottom-right alignment (ALiBi distances)
    int64_t sq, sk;      // the sequence's query and key counts (the band rule of kernels/fa_mask.h)
    int32_t window_left, window_right;  // -1 = unbounded
    double scale, softcap;  // double so the fp64 path keeps full precision
    bool alibi;
};

inline bool key_visible(const MaskParams &mp, int64_t i, int64_t j) {
    return fa_mask_visible(i, j, mp.sq, mp.sk, mp.window_left, mp.window_right);
}

// One logit in log2 units: softcap, then ALiBi, then the mask (flash_attn's order). Acc is float or double.
template <typename Acc>
inline Acc logit_log2(const MaskParams &mp, Acc qk, const RowInfo &row, int64_t key, bool masked_tile) {
    if (masked_tile && !key_visible(mp, row.i, key)) return Acc(-INFINITY);
    Acc s = qk * Acc(mp.scale);
    if (mp.softcap > 0) s = Acc(mp.softcap) * std::tanh(s / Acc(mp.softcap));
    if (mp.alibi) {
        const int64_t dist = row.i + mp.offset - key;
        s -= Acc(row.slope) * Acc(dist < 0 ? -dist : dist);
    }
    return s * Acc(LOG2E);
}

// Replace the raw dot products of a tile (keys key0..key0+nk-1) by log2-domain logits.
template <typename Acc>
void apply_score_features(Acc *sT, int nk, int nrows, int lanes, const RowInfo *rows, int64_t key0,
                          const MaskParams &mp, bool masked_tile) {
    for (int j = 0; j < nk; ++j) {
        Acc *s = sT + j * BLOCK_M;
        for (int r = 0; r < nrows; ++r) s[r] = logit_log2(mp, s[r], rows[r], key0 + j, masked_tile);
        for (int r = nrows; r < lanes; ++r) s[r] = Acc(-INFINITY);  // padding lanes: no contribution
    }
}

// Boundary tiles of a causal/local band when no softcap or ALiBi is on: the rows of a tile are in non-decreasing
// query order, so the rows that cannot see key j are a prefix (past the right edge) and a suffix (before the left
// edge), and both grow with j. Filling them with -inf leaves the raw products of the visible rows for the softmax to
// scale, so a boundary tile costs two short fills per key instead of the scalar logit pass above (which made causal
// attention at seqlen <= 2048 barely cheaper than non-causal). Only for a positive scale: the softmax multiplies the
// -inf by it.
template <typename Acc>
void mask_band_edges(Acc *sT, int nk, int nrows, int lanes, const RowInfo *rows, int64_t key0, const MaskParams &mp) {
    int past_right = 0;     // rows [0, past_right) end before key j
    int before_left = 0;    // rows [before_left, nrows) start after key j
    for (int j = 0; j < nk; ++j) {
        const int64_t key = key0 + j;
        while (past_right < nrows && fa_mask_key_hi(rows[past_right].i, mp.sq, mp.sk, mp.window_right) <= key)
            ++past_right;
        while (before_left < nrows && fa_mask_key_lo(rows[before_left].i, mp.sq, mp.sk, mp.window_left) <= key)
            ++before_left;
        Acc *s = sT + int64_t(j) * BLOCK_M;
        for (int r = 0; r < past_right; ++r) s[r] = Acc(-INFINITY);
        for (int r = before_left > past_right ? before_left : past_right; r < lanes; ++r) s[r] = Acc(-INFINITY);
    }
}

struct DropoutParams {
    uint64_t seed, offset;
    uint32_t threshold;  // keep iff philox word >= threshold
    double inv_keep;     // 1 / (1 - p), double for the fp64 path
    int32_t nheads_q;
    int32_t batch_index;
};

inline uint32_t dropout_threshold(float p) {
    const double t = std::floor(double(p) * 4294967296.0);
    return t >= 4294967295.0 ? 0xffffffffu : uint32_t(t);
}

// Multiply probabilities of a tile by keep/(1-p), dropping with the shared Philox stream. The running sum l was
// already updated with the un-dropped values (flash_attn normalises by the full softmax sum).
template <typename Acc>
void apply_dropout(Acc *sT, int nk, int nrows, const RowInfo *rows, int64_t key0, const DropoutParams &dp) {
    for (int r = 0; r < nrows; ++r) {
        const uint32_t bh = uint32_t(dp.batch_index) * uint32_t(dp.nheads_q) + uint32_t(rows[r].head);
        int j = 0;
        while (j < nk) {
            const uint32_t col = uint32_t(key0 + j);
            fa_philox_out w = fa_dropout_words(dp.seed, dp.offset, bh, uint32_t(rows[r].i), col);
            // this Philox call covers columns up to (col | 3)
            for (uint32_t c = col; j < nk && c <= (col | 3u); ++c, ++j) {
                Acc &p = sT[j * BLOCK_M + r];
                p = w.w[c & 3u] >= dp.threshold ? p * Acc(dp.inv_keep) : Acc(0);
            }
        }
    }
}

}  // namespace fa_cpu
