// bwd_tile_math.h - the dense tile products and the exponential of the CPU backward.
//
// Tiles are row-major with a fixed key width kBlockK so the compiler can keep a row of accumulators in vector
// registers. Each product has a generic template body (used for double) and a float entry point that x86-64 Linux
// builds compile for several ISAs with GCC's target_clones (the loader picks AVX-512/AVX2+FMA/baseline once), since
// the package is built for the baseline ISA. Sums run in a fixed order in every variant of one machine.
#pragma once

#include <cstdint>

namespace fa_bwd {

constexpr int kBlockQ = 64;  // query rows per tile
constexpr int kBlockK = 64;  // keys per tile

// S[r][c] = sum_e a[r][e] * bt[e][c], r < nrows, c < kBlockK. (bt: [n][kBlockK], zero-padded past the valid keys)
void tile_matmul_nt(const float *a, int n, const float *bt, int nrows, float *out);
void tile_matmul_nt(const double *a, int n, const double *bt, int nrows, double *out);

// acc[c][:n] += sum_r coef[r][c] * x[r][:n] for c < ncols, r < nrows (dV += Pdᵀ dO, dK += dXᵀ Q).
void tile_accumulate_tn(float *acc, const float *coef, const float *x, int nrows, int ncols, int n);
void tile_accumulate_tn(double *acc, const double *coef, const double *x, int nrows, int ncols, int n);

// acc[r][:n] += sum_c coef[r][c] * y[c][:n] for r < nrows, c < ncols (dQ += dX K).
void tile_accumulate_nn(float *acc, const float *coef, const float *y, int nrows, int ncols, int n);
void tile_accumulate_nn(double *acc, const double *coef, const double *y, int nrows, int ncols, int n);

// x[c] = exp(x[c]) for c < kBlockK. The float version is a vectorisable Cody-Waite + polynomial exp (about 1 ulp,
// results below 2^-126 flush to 0), the double version calls std::exp.
void tile_exp_row(float *x);
void tile_exp_row(double *x);

}  // namespace fa_bwd
