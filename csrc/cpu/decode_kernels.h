// decode_kernels.h - the per-ISA kernels of the decode forward (decode_forward.cpp), behind one function table.
//
// Decode reads every cached key once for very little arithmetic, so it is bound by memory bandwidth, and the
// cache layout [.., seqlen, nheads_kv, d] stores all heads of one key next to each other. The kernels therefore
// walk a block of DECODE_BLOCK keys in MEMORY ORDER (key by key, all KV heads of the key in a row), which the
// hardware prefetchers follow as one linear stream, instead of one head at a time (a new 4 KiB page per key):
//   scores:  for every key j and row (KV head hk, query row r): the unreduced dot product q_r . k_{j,hk} as a
//            16-lane vector, then per row one transposed reduction turns the 16 keys' vectors into one vector of 16
//            scores (lane j = key j), so the softmax below works on full vectors;
//   softmax: per row the online-softmax step over the block's 16 scores (running max m, sum l, O rescaled);
//   pv:      for every key (4 at a time) and row, O_row += p_j * v_{j,hk}, with O of all rows small enough for L1/L2.
// Rows of KV head hk are the (query, head) pairs sharing it (GQA, or a few queries): at most DECODE_MAX_ROWS.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fa_abi.h"

namespace fa_cpu {

constexpr int DECODE_BLOCK = 16;     // keys per block: one fp32 vector of scores per row (AVX-512)
constexpr int DECODE_MAX_ROWS = 4;   // query rows per KV head served by the decode path
constexpr int DECODE_DPAD = 256;     // row stride (elements) of packed q and of the O accumulator: FA_MAX_HEADDIM

struct DecodeKernels {
    const char *name;
    // Packs the `rows` query rows of one KV head (pointers to their first element, dtype of the table) into qpack
    // (DECODE_DPAD * 4 bytes per row, zero padded), in whatever form `scores` reads.
    void (*pack_q)(const void *const *qrows, int rows, int d, void *qpack);
    // s[(hk*rows + r)*DECODE_BLOCK + j] = q_{hk,r} . k_{j,hk} (raw dot products) for j < nk, 0 for j >= nk.
    // Key j, KV head hk starts at krows[j] + hk*head_stride (elements). qpack holds hkv*rows packed rows.
    // `partial` is scratch of hkv*rows*DECODE_BLOCK*DECODE_BLOCK floats (64-byte aligned).
    void (*scores)(const void *const *krows, int nk, int64_t head_stride, int hkv, int rows, int d,
                   const void *qpack, float *s, float *partial);
    // Online-softmax step for n rows: s[row*DECODE_BLOCK + j] * mul are log2-domain logits (-inf = masked; lanes
    // j >= nk are ignored). Updates m[row], l[row], rescales o[row*DECODE_DPAD + c] (c < d) by exp2(m_old - m_new),
    // and replaces s by p = exp2(s*mul - m_new) (0 for j >= nk).
    void (*softmax)(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d);
    // o[(hk*rows + r)*DECODE_DPAD + c] += sum_j p[(hk*rows + r)*DECODE_BLOCK + j] * v_{j,hk}[c] for j < nk, c < d.
    void (*pv)(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, const float *p,
               float *o);
};

// Portable kernels (any CPU): dtype fp32, fp16 or bf16.
const DecodeKernels *portable_decode_kernels(fa_dtype dt);
// AVX-512 kernels, nullptr when not compiled in; callers check the CPU first (select_decode_kernels).
const DecodeKernels *avx512_decode_kernels(fa_dtype dt);
// The table for this machine (isa_dispatch.cpp): AVX-512 when present and not forced portable.
const DecodeKernels *select_decode_kernels(fa_dtype dt);

}  // namespace fa_cpu
