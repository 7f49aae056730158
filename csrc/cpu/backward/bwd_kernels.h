// bwd_kernels.h - the float kernels of the CPU backward behind one function table, chosen at run time.
//
// Every tile product of the backward is one shape:
//     C[m][0:n] (= or +=) sum_{t < kk} A[m*a_rs + t*a_ks] * B[t*b_rs + 0:n]
// i.e. rows of B (contiguous) scaled by broadcast elements of A. The strides let the same kernel read A as-is or
// transposed, so no product needs a transposed copy of P or dS:
//     S   = Q Kᵀ   A = Q    [q][d] (a_rs = d, a_ks = 1),  B = Kᵀ [d][kBlockK] (packed once per key tile)
//     dPd = dO Vᵀ  A = dO   [q][dv],                      B = Vᵀ [dv][kBlockK]
//     dV += Pdᵀ dO A = Pd   read transposed (a_rs = 1, a_ks = kBlockK),  B = dO [q][dv]
//     dK += dXᵀ Q  A = dX   read transposed,                             B = Q  [q][d]
//     dQ += dX K   A = dX   [q][kBlockK] (a_rs = kBlockK, a_ks = 1),     B = K  [key][d]
// The portable table (bwd_tile_math.cpp) uses compiler-vectorised loops; the AVX-512 table
// (bwd_kernels_avx512.cpp) register-blocked FMA micro-kernels. Within one table every output element is summed
// over t in increasing order, so results never depend on how work is split between threads.
#pragma once

#include <cstdint>

namespace fa_bwd {

struct BwdKernelsF32 {
    const char *name;
    // The product above, n <= 256 (any n; the AVX-512 kernels mask the tail vector).
    void (*product)(int m, int n, int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b, int64_t b_rs,
                    float *c, int64_t c_rs, bool accumulate);
    // Probabilities and score gradients of a full tile (no mask, dropout, softcap or ALiBi), rows r < nrows of
    // width kBlockK: s[r][c] <- P = exp(s*scale - lse[r]), dp[r][c] <- P * (dp - delta[r]) * scale.
    void (*softmax_grad)(float *s, float *dp, const float *lse, const float *delta, int nrows, float scale);
    // x[c] = exp(x[c]) for c < kBlockK (masked or feature-laden tiles; -1e30 gives 0, NaN stays NaN).
    void (*exp_row)(float *x);    // bf16 inputs only, nullptr without AVX512-BF16: S = Q Kᵀ and dPd = dO Vᵀ straight from the bf16 values, which
    // are exact in fp32, so pairs multiplied by vdpbf16ps and summed in fp32 cost half the fp32 FMAs for the same
    // precision. out[r][0:kBlockK] = sum_{t < kk2} sum_{u < 2} a[r*a_rs + 2t + u] * bt2[(t*kBlockK + c)*2 + u],
    // r < m: a = bf16 rows (a_rs elements apart, zero-padded to 2*kk2), bt2 = the key tile as bf16 pairs over the
    // head dim, [kk2][kBlockK][2].
    void (*scores_bf16)(int m, int kk2, const uint16_t *a, int64_t a_rs, const uint16_t *bt2, float *out);

    // bf16 inputs only, nullptr without AVX512-BF16: the three products whose left operand is a probability or
    // score-gradient tile (dV += Pdᵀ dO, dK += dXᵀ Q, dQ += dX K) with that tile rounded to bf16 first, as flash_attn
    // does before these matrix products; the right operand (dO, Q, K) is exact bf16, the sums fp32.
    //   C[m][0:n] += sum_{t < kk2} dot2(A pair (m, t), B pair row t [0:n])
    // A pair (m, t) = the 32-bit word a[m*a_rs + t*a_ks] (two bf16, reduction index 2t in the low half); B pair row
    // t = n bf16 pairs at b + t*b_rs (uint16 units). Any n <= 256 (masked tail).
    void (*accumulate_bf16)(int m, int n, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b,
                            int64_t b_rs, float *c, int64_t c_rs);
    // out[t][c] = (bf16(x[2t][c]), bf16(x[2t+1][c])) for t < (rows+1)/2, c < kBlockK, x rows kBlockK apart; the
    // missing row of an odd count is 0. (Pdᵀ and dXᵀ as A of the dV and dK products: pairs over query rows.)
    void (*pair_tile_rows_bf16)(const float *x, int rows, uint32_t *out);
    // out[r][c] = bf16(x[r][c]) for r < rows, c < kBlockK, then out[r][ncols] = 0 if ncols is odd (dX as A of the dQ
    // product: pairs over keys, the last pair of an odd key count completed with 0).
    void (*round_tile_bf16)(const float *x, int rows, int ncols, uint16_t *out);
    // out[t*out_rs + 2e + u] = x[(2t+u)*x_rs + e] for t < (rows+1)/2, e < n, u < 2 (bf16 bits), the missing row of an
    // odd count 0: rows of Q, dO or K interleaved into pairs over rows (B of the three products above).
    void (*pair_rows_bf16)(const uint16_t *x, int64_t x_rs, int rows, int n, uint16_t *out, int64_t out_rs);
};

// The portable table (any CPU).
const BwdKernelsF32 *bwd_portable_kernels_f32();
// The AVX-512 table (with or without the AVX512-BF16 entry), or nullptr when this build has none (not x86-64
// GCC/clang). Callers check the CPU first.
const BwdKernelsF32 *bwd_avx512_kernels_f32(bool with_bf16);
// The AMX table: the AVX-512 bf16 table with the bf16 products on AMX tiles (the hardware, or their scalar model when
// `emulated`), or nullptr when this build has none. Callers check the CPU (and the OS's tile permission) first.
const BwdKernelsF32 *bwd_amx_kernels_f32(bool emulated);
// The table for this machine: cpu_isa() is avx512 (AVX-512F/BW/VL/DQ present, FLASH_ATTN_CY_CPU_ISA neither
// "portable" nor "avx2") -> AVX-512, with scores_bf16 when the CPU also has AVX512-BF16; else portable.
const BwdKernelsF32 *select_bwd_kernels_f32();

}  // namespace fa_bwd
