// key_chunks.h - accumulation over very long key ranges: blocked partial sums merged through the running max.
//
// The online softmax adds every K/V tile's row sums (l) and P·V products (O) into fp32 accumulators. Each addition
// rounds to the accumulator's ulp, so after n keys the error grows like n * eps: with a constant tile sum the
// rounding is systematic, and at 2^26 keys an fp32 sum of ~2^26 stops absorbing tile sums of ~40 altogether (the
// output was off by 0.4). Here the fp32 accumulators only ever hold one chunk of KEY_CHUNK keys: at every chunk
// boundary (fixed key positions: multiples of KEY_CHUNK from key 0 in the tiled forward, from the first key of its
// split in decode, whose splits depend on the shape only) the chunk's (l, O), relative to
// the running max m, is folded into a double total (L, O_total) and the fp32 accumulators restart from zero. The
// kernels add one key at a time (O += p v, l += p), and the relative error of n such adds is at worst about n/2 ulps
// (measured: 1.2e-6 at 512 constant, badly rounded addends, 1e-5 at 2048); the double totals add ~1e-16 per fold,
// so the result keeps the accuracy of a 512-key call up to the ABI's 2^31 - 1 keys.
//
// The chunk boundaries sit at fixed absolute key positions, never at thread or work-item boundaries, so folding
// changes nothing about determinism (results are the same for every thread count). Rows whose visible keys fit one
// chunk never fold and keep the plain fp32 path bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

namespace fa_cpu {

// Keys per chunk: 8 tiles of the forward, 32 blocks of decode. A fold costs ~3 operations per row and head-dim
// element per chunk (~1% of the chunk's work; at 2048 keys the worst-case error was 4x the fp32 tolerance floor).
constexpr int64_t KEY_CHUNK = 512;

// True when keys [.., t1) end a chunk of `chunk_keys` that keys up to `hi` continue past (a fold is due).
inline bool chunk_ends_at(int64_t t1, int64_t hi, int64_t chunk_keys) { return t1 < hi && t1 % chunk_keys == 0; }

// The double totals of `rows` rows: M (running max at the last fold, log2 units), L, and O with element c of row r at
// O[r * row_stride + c * col_stride] (the layout of the fp32 accumulator it folds).
struct ChunkTotals {
    double *M, *L, *O;
    int64_t row_stride, col_stride;
    void reset(int rows, int d) {
        for (int r = 0; r < rows; ++r) {
            M[r] = -INFINITY;
            L[r] = 0.0;
        }
        // Along the contiguous axis: the forward's O^T columns are 512 bytes apart, and a row-by-row sweep there
        // wrote one double per cache line (~2.5% of the fp32 d=128, 2048-key AVX2 forward sat in that loop).
        if (row_stride == 1) {
            for (int c = 0; c < d; ++c)
                for (int r = 0; r < rows; ++r) O[c * col_stride + r] = 0.0;
            return;
        }
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < d; ++c) O[r * row_stride + c * col_stride] = 0.0;
    }
};

// Folds the fp32 chunk accumulators (m: running max, l, o with o's element (r, c) at o[r*ors + c*ocs]) into `t`
// and restarts l and o from zero (m is kept: it is still the max of everything seen). m only grows, so the total
// rescales by exp2(M - m) <= 1. NaN in l, o or m stays NaN in the total, as it would in one long fp32 sum.
// The element loops run along the contiguous axis (rows of the forward's O^T, at most LANE_ROWS of them; columns of
// the row-major O of decode and the row layout), so they vectorise.
constexpr int LANE_ROWS = 64;  // rows of a forward tile (BLOCK_M)

template <typename Acc>
inline double fold_row_stats(int r, const Acc *m, Acc *l, ChunkTotals &t) {
    const double mm = double(m[r]);
    const double scale = t.M[r] == -INFINITY ? 0.0 : std::exp2(t.M[r] - mm);
    t.L[r] = t.L[r] * scale + double(l[r]);
    l[r] = Acc(0);
    t.M[r] = mm;
    return scale;
}

template <typename Acc>
inline void fold_chunk(int rows, int d, const Acc *m, Acc *l, Acc *o, int64_t ors, int64_t ocs, ChunkTotals &t) {
    if (ors == 1 && t.row_stride == 1 && rows <= LANE_ROWS) {  // O^T [d][rows]: rows contiguous
        double scale[LANE_ROWS];
        for (int r = 0; r < rows; ++r) scale[r] = fold_row_stats(r, m, l, t);
        for (int c = 0; c < d; ++c) {
            double *O = t.O + c * t.col_stride;
            Acc *oc = o + c * ocs;
            for (int r = 0; r < rows; ++r) {
                O[r] = O[r] * scale[r] + double(oc[r]);
                oc[r] = Acc(0);
            }
        }
        return;
    }
    for (int r = 0; r < rows; ++r) {
        const double scale = fold_row_stats(r, m, l, t);
        double *O = t.O + r * t.row_stride;
        Acc *orow = o + r * ors;
        for (int c = 0; c < d; ++c) {
            O[c * t.col_stride] = O[c * t.col_stride] * scale + double(orow[c * ocs]);
            orow[c * ocs] = Acc(0);
        }
    }
}

// After the last fold: o = O_total / L_total in the accumulator (so that a write-out with 1/l = 1 stores it),
// m = M and l = L for the LSE. Rows with L = 0 (no key seen) keep o = 0, l = 0; a NaN L gives NaN, as row_inv_sum.
template <typename Acc>
inline void unfold_normalised(int rows, int d, Acc *m, Acc *l, Acc *o, int64_t ors, int64_t ocs, const ChunkTotals &t) {
    auto inv_of = [&](int r) {
        const double L = t.L[r];
        m[r] = Acc(t.M[r]);
        l[r] = Acc(L);
        return !(L <= 0) ? 1.0 / L : 0.0;
    };
    if (ors == 1 && t.row_stride == 1 && rows <= LANE_ROWS) {
        double inv[LANE_ROWS];
        for (int r = 0; r < rows; ++r) inv[r] = inv_of(r);
        for (int c = 0; c < d; ++c) {
            const double *O = t.O + c * t.col_stride;
            Acc *oc = o + c * ocs;
            for (int r = 0; r < rows; ++r) oc[r] = Acc(O[r] * inv[r]);
        }
        return;
    }
    for (int r = 0; r < rows; ++r) {
        const double inv = inv_of(r);
        const double *O = t.O + r * t.row_stride;
        Acc *orow = o + r * ors;
        for (int c = 0; c < d; ++c) orow[c * ocs] = Acc(O[c * t.col_stride] * inv);
    }
}

}  // namespace fa_cpu
