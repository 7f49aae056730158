// bwd_tile_math.cpp - tile products and exp for the CPU backward (see bwd_tile_math.h).
#include "bwd_tile_math.h"

#include <cmath>
#include <cstring>

// Multi-ISA float kernels where the toolchain can resolve clones at load time (GCC, x86-64, ELF ifunc).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FA_BWD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FA_BWD_CLONES
#endif
#define FA_BWD_INLINE inline __attribute__((always_inline))

namespace fa_bwd {
namespace {

// Two rows at a time so each loaded element of bt feeds two multiply-adds.
template <typename A>
FA_BWD_INLINE void matmul_nt_body(const A *__restrict a, int n, const A *__restrict bt, int nrows, A *__restrict out) {
    int r = 0;
    for (; r + 2 <= nrows; r += 2) {
        A o0[kBlockK], o1[kBlockK];
        for (int c = 0; c < kBlockK; ++c) o0[c] = o1[c] = A(0);
        const A *a0 = a + (size_t)r * n, *a1 = a0 + n;
        for (int e = 0; e < n; ++e) {
            const A x0 = a0[e], x1 = a1[e];
            const A *b = bt + (size_t)e * kBlockK;
            for (int c = 0; c < kBlockK; ++c) {
                o0[c] += x0 * b[c];
                o1[c] += x1 * b[c];
            }
        }
        std::memcpy(out + (size_t)r * kBlockK, o0, sizeof(o0));
        std::memcpy(out + (size_t)(r + 1) * kBlockK, o1, sizeof(o1));
    }
    for (; r < nrows; ++r) {
        A o0[kBlockK];
        for (int c = 0; c < kBlockK; ++c) o0[c] = A(0);
        const A *a0 = a + (size_t)r * n;
        for (int e = 0; e < n; ++e) {
            const A x0 = a0[e];
            const A *b = bt + (size_t)e * kBlockK;
            for (int c = 0; c < kBlockK; ++c) o0[c] += x0 * b[c];
        }
        std::memcpy(out + (size_t)r * kBlockK, o0, sizeof(o0));
    }
}

// The accumulations keep a chunk of kChunk output elements in registers while the (non-zero) coefficients stream
// by, instead of reloading and storing the destination for every multiply-add.
constexpr int kChunk = 32;

// dst[:n] += sum_t w_t * src_t[:n] over the terms t whose weight is non-zero; weights[t * wstride], src_t at
// src + t * sstride. Terms are summed in increasing t for every element (the same order in every chunk).
template <typename A>
FA_BWD_INLINE void weighted_rows_body(A *__restrict dst, const A *__restrict weights, int wstride,
                                      const A *__restrict src, int sstride, int nterms, int n) {
    int e0 = 0;
    for (; e0 + kChunk <= n; e0 += kChunk) {
        A acc[kChunk];
        for (int e = 0; e < kChunk; ++e) acc[e] = dst[e0 + e];
        for (int t = 0; t < nterms; ++t) {
            const A w = weights[(size_t)t * wstride];
            if (w == A(0)) continue;  // masked or dropped: common on boundary tiles
            const A *x = src + (size_t)t * sstride + e0;
            for (int e = 0; e < kChunk; ++e) acc[e] += w * x[e];
        }
        for (int e = 0; e < kChunk; ++e) dst[e0 + e] = acc[e];
    }
    if (e0 < n) {  // tail of a head dim that is not a multiple of kChunk
        for (int t = 0; t < nterms; ++t) {
            const A w = weights[(size_t)t * wstride];
            if (w == A(0)) continue;
            const A *x = src + (size_t)t * sstride;
            for (int e = e0; e < n; ++e) dst[e] += w * x[e];
        }
    }
}

template <typename A>
FA_BWD_INLINE void accumulate_tn_body(A *__restrict acc, const A *__restrict coef, const A *__restrict x, int nrows,
                                      int ncols, int n) {
    for (int c = 0; c < ncols; ++c) weighted_rows_body(acc + (size_t)c * n, coef + c, kBlockK, x, n, nrows, n);
}

template <typename A>
FA_BWD_INLINE void accumulate_nn_body(A *__restrict acc, const A *__restrict coef, const A *__restrict y, int nrows,
                                      int ncols, int n) {
    for (int r = 0; r < nrows; ++r)
        weighted_rows_body(acc + (size_t)r * n, coef + (size_t)r * kBlockK, 1, y, n, ncols, n);
}

// exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 split in two constants (Cody and Waite), exp(r) by the
// classic Cephes expf polynomial. Rounding uses the 1.5 * 2^23 trick so the loop vectorises without fast-math.
FA_BWD_INLINE float exp_scalar(float x) {
    const float lo_limit = -87.33654f, hi_limit = 88.37626f;
    const bool underflow = x < lo_limit;
    x = x < lo_limit ? lo_limit : (x > hi_limit ? hi_limit : x);
    const float shifter = 12582912.0f;  // 1.5 * 2^23
    const float kf = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;
    const float r2 = r * r;
    float poly = 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    const float er = poly * r2 + r + 1.0f;
    // 2^k with k in [-126, 127]: build the exponent bits directly
    int k = (int)kf;
    k = k < -126 ? -126 : (k > 127 ? 127 : k);
    const uint32_t bits = (uint32_t)(k + 127) << 23;
    float two_k;
    std::memcpy(&two_k, &bits, 4);
    const float v = er * two_k;
    return underflow ? 0.0f : v;
}

}  // namespace

FA_BWD_CLONES void tile_matmul_nt(const float *a, int n, const float *bt, int nrows, float *out) {
    matmul_nt_body(a, n, bt, nrows, out);
}
void tile_matmul_nt(const double *a, int n, const double *bt, int nrows, double *out) {
    matmul_nt_body(a, n, bt, nrows, out);
}

FA_BWD_CLONES void tile_accumulate_tn(float *acc, const float *coef, const float *x, int nrows, int ncols, int n) {
    accumulate_tn_body(acc, coef, x, nrows, ncols, n);
}
void tile_accumulate_tn(double *acc, const double *coef, const double *x, int nrows, int ncols, int n) {
    accumulate_tn_body(acc, coef, x, nrows, ncols, n);
}

FA_BWD_CLONES void tile_accumulate_nn(float *acc, const float *coef, const float *y, int nrows, int ncols, int n) {
    accumulate_nn_body(acc, coef, y, nrows, ncols, n);
}
void tile_accumulate_nn(double *acc, const double *coef, const double *y, int nrows, int ncols, int n) {
    accumulate_nn_body(acc, coef, y, nrows, ncols, n);
}

FA_BWD_CLONES void tile_exp_row(float *x) {
    for (int c = 0; c < kBlockK; ++c) x[c] = exp_scalar(x[c]);
}
void tile_exp_row(double *x) {
    for (int c = 0; c < kBlockK; ++c) x[c] = std::exp(x[c]);
}

}  // namespace fa_bwd
