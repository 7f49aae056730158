// bwd_kernels_amx.cpp - the backward's five bf16 products on AMX tiles (csrc/cpu/amx_tiles.h): the AVX-512 bf16
// table (bwd_kernels_avx512.cpp) with scores_bf16 (S = Q K^T, dPd = dO V^T) and accumulate_bf16 (dV += Pd^T dO,
// dK += dX^T Q, dQ += dX K) replaced; the operands are the same bf16 pairs, so only the products change.
//
// A product works on whole 16 x 16 tiles. Operands already in tile form (pairs contiguous along the reduction, whole
// tiles inside the caller's arrays, as for head dims and tiles that are multiples of 16 and 32) are read in place;
// others are staged per call into zero-padded per-thread copies: a transposed left operand (Pd^T, dX^T: pairs over
// query rows, 16 x 16 words transposed in registers), a reduction or a row count that is not a whole tile, and C
// when its rows or columns are not (the zero padding adds exact zeros, and only C's own elements are written back).
// Each call configures the tiles and releases them at its end.
#include "bwd_kernels.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "bwd_tile_math.h"  // kBlockK
#include "cpu/amx_tiles.h"
#include "cpu/avx512_tiles.h"

namespace fa_bwd {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

using fa_cpu::amx::TILE_PAIRS;
using fa_cpu::amx::TILE_ROWS;

inline int round16(int x) { return (x + 15) & ~15; }

// Per-thread staging: left operand [rows][pairs], right operand [pairs][columns] (32-bit words of two bf16), C.
struct Staging {
    std::vector<uint32_t> a, b;
    std::vector<float> c;
};
thread_local Staging tl_staging;

template <typename T>
T *zeroed(std::vector<T> &v, size_t n) {
    if (v.size() < n) v.resize(n);
    std::memset(v.data(), 0, n * sizeof(T));
    return v.data();
}

FA_TARGET_BEGIN(FA_ISA_AMX)

// out[r][t] (ld words a row) = a[r*a_rs + t*a_ks] for r < m, t < kk2; zero elsewhere (out is zeroed).
void stage_left(int m, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, uint32_t *out, int ld) {
    if (a_rs == 1) {  // pairs over query rows, the m words of one t contiguous: transpose 16 x 16 blocks
        for (int t0 = 0; t0 < kk2; t0 += 16)
            for (int r0 = 0; r0 < m; r0 += 16) {
                __m512 x[16];
                for (int i = 0; i < 16; ++i)
                    x[i] = t0 + i < kk2 ? _mm512_maskz_loadu_ps(fa_cpu::avx512::mask16(m - r0),
                                                                a + int64_t(t0 + i) * a_ks + r0)
                                        : _mm512_setzero_ps();
                fa_cpu::avx512_tile::transpose16(x);
                for (int c = 0; c < 16; ++c) _mm512_storeu_ps(reinterpret_cast<float *>(out + (r0 + c) * ld + t0), x[c]);
            }
        return;
    }
    for (int r = 0; r < m; ++r)
        for (int t = 0; t < kk2; ++t) out[r * ld + t] = a[r * a_rs + t * a_ks];
}

// C[m][n] (+)= sum_t dot2(A pair (r, t), B pair row t), A pair (r, t) the word a[r*a_rs + t*a_ks], B pair row t the n
// words at b + t*b_rs (uint16 units, even).
template <class E>
void tile_product(int m, int n, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b,
                  int64_t b_rs, float *c, int64_t c_rs, bool accumulate) {
    if (m <= 0 || n <= 0) return;
    const int m16 = round16(m), n16 = round16(n), k16 = round16(kk2);
    Staging &st = tl_staging;
    const uint32_t *left = a;
    int64_t ld_left = a_rs;
    if (!(a_ks == 1 && m == m16 && kk2 == k16)) {
        uint32_t *s = zeroed(st.a, size_t(m16) * k16);
        stage_left(m, kk2, a, a_rs, a_ks, s, k16);
        left = s, ld_left = k16;
    }
    const uint32_t *right = reinterpret_cast<const uint32_t *>(b);
    int64_t ld_right = b_rs / 2;
    if (!(n == n16 && kk2 == k16)) {
        uint32_t *s = zeroed(st.b, size_t(k16) * n16);
        for (int t = 0; t < kk2; ++t) std::memcpy(s + t * n16, b + t * b_rs, size_t(n) * 4);
        right = s, ld_right = n16;
    }
    const bool c_in_place = m == m16 && n == n16;
    float *out = c;
    int64_t ld_out = c_rs;
    if (!c_in_place) {
        out = zeroed(st.c, size_t(m16) * n16);
        ld_out = n16;
        if (accumulate)
            for (int r = 0; r < m; ++r) std::memcpy(out + r * n16, c + r * c_rs, size_t(n) * 4);
    }
    auto a_at = [&](int i, int s) { return left + int64_t(i) * TILE_ROWS * ld_left + s * TILE_PAIRS; };
    auto b_at = [&](int j, int s) { return right + int64_t(s) * TILE_PAIRS * ld_right + 16 * j; };
    E::configure();
    if (accumulate)
        fa_cpu::amx::tiled_product<E, true>(out, ld_out, m16 / 16, n16 / 16, k16 / 16, a_at, ld_left * 4, b_at,
                                            ld_right * 4);
    else
        fa_cpu::amx::tiled_product<E, false>(out, ld_out, m16 / 16, n16 / 16, k16 / 16, a_at, ld_left * 4, b_at,
                                             ld_right * 4);
    E::release();
    if (!c_in_place)
        for (int r = 0; r < m; ++r) std::memcpy(c + r * c_rs, out + r * n16, size_t(n) * 4);
}

// S = Q K^T / dPd = dO V^T: a = bf16 rows a_rs elements apart (even), bt2 = [kk2][kBlockK] pairs, out = [m][kBlockK].
template <class E>
void scores_bf16(int m, int kk2, const uint16_t *a, int64_t a_rs, const uint16_t *bt2, float *out) {
    tile_product<E>(m, kBlockK, kk2, reinterpret_cast<const uint32_t *>(a), a_rs / 2, 1, bt2, 2 * kBlockK, out,
                    kBlockK, false);
}

template <class E>
void accumulate_bf16(int m, int n, int kk2, const uint32_t *a, int64_t a_rs, int64_t a_ks, const uint16_t *b,
                     int64_t b_rs, float *c, int64_t c_rs) {
    tile_product<E>(m, n, kk2, a, a_rs, a_ks, b, b_rs, c, c_rs, true);
}

FA_TARGET_END

template <class E>
BwdKernelsF32 make_table(const char *name) {
    BwdKernelsF32 t = *bwd_avx512_kernels_f32(true);
    t.name = name;
    t.scores_bf16 = &scores_bf16<E>;
    t.accumulate_bf16 = &accumulate_bf16<E>;
    return t;
}

}  // namespace

const BwdKernelsF32 *bwd_amx_kernels_f32(bool emulated) {
    const BwdKernelsF32 *base = bwd_avx512_kernels_f32(true);
    if (base == nullptr || base->scores_bf16 == nullptr) return nullptr;
    static const BwdKernelsF32 hw =
        make_table<fa_cpu::amx::HwTiles>("amx (bf16 products on AMX tiles; fp32 FMA register tiles otherwise)");
    static const BwdKernelsF32 emu = make_table<fa_cpu::amx::EmulatedTiles>(
        "amx-emulated (bf16 products on a scalar model of the AMX tiles; fp32 FMA register tiles otherwise)");
    return emulated ? &emu : &hw;
}

#else

const BwdKernelsF32 *bwd_amx_kernels_f32(bool) { return nullptr; }

#endif

}  // namespace fa_bwd
