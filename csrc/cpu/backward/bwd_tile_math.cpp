// bwd_tile_math.cpp - portable tile products and exp of the CPU backward (bwd_tile_math.h), and the portable
// float kernel table of bwd_kernels.h.
#include "bwd_tile_math.h"

#include <cmath>
#include <cstring>

#include "bwd_kernels.h"

// Multi-ISA float loops where the toolchain can resolve clones at load time (GCC, x86-64, ELF ifunc).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FA_BWD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FA_BWD_CLONES
#endif
#define FA_BWD_INLINE inline __attribute__((always_inline))

namespace fa_bwd {
namespace {

// Output chunk kept in local accumulators (registers once vectorised) while t runs over the reduction; two rows at
// a time so each loaded element of B feeds two multiply-adds.
constexpr int kChunk = 64;

template <typename A, int LEN>
FA_BWD_INLINE void rows_chunk(int rows, int len, int kk, const A *__restrict a, int64_t a_rs, int64_t a_ks,
                              const A *__restrict b, int64_t b_rs, A *__restrict c, int64_t c_rs, bool accumulate) {
    const int n = LEN > 0 ? LEN : len;
    A o0[kChunk], o1[kChunk];
    for (int e = 0; e < n; ++e) {
        o0[e] = accumulate ? c[e] : A(0);
        o1[e] = (rows > 1 && accumulate) ? c[c_rs + e] : A(0);
    }
    for (int t = 0; t < kk; ++t) {
        const A w0 = a[t * a_ks];
        const A w1 = rows > 1 ? a[a_rs + t * a_ks] : A(0);
        const A *x = b + t * b_rs;
        for (int e = 0; e < n; ++e) {
            o0[e] += w0 * x[e];
            o1[e] += w1 * x[e];
        }
    }
    for (int e = 0; e < n; ++e) c[e] = o0[e];
    if (rows > 1)
        for (int e = 0; e < n; ++e) c[c_rs + e] = o1[e];
}

template <typename A>
FA_BWD_INLINE void product_body(int m, int n, int kk, const A *__restrict a, int64_t a_rs, int64_t a_ks,
                                const A *__restrict b, int64_t b_rs, A *__restrict c, int64_t c_rs, bool accumulate) {
    for (int r = 0; r < m; r += 2) {
        const int rows = m - r < 2 ? 1 : 2;
        for (int e0 = 0; e0 < n; e0 += kChunk) {
            const int len = n - e0 < kChunk ? n - e0 : kChunk;
            const A *ar = a + r * a_rs;
            A *cr = c + r * c_rs + e0;
            if (len == kChunk) rows_chunk<A, kChunk>(rows, len, kk, ar, a_rs, a_ks, b + e0, b_rs, cr, c_rs, accumulate);
            else rows_chunk<A, 0>(rows, len, kk, ar, a_rs, a_ks, b + e0, b_rs, cr, c_rs, accumulate);
        }
    }
}

// exp(x) = 2^k * exp(r), k = round(x / ln 2), r = x - k ln 2 split in two constants (Cody and Waite), exp(r) by the
// classic Cephes expf polynomial. Rounding uses the 1.5 * 2^23 trick so the loop vectorises without fast-math.
// Arguments are clamped to <= 0: every use is a probability P = exp(score - lse) <= 1, whose exponent exceeds 0 only
// by the rounding of huge fp32 scores and LSEs, where exp would give weights above 1 or inf (then NaN in dK/dQ).
FA_BWD_INLINE float exp_scalar(float x) {
    const float lo_limit = -87.33654f, hi_limit = 0.0f;
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

FA_BWD_CLONES void product_f32(int m, int n, int kk, const float *a, int64_t a_rs, int64_t a_ks, const float *b,
                               int64_t b_rs, float *c, int64_t c_rs, bool accumulate) {
    product_body(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, accumulate);
}

FA_BWD_CLONES void exp_row_f32(float *x) {
    for (int c = 0; c < kBlockK; ++c) x[c] = exp_scalar(x[c]);
}

FA_BWD_CLONES void softmax_grad_f32(float *s, float *dp, const float *lse, const float *delta, int nrows,
                                    float scale) {
    for (int r = 0; r < nrows; ++r) {
        float *sr = s + (size_t)r * kBlockK;
        float *dr = dp + (size_t)r * kBlockK;
        const float l = lse[r], dl = delta[r];
        for (int c = 0; c < kBlockK; ++c) {
            const float p = exp_scalar(sr[c] * scale - l);
            sr[c] = p;
            dr[c] = p * (dr[c] - dl) * scale;
        }
    }
}

const BwdKernelsF32 kPortable = {"portable (compiler-vectorised loops)", product_f32, softmax_grad_f32, exp_row_f32,
                                 nullptr, nullptr, nullptr, nullptr, nullptr};

}  // namespace

const BwdKernelsF32 *bwd_portable_kernels_f32() { return &kPortable; }

void tile_product(int m, int n, int kk, const double *a, int64_t a_rs, int64_t a_ks, const double *b, int64_t b_rs,
                  double *c, int64_t c_rs, bool accumulate) {
    product_body(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, accumulate);
}

FA_BWD_CLONES void tile_scores_f64(int m, int kk, const float *a, int64_t a_rs, const float *bt, double *out) {
    for (int r = 0; r < m; ++r) {
        double o[kBlockK] = {};
        for (int t = 0; t < kk; ++t) {
            const double w = (double)a[(int64_t)r * a_rs + t];
            const float *x = bt + (int64_t)t * kBlockK;
            for (int c = 0; c < kBlockK; ++c) o[c] += w * (double)x[c];
        }
        for (int c = 0; c < kBlockK; ++c) out[(int64_t)r * kBlockK + c] = o[c];
    }
}

void tile_exp_row(double *x) {
    for (int c = 0; c < kBlockK; ++c) x[c] = std::exp(x[c]);
}

}  // namespace fa_bwd
