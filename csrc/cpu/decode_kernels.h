// decode_kernels.h - the per-ISA kernels of the decode forward (decode_forward.cpp), behind one function table.
//
// Decode reads every cached key once for very little arithmetic, so it is bound by memory bandwidth, and the
// cache layout [.., seqlen, nheads_kv, d] stores all heads of one key next to each other. The kernels therefore
// walk a block of DECODE_BLOCK keys in MEMORY ORDER (key by key, all KV heads of the key in a row), which the
// hardware prefetchers follow as one linear stream, instead of one head at a time (a new 4 KiB page per key):
//   scores:  four keys at a time (scores_group: keys g, g+4, g+8, g+12), for every row (KV head hk, query row r): the unreduced dot products
//            q_r . k_{j,hk} as 16-lane vectors, folded by transposed reductions into one vector of 16 scores per
//            row and block (lane j = key j), so the softmax below works on full vectors;
//   softmax: per row the online-softmax step over the block's 16 scores (running max m, sum l, O rescaled);
//   pv:      for every key (4 at a time, the same groups) and row, O_row += p_j * v_{j,hk}, with O of all rows
//            small enough for L1/L2.
// Rows of KV head hk are the (query, head) pairs sharing it (GQA, or a few queries): at most DECODE_MAX_ROWS.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fa_abi.h"

namespace fa_cpu {

constexpr int DECODE_BLOCK = 16;    // keys per block: one fp32 vector of scores per row (AVX-512)
constexpr int DECODE_MAX_ROWS = 4;  // query rows per KV head served by the decode path

// Row pitch (elements) of packed q and of the O accumulator: the head dim rounded up to 32, so rows are whole
// 64-byte lines and consecutive rows are contiguous (a fixed large pitch would map every row onto the same few
// L1 sets).
inline int decode_pitch(int d) { return (d + 31) & ~31; }

struct DecodeKernels {
    const char *name;
    // Packs `rows` query rows (pointers to their first element, dtype of the table) into qpack, `pitch` packed
    // elements per row (4*pitch bytes at most), zero padded, in whatever form `scores` reads.
    void (*pack_q)(const void *const *qrows, int rows, int d, int pitch, void *qpack);
    // Scores of key group g (keys g, g+4, g+8, g+12 of a block: rows of one 4 KiB page are then read in order
    // across the groups even when several keys share a page) for every row (hk, r), hk < hkv, r < rows: partial
    // dot products q_{hk,r} . k_{g+4u,hk} go to partial[(hk*rows + r)*64 + 16g ..] in a kernel-defined form; keys
    // past the block's `nk` are unspecified. Key g+4u, KV head hk starts at krows[u] + hk*head_stride (elements);
    // all four krows must be readable (repeat a valid row for missing keys). krows[4 + u] is key g+4u of the NEXT
    // block (nullptr when there is none): a kernel may prefetch it (AVX-512 does, spread over its loop: the hardware
    // prefetchers alone kept about half the bandwidth a plain read gets from DRAM, with the arithmetic in between).
    // qpack holds hkv*rows packed rows; partial is 64-byte aligned, 64 floats per row.
    void (*scores_group)(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                         const void *qpack, int g, float *partial);
    // s[row*DECODE_BLOCK + j] = q . k_j (raw) for the n rows, from the 4 groups of `partial` (lanes of keys past
    // the block end are unspecified).
    void (*scores_finish)(const float *partial, int n, float *s);
    // Online-softmax step for n rows: s[row*DECODE_BLOCK + j] * mul are log2-domain logits (-inf = masked; lanes
    // j >= nk are ignored). Updates m[row], l[row], rescales o[row*pitch + c] (c < d) by exp2(m_old - m_new),
    // and replaces s by p = exp2(s*mul - m_new) (0 for j >= nk), in the form the table's pv reads (fp32 p_j at
    // s[row*DECODE_BLOCK + j], or a kernel-defined packing of them: AVX-512 bf16).
    void (*softmax)(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch);
    // o[(hk*rows + r)*pitch + c] += sum_{u < nk} p[(hk*rows + r)*DECODE_BLOCK + u*pstep] * v_u[hk*head_stride + c]
    // for c < d, where key u starts at vrows[u] (nk <= 4: one key group); p as softmax left it (p = s + g, pstep 4
    // for key group g: a packed form relies on that call pattern). vrows[4..7]: as krows[4..7] of scores_group.
    void (*pv)(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch,
               const float *p, int pstep, float *o);
};

// The online-softmax bookkeeping of one row, shared by every softmax kernel. The value a row's exponents are taken
// against after a block whose running max is m_new: m_new itself, or 0 while the row has seen only masked keys
// (m_new = -inf), so that exp2 gives 0 and not NaN.
inline float softmax_shift(float m_new) { return m_new == -INFINITY ? 0.0f : m_new; }

// A row's running max m and sum l after a block of keys with running max m_new, whose weights exp2(x - shift) sum to
// block_sum. Returns exp2(m_old - shift), the factor the row's O is rescaled by (1 once the max settles, as in most
// blocks: the kernels skip the rescale then).
inline float advance_row(float &m, float &l, float m_new, float block_sum) {
    const float alpha = std::exp2(m - softmax_shift(m_new));
    l = l * alpha + block_sum;
    m = m_new;
    return alpha;
}

// Portable kernels (any CPU): dtype fp32, fp16 or bf16.
const DecodeKernels *portable_decode_kernels(fa_dtype dt);
// AVX-512 kernels, nullptr when not compiled in; callers check the CPU first (select_decode_kernels).
const DecodeKernels *avx512_decode_kernels(fa_dtype dt);
// AVX2+FMA+F16C kernels, nullptr when not compiled in; callers check the CPU first.
const DecodeKernels *avx2_decode_kernels(fa_dtype dt);
// Arm NEON kernels (AArch64 builds only), nullptr when not compiled in; callers check the CPU first.
const DecodeKernels *neon_decode_kernels(fa_dtype dt);
// The bf16 table whose scores use BFDOT (AArch64 with FEAT_BF16: cpu_features().neon_bf16), nullptr when not compiled.
const DecodeKernels *neon_bf16dot_decode_kernels();
// The table for this machine (isa_dispatch.cpp): cpu_isa()'s set (AVX-512, AVX2, NEON or portable).
const DecodeKernels *select_decode_kernels(fa_dtype dt);

}  // namespace fa_cpu
