// bwd_geometry.h - where sequence b's rows live and which (query, key) pairs the masks let through.
//
// Same conventions as the forward (csrc/fa_abi.h): dense or packed (cu_seqlens) layout, seqused_k limiting the keys,
// causal/window masks aligned bottom-right with -1 meaning unbounded.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fa_abi.h"
#include "fa_mask.h"

namespace fa_bwd {

struct SeqGeometry {
    int64_t q_row0 = 0;  // first packed row of the sequence in q/out/dout/dq (0 in dense layout)
    int64_t k_row0 = 0;  // first packed row in k/v/dk/dv
    int64_t sq = 0;      // query rows
    int64_t sk = 0;      // key rows actually attended (seqused_k applied)
    int64_t sk_rows = 0; // key rows the sequence owns in k/v (>= sk); rows sk..sk_rows-1 get zero dk/dv
    int64_t diag = 0;    // sk - sq: bottom-right alignment of the masks
};

inline SeqGeometry sequence_geometry(const fa_params *p, int64_t b) {
    SeqGeometry g;
    if (p->cu_seqlens_q) {
        g.q_row0 = p->cu_seqlens_q[b];
        g.sq = (int64_t)p->cu_seqlens_q[b + 1] - p->cu_seqlens_q[b];
    } else {
        g.sq = p->seqlen_q;
    }
    if (p->cu_seqlens_k) {
        g.k_row0 = p->cu_seqlens_k[b];
        g.sk_rows = (int64_t)p->cu_seqlens_k[b + 1] - p->cu_seqlens_k[b];
    } else {
        g.sk_rows = p->seqlen_k;
    }
    g.sk = p->seqused_k ? std::min<int64_t>(p->seqused_k[b], g.sk_rows) : g.sk_rows;
    if (g.sk < 0) g.sk = 0;
    g.diag = g.sk - g.sq;
    return g;
}

// The band rule of kernels/fa_mask.h (the one definition shared with the forward and the Metal kernels), in the
// inclusive bounds this backward's loops use.
struct MaskWindow {
    int left = -1, right = -1;  // -1 = unbounded
    // The keys query row i may see: [key_lo(i), key_hi(i)] intersected with [0, sk).
    int64_t key_lo(int64_t i, const SeqGeometry &g) const { return fa_mask_key_lo(i, g.sq, g.sk, left); }
    int64_t key_hi(int64_t i, const SeqGeometry &g) const {  // inclusive
        return fa_mask_key_hi(i, g.sq, g.sk, right) - 1;
    }
    // Query rows that see at least one key of [j0, j1): [row_lo, row_hi] intersected with [0, sq).
    int64_t row_lo(int64_t j0, const SeqGeometry &g) const { return fa_mask_row_lo(j0, g.sq, g.sk, right); }
    int64_t row_hi(int64_t j1, const SeqGeometry &g) const {  // inclusive
        return fa_mask_row_hi(j1 - 1, g.sq, g.sk, left) - 1;
    }
    bool visible(int64_t i, int64_t j, const SeqGeometry &g) const {
        return fa_mask_visible(i, j, g.sq, g.sk, left, right);
    }
    // Every pair of the tile rows [i0, i1) x keys [j0, j1) is visible (no per-element masking needed).
    bool tile_fully_visible(int64_t i0, int64_t i1, int64_t j0, int64_t j1, const SeqGeometry &g) const {
        return i1 <= g.sq && fa_mask_block_full(i0, i1 - 1, j0, j1, g.sq, g.sk, left, right);
    }
};

inline MaskWindow mask_window(const fa_params *p) {
    MaskWindow w;
    w.left = p->window_left < 0 ? -1 : p->window_left;
    w.right = p->window_right < 0 ? -1 : p->window_right;
    return w;
}

}  // namespace fa_bwd
