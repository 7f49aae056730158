// decode_kernels_neon.cpp - Arm NEON (AArch64 Advanced SIMD) decode kernels (see decode_kernels.h for the
// memory-order walk).
//
//   fp32 FMA over the head dim, 4 lanes; fp16 widened on load with fcvtl, bf16 by a 16-bit shift (exact); O += p V in
//   fp32. With 32 q registers a K/V vector load is shared by up to 4 query rows of a KV head (4 keys x 4 rows = 16
//   accumulators + 4 K vectors + q), so every row of a KV head is served in one pass over its K/V vectors.
//   bf16 scores, where the CPU has the bf16 extension (FEAT_BF16), by BFDOT on the bf16 K rows and q as they are
//   (neon_bf16dot_decode_kernels; the rest of that table is the widening one).
//   Partial scores are plain sums: partial[row*64 + 16g + u] = score of key g + 4u (4 floats per group; the
//   portable layout), so scores_finish is one 4x4 transpose per row.
// Speed on real Arm hardware has never been measured (built with a cross compiler, checked under qemu-aarch64).
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu_dtype.h"
#include "decode_kernels.h"
#include "neon_common.h"

namespace fa_cpu {

#ifdef FA_HAVE_NEON_KERNELS
namespace {

using neon::exp2_ps;
using neon::load4_upto;

template <fa_dtype DT>
void pack_q(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    float *q = static_cast<float *>(qpack);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < pitch; c += 4)
            vst1q_f32(q + size_t(r) * pitch + c, c < d ? load4_upto<DT>(qrows[r], 0, c, d) : vdupq_n_f32(0.0f));
}

// Rows r0..r0+R-1 of KV head at h0: the four keys' dot products with each row, R <= 4.
template <fa_dtype DT, int R>
inline void scores_rows(const void *const *krows, int64_t h0, int d, int pitch, const float *qh, float *part) {
    const void *k0 = krows[0], *k1 = krows[1], *k2 = krows[2], *k3 = krows[3];
    float32x4_t acc[4][R];
    for (int u = 0; u < 4; ++u)
        for (int r = 0; r < R; ++r) acc[u][r] = vdupq_n_f32(0.0f);
    for (int c = 0; c < d; c += 4) {
        const float32x4_t a0 = load4_upto<DT>(k0, h0, c, d), a1 = load4_upto<DT>(k1, h0, c, d),
                          a2 = load4_upto<DT>(k2, h0, c, d), a3 = load4_upto<DT>(k3, h0, c, d);
        for (int r = 0; r < R; ++r) {
            const float32x4_t qv = vld1q_f32(qh + r * pitch + c);
            acc[0][r] = vfmaq_f32(acc[0][r], a0, qv);
            acc[1][r] = vfmaq_f32(acc[1][r], a1, qv);
            acc[2][r] = vfmaq_f32(acc[2][r], a2, qv);
            acc[3][r] = vfmaq_f32(acc[3][r], a3, qv);
        }
    }
    for (int r = 0; r < R; ++r) vst1q_f32(part + r * 64, neon::hsum4(acc[0][r], acc[1][r], acc[2][r], acc[3][r]));
}

// Calls f(std::integral_constant<int, R>{}) with R = rows (1..DECODE_MAX_ROWS): every row of a KV head is served by
// one pass over the head's K/V vectors, with the row count known to the compiler (registers, unrolling).
template <typename F>
inline void with_rows(int rows, F &&f) {
    static_assert(DECODE_MAX_ROWS == 4, "with_rows covers 1..4 rows");
    switch (rows) {
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        default: f(std::integral_constant<int, 1>{}); break;
    }
}

// scores_group's walk over the KV heads: rows_kernel(R, h0, q rows of the head, partial of the head) per head.
template <typename QElem, typename RowsKernel>
inline void scores_heads(const void *qpack, int64_t head_stride, int hkv, int rows, int pitch, int g, float *partial,
                         RowsKernel &&rows_kernel) {
    const QElem *q = static_cast<const QElem *>(qpack);
    for (int hk = 0; hk < hkv; ++hk)
        with_rows(rows, [&](auto R) {
            rows_kernel(R, hk * head_stride, q + size_t(hk * rows) * pitch, partial + (hk * rows) * 64 + 16 * g);
        });
}

template <fa_dtype DT>
void scores_group(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                  const void *qpack, int g, float *partial) {
    scores_heads<float>(qpack, head_stride, hkv, rows, pitch, g, partial,
                        [&](auto R, int64_t h0, const float *qr, float *part) {
                            scores_rows<DT, decltype(R)::value>(krows, h0, d, pitch, qr, part);
                        });
}

// Group g holds keys g, g+4, g+8, g+12 in its 4 floats: a 4x4 transpose puts key j in lane j.
void scores_finish(const float *partial, int n, float *s) {
    for (int row = 0; row < n; ++row) {
        const float *x = partial + row * 64;
        const float32x4_t x0 = vld1q_f32(x), x1 = vld1q_f32(x + 16), x2 = vld1q_f32(x + 32), x3 = vld1q_f32(x + 48);
        // 4x4 transpose: lanes (x0[u], x1[u], x2[u], x3[u]) = keys 4u .. 4u+3
        const float32x4_t t0 = vtrn1q_f32(x0, x1), t1 = vtrn2q_f32(x0, x1);
        const float32x4_t t2 = vtrn1q_f32(x2, x3), t3 = vtrn2q_f32(x2, x3);
        float *sr = s + row * DECODE_BLOCK;
        vst1q_f32(sr, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
        vst1q_f32(sr + 4, vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
        vst1q_f32(sr + 8, vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2))));
        vst1q_f32(sr + 12, vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3))));
    }
}

// Online-softmax step per row on its 16 scores (four vectors). x - m <= 0 exactly here (m is the max of the same
// rounded products), and exp2_ps clamps its argument anyway: huge logits cannot overflow.
void softmax(float *s, int n, int nk, float mul, float *m, float *l, float *o, int d, int pitch) {
    const float32x4_t neg_inf = vdupq_n_f32(-INFINITY);
    const float32x4_t vmul = vdupq_n_f32(mul);
    const int32x4_t lane = {0, 1, 2, 3};
    uint32x4_t valid[4];  // lanes past nk become -inf after the multiply (a negative scale must not make them +inf)
    for (int w = 0; w < 4; ++w) valid[w] = vcgtq_s32(vdupq_n_s32(nk - 4 * w), lane);
    for (int row = 0; row < n; ++row) {
        float *sr = s + row * DECODE_BLOCK;
        float32x4_t x[4];
        for (int w = 0; w < 4; ++w) x[w] = vbslq_f32(valid[w], vmulq_f32(vld1q_f32(sr + 4 * w), vmul), neg_inf);
        const float m_old = m[row];
        const float m_new = std::fmax(m_old, vmaxvq_f32(vmaxq_f32(vmaxq_f32(x[0], x[1]), vmaxq_f32(x[2], x[3]))));
        // A row that has seen only masked keys keeps m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        const float m_use_s = m_new == -INFINITY ? 0.0f : m_new;
        const float32x4_t m_use = vdupq_n_f32(m_use_s);
        float32x4_t sum = vdupq_n_f32(0.0f);
        for (int w = 0; w < 4; ++w) {
            const float32x4_t p = exp2_ps(vsubq_f32(x[w], m_use));
            vst1q_f32(sr + 4 * w, p);
            sum = vaddq_f32(sum, p);
        }
        const float alpha = std::exp2(m_old - m_use_s);
        l[row] = l[row] * alpha + vaddvq_f32(sum);
        m[row] = m_new;
        if (alpha != 1.0f) {  // once the running max settles (most blocks) O needs no rescale
            float *orow = o + size_t(row) * pitch;
            for (int c = 0; c < d; c += 4) vst1q_f32(orow + c, vmulq_n_f32(vld1q_f32(orow + c), alpha));
        }
    }
}

// O rows r..r+R-1 (R <= 4) of KV head at h0 += sum_u p_u V_u over four keys: each O vector loaded and stored once
// per four V vectors. Columns past d read V as 0 (the O pitch is a multiple of 32, so the stores stay inside).
template <fa_dtype DT, int R>
inline void pv_rows4(const void *const *v, int64_t h0, int d, int pitch, const float *p, int pstep, float *oh) {
    float pb[R][4];
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < 4; ++u) pb[r][u] = p[r * DECODE_BLOCK + u * pstep];
    for (int c = 0; c < d; c += 4) {
        const float32x4_t a0 = load4_upto<DT>(v[0], h0, c, d), a1 = load4_upto<DT>(v[1], h0, c, d),
                          a2 = load4_upto<DT>(v[2], h0, c, d), a3 = load4_upto<DT>(v[3], h0, c, d);
        for (int r = 0; r < R; ++r) {
            float *oc = oh + r * pitch + c;
            float32x4_t acc = vfmaq_n_f32(vld1q_f32(oc), a0, pb[r][0]);
            acc = vfmaq_n_f32(acc, a1, pb[r][1]);
            acc = vfmaq_n_f32(acc, a2, pb[r][2]);
            vst1q_f32(oc, vfmaq_n_f32(acc, a3, pb[r][3]));
        }
    }
}

template <fa_dtype DT>
void pv(const void *const *vrows, int nk, int64_t head_stride, int hkv, int rows, int d, int pitch, const float *p,
        int pstep, float *o) {
    int j = 0;
    for (; j + 4 <= nk; j += 4) {
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            const float *pr = p + (hk * rows) * DECODE_BLOCK + j * pstep;
            float *orow = o + size_t(hk * rows) * pitch;
            with_rows(rows, [&](auto R) { pv_rows4<DT, decltype(R)::value>(vrows + j, h0, d, pitch, pr, pstep, orow); });
        }
    }
    for (; j < nk; ++j) {
        for (int hk = 0; hk < hkv; ++hk) {
            const int64_t h0 = hk * head_stride;
            for (int r = 0; r < rows; ++r) {
                const int row = hk * rows + r;
                const float pj = p[row * DECODE_BLOCK + j * pstep];
                float *orow = o + size_t(row) * pitch;
                for (int c = 0; c < d; c += 4)
                    vst1q_f32(orow + c, vfmaq_n_f32(vld1q_f32(orow + c), load4_upto<DT>(vrows[j], h0, c, d), pj));
            }
        }
    }
}

FA_NEON_BF16_BEGIN

// bf16 q kept as it is (the input's own values: exact), `pitch` elements per row, zero padded: the BFDOT operand.
void pack_q_bf16dot(const void *const *qrows, int rows, int d, int pitch, void *qpack) {
    uint16_t *q = static_cast<uint16_t *>(qpack);
    for (int r = 0; r < rows; ++r) {
        const uint16_t *src = static_cast<const uint16_t *>(qrows[r]);
        for (int c = 0; c < pitch; ++c) q[size_t(r) * pitch + c] = c < d ? src[c] : uint16_t(0);
    }
}

// Elements [c, c+8) of a bf16 row, zero past d (reads nothing past element d-1).
inline bfloat16x8_t load8_bf16_upto(const void *base, int64_t row0, int c, int d) {
    const uint16_t *p = static_cast<const uint16_t *>(base) + row0 + c;
    if (d - c >= 8) return vreinterpretq_bf16_u16(vld1q_u16(p));
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, p, sizeof(uint16_t) * size_t(d - c));
    return vreinterpretq_bf16_u16(vld1q_u16(tmp));
}

// scores_rows with BFDOT: each instruction multiplies 4 pairs of bf16 (exact products) and adds both to an fp32
// lane, so a K row is never widened: half the instructions of the widening path for the same bytes read.
template <int R>
inline void scores_rows_bf16dot(const void *const *krows, int64_t h0, int d, int pitch, const uint16_t *qh,
                                float *part) {
    float32x4_t acc[4][R];
    for (int u = 0; u < 4; ++u)
        for (int r = 0; r < R; ++r) acc[u][r] = vdupq_n_f32(0.0f);
    for (int c = 0; c < d; c += 8) {
        bfloat16x8_t a[4];
        for (int u = 0; u < 4; ++u) a[u] = load8_bf16_upto(krows[u], h0, c, d);
        for (int r = 0; r < R; ++r) {
            const bfloat16x8_t qv = vreinterpretq_bf16_u16(vld1q_u16(qh + r * pitch + c));
            for (int u = 0; u < 4; ++u) acc[u][r] = vbfdotq_f32(acc[u][r], a[u], qv);
        }
    }
    for (int r = 0; r < R; ++r) vst1q_f32(part + r * 64, neon::hsum4(acc[0][r], acc[1][r], acc[2][r], acc[3][r]));
}

void scores_group_bf16dot(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                          const void *qpack, int g, float *partial) {
    scores_heads<uint16_t>(qpack, head_stride, hkv, rows, pitch, g, partial,
                           [&](auto R, int64_t h0, const uint16_t *qr, float *part) {
                               scores_rows_bf16dot<decltype(R)::value>(krows, h0, d, pitch, qr, part);
                           });
}

FA_NEON_BF16_END

// Order: name, pack_q, scores_group, scores_finish, softmax, pv.
template <fa_dtype DT>
constexpr DecodeKernels table(const char *name) {
    return DecodeKernels{name, &pack_q<DT>, &scores_group<DT>, &scores_finish, &softmax, &pv<DT>};
}
const DecodeKernels k_f32 = table<FA_F32>("neon-f32");
const DecodeKernels k_f16 = table<FA_F16>("neon-f16");
const DecodeKernels k_bf16 = table<FA_BF16>("neon-bf16");
// bf16 scores by BFDOT; the rest of the table is the widening one
const DecodeKernels k_bf16dot = {"neon-bf16dot", &pack_q_bf16dot, &scores_group_bf16dot, &scores_finish, &softmax,
                                 &pv<FA_BF16>};

}  // namespace

const DecodeKernels *neon_bf16dot_decode_kernels() { return &k_bf16dot; }

const DecodeKernels *neon_decode_kernels(fa_dtype dt) { return table_for(dt, &k_f32, &k_f16, &k_bf16); }

#else

const DecodeKernels *neon_decode_kernels(fa_dtype) { return nullptr; }
const DecodeKernels *neon_bf16dot_decode_kernels() { return nullptr; }

#endif

}  // namespace fa_cpu
