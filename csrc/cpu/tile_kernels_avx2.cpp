// tile_kernels_avx2.cpp - AVX2 (+FMA, +F16C) kernels for the query-lane layout of tile_kernels.h, for x86-64 CPUs
// without AVX-512.
//
// Compiled for any x86-64 target; the AVX2 code lives in FA_TARGET_BEGIN(FA_ISA_AVX2) regions and is only reached
// after isa_dispatch.cpp has checked the CPU (no -march flag, no illegal instruction on older CPUs).
//   The layout is the AVX-512 one (LANES = 16 query rows per "vector", BLOCK_M = 64): each 16-lane vector is two
//   8-lane ymm registers here.
//   Products: micro-kernels C[R rows][32 lanes] += A[r][k] (broadcast from the prepared K or V tile) * B[k][lanes],
//   3 rows x 4 ymm = 12 accumulators + 4 B vectors + 1 broadcast (17 values for 16 ymm registers: the compiler re-reads
//   one from L1); an odd last 16-lane vector uses 6 rows x 2 ymm. fp32 FMA. The 32-lane
//   tile measured ~8% faster than 6 x 16 lanes alone on Zen 4 (fewer loads per FMA).
//   fp16 K/V widened to fp32 with vcvtph2ps, bf16 by a 16-bit shift (exact), once per K/V tile and work item; Q the
//   same way when packed. So every dtype runs the fp32 products (AVX2 has no bf16 dot product; P stays fp32).
//   Softmax: 8 lanes at a time, lane::softmax_core with this file's cheaper exponent and exp2 (avx2::softmax).
//   Q in and O out: 8x8 register transposes (pack_qT, write_rows); few-row tiles use the lane layout too.
// The product and prep bodies are lane_kernels.h's, shared with NEON; avx2::Ops (avx2_common.h) picks the instructions.
#include <cmath>
#include <cstring>

#include "avx2_common.h"
#include "cpu_dtype.h"
#include "tile_kernels.h"

#ifdef FA_HAVE_AVX2_KERNELS
// The kernels: lane_kernels.h instantiated with avx2::Ops, inside the AVX2 target region.
FA_TARGET_BEGIN(FA_ISA_AVX2)
#include "lane_kernels.h"
FA_TARGET_END
#endif

namespace fa_cpu {

#ifdef FA_HAVE_AVX2_KERNELS
namespace avx2 {

FA_TARGET_BEGIN(FA_ISA_AVX2)

// The forward's online-softmax step (lane::softmax_core) with fewer operations per score than the shared one, whose
// exp2 and exponent rule stay those of NEON and decode. ~20 -> ~17 vector operations per 8 scores (the step was ~11%
// of the fp32 d=64 forward):
//  - the exponent s*mul - m is one FMA unless some |m| >= 2^20 (the AVX-512 rule, avx512_tiles.h FusedExponent:
//    exact product, one rounding; huge logits take the product rounded first, consistent with m);
//  - exp2 needs no upper clamp: its arguments are m_old - m_new <= 0 and s*mul - m <= 2^-4 (m is the max of the
//    rounded products, which the exact one exceeds by at most half an ulp of m < 2^20), or NaN;
//  - n = round(x) and its biased exponent come from one add of 1.5*2^23 + 127 (the integer lands in the low mantissa
//    bits), replacing round, convert and integer add. Ties may round either way: |f| <= 1/2 holds both ways, where
//    the polynomial (the same degree-7 sum as simd::exp2_clamped) is accurate.
struct SoftmaxOps : Ops {
    static vec exp2(vec x) {
        constexpr const float *c = EXP2_POLY;
        const vec magic = _mm256_set1_ps(12583039.0f);  // 1.5 * 2^23 + 127
        // -127 flushes to 0 (biased exponent 0), -inf (masked) included; NaN stays NaN (max_ps returns its second
        // operand when either is NaN).
        x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x);
        const vec y = _mm256_add_ps(x, magic);  // low mantissa bits: round(x) + 127
        const vec f = _mm256_sub_ps(x, _mm256_sub_ps(y, magic));
        vec p = _mm256_set1_ps(c[7]);
#pragma GCC unroll 8
        for (int k = 6; k >= 0; --k) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c[k]));
        return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(y), 23)));
    }
};

struct FusedExponent {
    __m256 m_use, vmul;
    bool huge;
    FusedExponent(__m256 m, __m256 mul)
        : m_use(m), vmul(mul),
          huge(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), m),
                                                _mm256_set1_ps(1048576.0f), _CMP_GE_OQ)) != 0) {}
    __m256 operator()(__m256 s) const {
        return huge ? _mm256_sub_ps(Ops::mul_rounded(s, vmul), m_use) : _mm256_fmsub_ps(s, vmul, m_use);
    }
};

void softmax(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha) {
    lane::softmax_core<SoftmaxOps, FusedExponent>(sT, nk, nv, mul, m, l, alpha, lane::StoreInPlace<SoftmaxOps>{});
}

// x[i] <- column i of the 8x8 block whose rows are x[0..8).
inline void transpose8(__m256 x[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        x[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        x[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

// lane::pack_qT's result (qT[c][r] = Q row r, element c, widened; rows nrows.. up to nv*16 zero) by 8x8 register
// transposes instead of one scalar store per element (~2-4% of the forward at 512-2048 keys). Same values.
template <fa_dtype DT>
void pack_qT(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    float *qT = static_cast<float *>(qT_);
    for (int r0 = 0; r0 < nv * LANES; r0 += 8) {
        for (int c0 = 0; c0 < d; c0 += 8) {
            __m256 x[8];
            for (int i = 0; i < 8; ++i)
                x[i] = r0 + i < nrows ? Ops::load_upto<DT>(rows[r0 + i], 0, c0, d) : _mm256_setzero_ps();
            transpose8(x);
            const int nc = d - c0 < 8 ? d - c0 : 8;
            for (int c = 0; c < nc; ++c) _mm256_store_ps(qT + (c0 + c) * BLOCK_M + r0, x[c]);
        }
    }
}

// Row r's 8 outputs (x) at out + c0 in dtype DT, the first nc of them. fp32 and bf16 (round to nearest even, NaN
// kept quiet: cpu_dtype.h f32_to_bf16) in vector code; fp16 element by element through f32_to_f16, so that every
// dtype keeps the bits of the driver's scalar write-out.
template <fa_dtype DT>
inline void store_row8(void *out, int c0, int nc, __m256 x) {
    if (DT == FA_F32) {
        float *o = static_cast<float *>(out) + c0;
        if (nc == 8) _mm256_storeu_ps(o, x);
        else _mm256_maskstore_ps(o, _mm256_castps_si256(Ops::lanes_below(nc)), x);
        return;
    }
    uint16_t *o = static_cast<uint16_t *>(out) + c0;
    alignas(32) uint16_t h[8];
    if (DT == FA_BF16) {
        const __m256i u = _mm256_castps_si256(x);
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff));
        const __m256i rne = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
        const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
        const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                                  _mm256_set1_epi32(0x7f800000));
        const __m256i w = _mm256_blendv_epi8(rne, qnan, is_nan);  // 8 words in 0..0xffff
        const __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
        if (nc == 8) {
            _mm_storeu_si128(reinterpret_cast<__m128i *>(o), p);
            return;
        }
        _mm_store_si128(reinterpret_cast<__m128i *>(h), p);
    } else {
        alignas(32) float f[8];
        _mm256_store_ps(f, x);
        for (int c = 0; c < nc; ++c) h[c] = f32_to_f16(f[c]);
    }
    std::memcpy(o, h, sizeof(uint16_t) * size_t(nc));
}

// out_rows[r][c] = oT[c][r] * inv_l[r] in dtype DT (r < nrows, c < d) by 8x8 register transposes: the driver's
// scalar write-out reads O^T one element per 256 bytes (~1.5% of the fp32 d=64 forward at 2048 keys, more at 512).
// The same single fp32 multiply per element, so the same bits.
template <fa_dtype DT>
void write_rows(const float *oT, int nrows, int d, const float *inv_l, void *const *out_rows) {
    for (int r0 = 0; r0 < nrows; r0 += 8) {
        const __m256 inv = _mm256_loadu_ps(inv_l + r0);  // inv_l has BLOCK_M entries
        const int nr = nrows - r0 < 8 ? nrows - r0 : 8;
        for (int c0 = 0; c0 < d; c0 += 8) {
            const int nc = d - c0 < 8 ? d - c0 : 8;
            __m256 x[8];
            for (int c = 0; c < 8; ++c)
                x[c] = c < nc ? _mm256_mul_ps(_mm256_load_ps(oT + (c0 + c) * BLOCK_M + r0), inv) : _mm256_setzero_ps();
            transpose8(x);
            for (int r = 0; r < nr; ++r) store_row8<DT>(out_rows[r0 + r], c0, nc, x[r]);
        }
    }
}

FA_TARGET_END

// The tables (lane::Tables' layout, with this file's pack_qT, softmax and write_rows). Order: name, pack_qT, scores,
// softmax, pv, row layout (pack_q_rows, scores_rows, pv_rows), then prep_k, prep_v, softmax_p, pack_p, write_rows.
template <fa_dtype DT>
constexpr TileKernels<float> table(const char *name) {
    return TileKernels<float>{name,          &pack_qT<DT>,     &lane::scores<Ops>, &softmax, &lane::pv<Ops>,
                              nullptr,       nullptr,          nullptr,            &lane::prep<Ops, DT>,
                              &lane::prep<Ops, DT>, nullptr,   nullptr,            &write_rows<DT>};
}
constexpr TileKernels<float> k_tables[3] = {table<FA_F32>(Ops::names[0]), table<FA_F16>(Ops::names[1]),
                                            table<FA_BF16>(Ops::names[2])};

}  // namespace avx2

const TileKernels<float> *avx2_kernels(fa_dtype dt) {
    return table_for(dt, &avx2::k_tables[0], &avx2::k_tables[1], &avx2::k_tables[2]);
}

#else

const TileKernels<float> *avx2_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
