// decode_kernels_portable.cpp - plain-loop decode kernels (any CPU, any compiler; see decode_kernels.h).
//
// The same memory-order walk as the AVX-512 kernels, with scalar dot products: used on CPUs without AVX-512
// (including arm64 Macs) and when FLASH_ATTN_CY_CPU_ISA=portable.
#include <cmath>

#include "cpu_dtype.h"
#include "decode_kernels.h"

namespace fa_cpu {
namespace {

template <fa_dtype DT>
inline float load_f32(const void *base, int64_t idx) {
    if (DT == FA_F32) return static_cast<const float *>(base)[idx];
    if (DT == FA_F16) return f16_to_f32(static_cast<const uint16_t *>(base)[idx]);
    return bf16_to_f32(static_cast<const uint16_t *>(base)[idx]);
}

template <fa_dtype DT>
void pack_q(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    float *q = static_cast<float *>(qpack);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < pitch; ++c) q[size_t(r) * pitch + c] = c < d ? load_f32<DT>(qrows[r], c) : 0.0f;
}

template <fa_dtype DT>
void scores_group(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                  const void *qpack, int g, float *partial) {
    const float *q = static_cast<const float *>(qpack);
    for (int u = 0; u < 4; ++u)
        for (int hk = 0; hk < hkv; ++hk)
            for (int r = 0; r < rows; ++r) {
                const int row = hk * rows + r;
                const float *qr = q + size_t(row) * pitch;
                float acc = 0.0f;
                for (int c = 0; c < d; ++c) acc += qr[c] * load_f32<DT>(krows[u], hk * head_stride + c);
                partial[row * 64 + 16 * g + u] = acc;
            }
}

void scores_finish(const float *partial, int n, float *s) {
    for (int row = 0; row < n; ++row)
        for (int j = 0; j < DECODE_BLOCK; ++j) s[row * DECODE_BLOCK + j] = partial[row * 64 + 16 * (j % 4) + j / 4];
}

void softmax(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    for (int row = 0; row < n; ++row) {
        float *sr = s + row * DECODE_BLOCK;
        float mx = -INFINITY;
        for (int j = 0; j < nk; ++j) {
            sr[j] *= mul;
            mx = std::fmax(mx, sr[j]);
        }
        const float m_new = std::fmax(m[row], mx);
        const float shift = softmax_shift(m_new);
        float sum = 0.0f;
        for (int j = 0; j < DECODE_BLOCK; ++j) {
            sr[j] = j < nk ? std::exp2(sr[j] - shift) : 0.0f;  // a NaN score stays NaN and reaches l and O
            sum += sr[j];
        }
        const float alpha = advance_row(m[row], l[row], m_new, sum);
        if (alpha != 1.0f)
            for (int c = 0; c < d; ++c) o[size_t(row) * pitch + c] *= alpha;
    }
}

template <fa_dtype DT>
void pv(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch, const float *p,
        int pstep, float *o) {
    for (int j = 0; j < nk; ++j)
        for (int hk = 0; hk < hkv; ++hk)
            for (int r = 0; r < rows; ++r) {
                const int row = hk * rows + r;
                const float pj = p[row * DECODE_BLOCK + j * pstep];
                float *orow = o + size_t(row) * pitch;
                for (int c = 0; c < d; ++c) orow[c] += pj * load_f32<DT>(vrows[j], hk * head_stride + c);
            }
}

const DecodeKernels k_f32 = {"portable-f32", &pack_q<FA_F32>, &scores_group<FA_F32>, &scores_finish,
                                    &softmax, &pv<FA_F32>};
const DecodeKernels k_f16 = {"portable-f16", &pack_q<FA_F16>, &scores_group<FA_F16>, &scores_finish,
                                    &softmax, &pv<FA_F16>};
const DecodeKernels k_bf16 = {"portable-bf16", &pack_q<FA_BF16>, &scores_group<FA_BF16>, &scores_finish,
                                    &softmax, &pv<FA_BF16>};

}  // namespace

const DecodeKernels *portable_decode_kernels(fa_dtype dt) {
    return table_for(dt, &k_f32, &k_f16, &k_bf16);
}

}  // namespace fa_cpu
