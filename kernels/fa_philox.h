// fa_philox.h - the dropout mask generator shared by the Metal kernels and the CPU backend.
//
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the counter-based generator
// flash_attn and PyTorch use. Because the mask is a pure function of (seed, offset, batch, head, row, column), the
// forward and the backward regenerate the same mask without storing it, and every backend (cpu, sim, metal) produces
// the identical mask for the same seed. This header is valid MSL and valid C++; keep it free of anything else.
//
// Mapping (our own, documented in README "Dropout"): key = (lo32(seed), hi32(seed)); counter =
// (col / 4, row, batch * nheads + head, lo32(offset) ^ hi32(offset) * 0x9E3779B9); the element uses word col % 4
// of the Philox output. It is kept iff that 32-bit word >= dropout threshold, threshold = floor(p * 2^32) clamped to
// 2^32 - 1, so the keep probability is 1 - p up to 2^-32.
#ifndef FA_PHILOX_H
#define FA_PHILOX_H

#ifdef __METAL_VERSION__
typedef uint fa_u32;
typedef ulong fa_u64;
#define FA_PHILOX_INLINE inline
#else
#include <stdint.h>
typedef uint32_t fa_u32;
typedef uint64_t fa_u64;
#define FA_PHILOX_INLINE static inline
#endif

#define FA_PHILOX_M0 0xD2511F53u
#define FA_PHILOX_M1 0xCD9E8D57u
#define FA_PHILOX_W0 0x9E3779B9u
#define FA_PHILOX_W1 0xBB67AE85u

struct fa_philox_out {
    fa_u32 w[4];
};

// One Philox round on (c0..c3) with key (k0, k1).
FA_PHILOX_INLINE fa_philox_out fa_philox_round(fa_philox_out c, fa_u32 k0, fa_u32 k1) {
    fa_u64 p0 = (fa_u64)FA_PHILOX_M0 * (fa_u64)c.w[0];
    fa_u64 p1 = (fa_u64)FA_PHILOX_M1 * (fa_u64)c.w[2];
    fa_philox_out r;
    r.w[0] = (fa_u32)(p1 >> 32) ^ c.w[1] ^ k0;
    r.w[1] = (fa_u32)p1;
    r.w[2] = (fa_u32)(p0 >> 32) ^ c.w[3] ^ k1;
    r.w[3] = (fa_u32)p0;
    return r;
}

// Philox4x32 with 10 rounds.
FA_PHILOX_INLINE fa_philox_out fa_philox4x32_10(fa_philox_out c, fa_u32 k0, fa_u32 k1) {
    for (int round = 0; round < 10; ++round) {
        c = fa_philox_round(c, k0, k1);
        k0 += FA_PHILOX_W0;
        k1 += FA_PHILOX_W1;
    }
    return c;
}

// The four uniform words that cover columns (col & ~3) .. (col | 3) of row `row` of head `bh` (= b * nheads + h).
FA_PHILOX_INLINE fa_philox_out fa_dropout_words(fa_u64 seed, fa_u64 offset, fa_u32 bh, fa_u32 row, fa_u32 col) {
    fa_philox_out c;
    c.w[0] = col >> 2;
    c.w[1] = row;
    c.w[2] = bh;
    c.w[3] = (fa_u32)offset ^ ((fa_u32)(offset >> 32) * FA_PHILOX_W0);
    return fa_philox4x32_10(c, (fa_u32)seed, (fa_u32)(seed >> 32));
}

// threshold = floor(p * 2^32), clamped; computed once on the host and passed to kernels.
// An element is kept iff its word >= threshold.
FA_PHILOX_INLINE bool fa_dropout_keep(fa_u64 seed, fa_u64 offset, fa_u32 bh, fa_u32 row, fa_u32 col, fa_u32 threshold) {
    fa_philox_out w = fa_dropout_words(seed, offset, bh, row, col);
    return w.w[col & 3u] >= threshold;
}

#endif  // FA_PHILOX_H
