// bwd_tile_math.h - tile sizes of the CPU backward, and the portable tile products and exponential.
//
// Tiles are row-major with a fixed key width kBlockK. The products all have the one strided shape described in
// bwd_kernels.h; here are its portable bodies: compiler-vectorised loops, used for double and (through the
// portable table of bwd_kernels.h) for float on CPUs without AVX-512 or under FLASH_ATTN_CY_CPU_ISA=portable.
// x86-64 Linux builds compile the float loops for several ISAs with GCC's target_clones (the loader picks
// AVX-512/AVX2+FMA/baseline once), since the package is built for the baseline ISA. Each output element is summed
// over t in increasing order in every variant.
#pragma once

#include <cstdint>

namespace fa_bwd {

constexpr int kBlockQ = 64;  // query rows per tile
constexpr int kBlockK = 64;  // keys per tile

// C[m][0:n] (= or +=) sum_{t < kk} A[m*a_rs + t*a_ks] * B[t*b_rs + 0:n]  (see bwd_kernels.h for the five uses).
void tile_product(int m, int n, int kk, const double *a, int64_t a_rs, int64_t a_ks, const double *b, int64_t b_rs,
                  double *c, int64_t c_rs, bool accumulate);

// out[r][0:kBlockK] = sum_{t < kk} (double)a[r*a_rs + t] * (double)bt[t*kBlockK + 0:kBlockK] for r < m: S = Q Kᵀ of
// float tiles in double (the rows with a refined LSE, bwd_score_gradients.cpp refined_scores), summed over t in order.
void tile_scores_f64(int m, int kk, const float *a, int64_t a_rs, const float *bt, double *out);

// x[c] = exp(x[c]) for c < kBlockK, in double with std::exp.
void tile_exp_row(double *x);

}  // namespace fa_bwd
