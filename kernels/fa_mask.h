// fa_mask.h - the causal / sliding-window band rule, defined once for the Metal kernels and the C++ CPU code.
//
// flash_attn aligns its masks to the bottom-right corner of the score matrix: in a sequence of sq queries and sk keys,
// query i (0 <= i < sq) sees key j (0 <= j < sk) iff
//     i + sk - sq - left <= j <= i + sk - sq + right,
// where left / right are the window sizes, -1 meaning unbounded on that side, and causal is right = 0.
//
// Every function here evaluates that rule in 64-bit integers and returns values clamped to [0, sk] (key bounds) or
// [0, sq] (query bounds), so no legal argument overflows: window sizes up to INT32_MAX and sequence lengths up to
// INT32_MAX give at most about 2^33 in magnitude before clamping, and the clamped results fit in an `int`. Callers
// that work in 32 bits (the Metal kernels) cast those results, never the raw sums. Bounds are half-open: [lo, hi).
// Both bounds are non-decreasing in their argument (the band slides right as i grows), which is what lets callers
// take the band of a block of rows from its first and last row.
//
// Valid MSL and valid C++, like fa_philox.h: no standard headers in MSL (the simulator's strict check poisons them),
// no std:: calls, ternaries instead of min/max (MSL has no 64-bit overloads of every one of them).
#ifndef FA_MASK_H
#define FA_MASK_H

#ifdef __METAL_VERSION__
typedef long fa_mask_i64;
#define FA_MASK_INLINE inline
#else
#include <stdint.h>
typedef int64_t fa_mask_i64;
#define FA_MASK_INLINE static inline
#endif

FA_MASK_INLINE fa_mask_i64 fa_mask_clamp(fa_mask_i64 x, fa_mask_i64 lo, fa_mask_i64 hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

// First key query i may see (keys before it are masked), in [0, sk].
FA_MASK_INLINE fa_mask_i64 fa_mask_key_lo(fa_mask_i64 i, fa_mask_i64 sq, fa_mask_i64 sk, int left) {
    return left < 0 ? fa_mask_i64(0) : fa_mask_clamp(i + (sk - sq) - fa_mask_i64(left), 0, sk);
}

// One past the last key query i may see, in [0, sk]. Query i sees no key when key_hi <= key_lo.
FA_MASK_INLINE fa_mask_i64 fa_mask_key_hi(fa_mask_i64 i, fa_mask_i64 sq, fa_mask_i64 sk, int right) {
    return right < 0 ? sk : fa_mask_clamp(i + (sk - sq) + fa_mask_i64(right) + 1, 0, sk);
}

// First query row that may see key j (rows before it end left of j), in [0, sq].
FA_MASK_INLINE fa_mask_i64 fa_mask_row_lo(fa_mask_i64 j, fa_mask_i64 sq, fa_mask_i64 sk, int right) {
    return right < 0 ? fa_mask_i64(0) : fa_mask_clamp(j - (sk - sq) - fa_mask_i64(right), 0, sq);
}

// One past the last query row that may see key j, in [0, sq].
FA_MASK_INLINE fa_mask_i64 fa_mask_row_hi(fa_mask_i64 j, fa_mask_i64 sq, fa_mask_i64 sk, int left) {
    return left < 0 ? sq : fa_mask_clamp(j - (sk - sq) + fa_mask_i64(left) + 1, 0, sq);
}

// Does query i see key j? (0 <= i < sq; any j: keys outside [0, sk) are never visible.)
FA_MASK_INLINE bool fa_mask_visible(fa_mask_i64 i, fa_mask_i64 j, fa_mask_i64 sq, fa_mask_i64 sk, int left, int right) {
    return j >= fa_mask_key_lo(i, sq, sk, left) && j < fa_mask_key_hi(i, sq, sk, right);
}

// Does every query of rows [i_lo, i_hi] see every key of [j0, j1)? (Then a tile needs no per-element mask.)
// Keys past sk are not visible, so a tile reaching past the end of the keys is never fully visible.
FA_MASK_INLINE bool fa_mask_block_full(fa_mask_i64 i_lo, fa_mask_i64 i_hi, fa_mask_i64 j0, fa_mask_i64 j1,
                                       fa_mask_i64 sq, fa_mask_i64 sk, int left, int right) {
    return fa_mask_key_lo(i_hi, sq, sk, left) <= j0 && j1 <= fa_mask_key_hi(i_lo, sq, sk, right);
}

#endif  // FA_MASK_H
