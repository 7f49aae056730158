// decode_kernels_neon.cpp - Arm NEON (AArch64 Advanced SIMD) decode kernels (see decode_kernels.h for the
// memory-order walk).
//
//   fp32 FMA over the head dim, 4 lanes; fp16 widened on load with fcvtl, bf16 by a 16-bit shift (exact); O += p V in
//   fp32; every row of a KV head served in one pass over its K/V vectors (32 q registers). Those kernel bodies are
//   decode_simd.h's, shared with AVX2; neon::Ops (neon_common.h) picks the instructions.
//   bf16 scores, where the CPU has the bf16 extension (FEAT_BF16), by BFDOT on the bf16 K rows and q as they are
//   (neon_bf16dot_decode_kernels; the rest of that table is the widening one).
// Speed on real Arm hardware has never been measured (built with a cross compiler, checked under qemu-aarch64).
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu_dtype.h"
#include "decode_kernels.h"
#include "neon_common.h"

#ifdef FA_HAVE_NEON_KERNELS
#include "decode_simd.h"  // the widening kernels, instantiated with neon::Ops (AArch64 needs no target region)
#endif

namespace fa_cpu {

#ifdef FA_HAVE_NEON_KERNELS
namespace {

using Ops = neon::Ops;

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
    for (int r = 0; r < R; ++r) Ops::store_hsum4(part + r * 64, acc[0][r], acc[1][r], acc[2][r], acc[3][r]);
}

void scores_group_bf16dot(const void *const *krows, int64_t head_stride, int hkv, int rows, int d, int pitch,
                          const void *qpack, int g, float *partial) {
    decode_simd::scores_heads<Ops::DECODE_ROWS, uint16_t>(qpack, head_stride, hkv, rows, pitch, g, partial,
                                                          [&](auto R, int64_t h0, const uint16_t *qr, float *part) {
                                                              scores_rows_bf16dot<decltype(R)::value>(krows, h0, d,
                                                                                                      pitch, qr, part);
                                                          });
}

FA_NEON_BF16_END

// bf16 scores by BFDOT; the rest of the table is the widening one
const DecodeKernels k_bf16dot = {"neon-bf16dot", &pack_q_bf16dot, &scores_group_bf16dot,
                                 &decode_simd::scores_finish<Ops>, &decode_simd::softmax<Ops>,
                                 &decode_simd::pv<Ops, FA_BF16>};

}  // namespace

const DecodeKernels *neon_bf16dot_decode_kernels() { return &k_bf16dot; }

const DecodeKernels *neon_decode_kernels(fa_dtype dt) {
    using T = decode_simd::Tables<Ops>;
    return table_for(dt, &T::k[0], &T::k[1], &T::k[2]);
}

#else

const DecodeKernels *neon_decode_kernels(fa_dtype) { return nullptr; }
const DecodeKernels *neon_bf16dot_decode_kernels() { return nullptr; }

#endif

}  // namespace fa_cpu
