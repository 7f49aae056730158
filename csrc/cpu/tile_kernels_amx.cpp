// tile_kernels_amx.cpp - the bf16 forward's two products on AMX tiles (amx_tiles.h), in the query-lane layout of
// tile_kernels.h; everything else (softmax, P as bf16 key pairs, the transposing write-out, the decode row layout)
// is the AVX-512 bf16 table's, which this table starts from.
//
//   S^T = K . Q^T   C = sT[16 keys][16 queries], A = the K tile's rows as copied once per work item (prep_k: 16 keys
//                   x 32 head-dim elements per tile row), B = qT, already [d/2][BLOCK_M] bf16 pairs over the head dim.
//   O^T += V^T . P^T C = oT[16 dims][16 queries], A = V^T (prep_v transposes the V tile once per work item to
//                   [d][BLOCK_N] bf16, keys along a row), B = P, already [nk/2][BLOCK_M] bf16 pairs over keys.
// Accumulators are 2 x 2 blocks of C tiles (tiles 0-3, A 4-5, B 6-7), so each operand tile loaded feeds two
// products. Reductions run in whole steps of 32 (16 pairs): the operands are zero-padded to them (qT rows past
// d/2, P rows past nk/2, V^T columns past nk), so the padding adds exact zeros.
#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "avx512_tiles.h"
#include "tile_kernels.h"

namespace fa_cpu {

#ifdef FA_HAVE_AVX512_KERNELS
namespace {

using amx::A0;
using amx::B0;
using amx::C0;
using amx::TILE_PAIRS;
using amx::TILE_ROWS;

constexpr int STEP = 2 * TILE_PAIRS;  // reduction elements per tile product
constexpr int64_t LANE_ROW_BYTES = BLOCK_M * 4;  // sT, oT, qT and P rows: BLOCK_M fp32 or bf16 pairs
// V^T rows: the keys of one K/V tile, whole steps of 32.
constexpr int VT_STRIDE = (BLOCK_N + STEP - 1) / STEP * STEP;
static_assert(size_t(HEADDIM_PAD) * VT_STRIDE * 2 <= KV_PACK_BYTES, "V^T fits the prepared-tile buffer");
static_assert(size_t(HEADDIM_PAD) * VT_STRIDE * 2 <= TILE_SCRATCH_BYTES, "V^T fits the scratch buffer");

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }
// K rows as prep_k_bf16 copies them: the head dim padded with zeros to whole steps.
inline int k_row_stride(int d) { return round_up(d, STEP); }

const TileKernels<float> *base_table() { return avx512_kernels(FA_BF16); }

FA_TARGET_BEGIN(FA_ISA_AMX)

// A 2 x 2 (or smaller, MR x NC) block of C tiles: C[i][j] (tile C0 + 2i + j) = sum over `steps` reduction steps of
// A_i(step) . B_j(step), starting from zero or from C as stored. Operand i/j of step s is at a_ptr(i, s) / b_ptr(j, s).
template <class E, int MR, int NC, bool LOAD_C, class APtr, class BPtr>
inline void block_product(float *c, int64_t c_rs_floats, int steps, APtr a_ptr, int64_t a_stride, BPtr b_ptr,
                          int64_t b_stride) {
    static_assert(MR >= 1 && MR <= 2 && NC >= 1 && NC <= 2, "2 x 2 accumulator tiles at most");
    auto c_at = [&](int i, int j) { return c + int64_t(i) * TILE_ROWS * c_rs_floats + 16 * j; };
    const int64_t c_stride = c_rs_floats * 4;
    if (LOAD_C) {
        E::template load<C0 + 0>(c_at(0, 0), c_stride);
        if (NC == 2) E::template load<C0 + 1>(c_at(0, 1), c_stride);
        if (MR == 2) E::template load<C0 + 2>(c_at(1, 0), c_stride);
        if (MR == 2 && NC == 2) E::template load<C0 + 3>(c_at(1, 1), c_stride);
    } else {
        E::template zero<C0 + 0>();
        if (NC == 2) E::template zero<C0 + 1>();
        if (MR == 2) E::template zero<C0 + 2>();
        if (MR == 2 && NC == 2) E::template zero<C0 + 3>();
    }
    for (int s = 0; s < steps; ++s) {
        E::template load<A0 + 0>(a_ptr(0, s), a_stride);
        if (MR == 2) E::template load<A0 + 1>(a_ptr(1, s), a_stride);
        E::template load<B0 + 0>(b_ptr(0, s), b_stride);
        if (NC == 2) E::template load<B0 + 1>(b_ptr(1, s), b_stride);
        E::template dot_bf16<C0 + 0, A0 + 0, B0 + 0>();
        if (NC == 2) E::template dot_bf16<C0 + 1, A0 + 0, B0 + 1>();
        if (MR == 2) E::template dot_bf16<C0 + 2, A0 + 1, B0 + 0>();
        if (MR == 2 && NC == 2) E::template dot_bf16<C0 + 3, A0 + 1, B0 + 1>();
    }
    E::template store<C0 + 0>(c_at(0, 0), c_stride);
    if (NC == 2) E::template store<C0 + 1>(c_at(0, 1), c_stride);
    if (MR == 2) E::template store<C0 + 2>(c_at(1, 0), c_stride);
    if (MR == 2 && NC == 2) E::template store<C0 + 3>(c_at(1, 1), c_stride);
}

// C (row blocks of 16, column blocks of 16 lanes) over `row_blocks` x `col_blocks` tiles, in 2 x 2 blocks.
template <class E, bool LOAD_C, class APtr, class BPtr>
void tiled_product(float *c, int row_blocks, int col_blocks, int steps, APtr a_ptr, int64_t a_stride, BPtr b_ptr,
                   int64_t b_stride) {
    for (int rb = 0; rb < row_blocks; rb += 2) {
        for (int cb = 0; cb < col_blocks; cb += 2) {
            float *cc = c + int64_t(rb) * TILE_ROWS * BLOCK_M + 16 * cb;
            auto a = [&](int i, int s) { return a_ptr(rb + i, s); };
            auto b = [&](int j, int s) { return b_ptr(cb + j, s); };
            const bool two_rows = rb + 1 < row_blocks, two_cols = cb + 1 < col_blocks;
            if (two_rows && two_cols) block_product<E, 2, 2, LOAD_C>(cc, BLOCK_M, steps, a, a_stride, b, b_stride);
            else if (two_rows) block_product<E, 2, 1, LOAD_C>(cc, BLOCK_M, steps, a, a_stride, b, b_stride);
            else if (two_cols) block_product<E, 1, 2, LOAD_C>(cc, BLOCK_M, steps, a, a_stride, b, b_stride);
            else block_product<E, 1, 1, LOAD_C>(cc, BLOCK_M, steps, a, a_stride, b, b_stride);
        }
    }
}

// qT as the AVX-512 bf16 table packs it, plus zero pairs up to the K rows' padded width; and the tile configuration
// of this thread's work item (every scores/pv call of the item follows its pack_qT calls in the same thread).
template <class E>
void pack_qT(const void *const *rows, int nrows, int d, int nv, void *qT) {
    E::configure();
    base_table()->pack_qT(rows, nrows, d, nv, qT);
    const int pairs = (d + 1) / 2, padded = k_row_stride(d) / 2;
    std::memset(static_cast<char *>(qT) + size_t(pairs) * LANE_ROW_BYTES, 0, size_t(padded - pairs) * LANE_ROW_BYTES);
}

// sT[j][r] = sum_c K[j0 + j][c] Q[r][c]: rows j < round_up(nk, 16) are written (rows past nk are never read).
template <class E>
void scores(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *) {
    const int ws = k_row_stride(d);
    const uint16_t *kb = static_cast<const uint16_t *>(k.packed) + int64_t(j0) * ws;
    const uint16_t *q = static_cast<const uint16_t *>(qT);
    auto a = [&](int i, int s) { return kb + int64_t(i) * TILE_ROWS * ws + s * STEP; };
    auto b = [&](int j, int s) { return q + (int64_t(s) * TILE_PAIRS * BLOCK_M + 16 * j) * 2; };
    tiled_product<E, false>(sT, (nk + TILE_ROWS - 1) / TILE_ROWS, nv, ws / STEP, a, int64_t(ws) * 2, b,
                            LANE_ROW_BYTES);
}

// vT[c][j] = V[j][c] (bf16 bits) for c < round_up(d, 16), j < round_up(nk, 32); zero past d and past nk. Pairs of key
// rows are interleaved into 32-bit words and 16 x 16 words transposed in registers.
void transpose_v(const uint16_t *v, int64_t vstride, int nk, int d, uint16_t *vT) {
    const int pairs = round_up(nk, STEP) / 2;
    for (int c0 = 0; c0 < d; c0 += 16) {
        const __mmask16 cols = avx512::mask16(d - c0);
        for (int kp0 = 0; kp0 < pairs; kp0 += 16) {
            __m512 x[16];
            for (int i = 0; i < 16; ++i) {
                const int j = 2 * (kp0 + i);
                const __m256i lo = j < nk ? _mm256_maskz_loadu_epi16(cols, v + j * vstride + c0) : _mm256_setzero_si256();
                const __m256i hi = j + 1 < nk ? _mm256_maskz_loadu_epi16(cols, v + (j + 1) * vstride + c0)
                                              : _mm256_setzero_si256();
                x[i] = _mm512_castsi512_ps(_mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16)));
            }
            avx512_tile::transpose16(x);
            for (int c = 0; c < 16; ++c) _mm512_store_ps(reinterpret_cast<float *>(vT + (c0 + c) * VT_STRIDE + 2 * kp0), x[c]);
        }
    }
}

void prep_v(KvTile &t, int d) {
    transpose_v(static_cast<const uint16_t *>(t.rows), t.stride, t.nk, d, static_cast<uint16_t *>(t.packed));
}

// P pair rows past the keys' last pair, up to a whole step, set to zero (the product reads whole steps).
void zero_p_tail(int nk, int nv, void *p) {
    const int pairs = (nk + 1) / 2, padded = round_up(nk, STEP) / 2;
    for (int kp = pairs; kp < padded; ++kp)
        std::memset(static_cast<char *>(p) + size_t(kp) * LANE_ROW_BYTES, 0, size_t(nv) * 64);
}

void softmax_p(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha, void *p) {
    base_table()->softmax_p(sT, nk, nv, mul, m, l, alpha, p);
    zero_p_tail(nk, nv, p);
}

void pack_p(const float *sT, int nk, int nv, void *p) {
    base_table()->pack_p(sT, nk, nv, p);
    zero_p_tail(nk, nv, p);
}

// oT[c][r] = alpha[r] oT[c][r] + sum_j V[j0 + j][c] P[j][r]. The prepared V^T serves a query tile that uses the whole
// K/V tile; one whose band starts or ends inside it (causal diagonal, local window) gets V^T of exactly its keys, so
// that a key outside the band (whose V may be inf or NaN) never meets a zero P.
template <class E>
void pv(const KvTile &v, int j0, int nk, int d, const void *p, int nv, const float *alpha, float *oT, void *scratch) {
    const uint16_t *vT = static_cast<const uint16_t *>(v.packed);
    if (j0 != 0 || nk != v.nk) {
        uint16_t *own = static_cast<uint16_t *>(scratch);
        transpose_v(static_cast<const uint16_t *>(v.rows) + int64_t(j0) * v.stride, v.stride, nk, d, own);
        vT = own;
    }
    const int row_blocks = (d + TILE_ROWS - 1) / TILE_ROWS;
    if (const float *al = avx512_tile::rescale_or_null(alpha, nv)) {
        for (int c = 0; c < row_blocks * TILE_ROWS; ++c)
            for (int w = 0; w < nv; ++w) {
                float *o = oT + c * BLOCK_M + 16 * w;
                _mm512_store_ps(o, _mm512_mul_ps(_mm512_load_ps(o), _mm512_load_ps(al + 16 * w)));
            }
    }
    const uint16_t *pp = static_cast<const uint16_t *>(p);
    auto a = [&](int i, int s) { return vT + int64_t(i) * TILE_ROWS * VT_STRIDE + s * STEP; };
    auto b = [&](int j, int s) { return pp + (int64_t(s) * TILE_PAIRS * BLOCK_M + 16 * j) * 2; };
    tiled_product<E, true>(oT, row_blocks, nv, round_up(nk, STEP) / STEP, a, int64_t(VT_STRIDE) * 2, b,
                           LANE_ROW_BYTES);
}

// The write-out of a finished query tile ends the work item's use of the tiles.
template <class E>
void write_rows(const float *oT, int nrows, int d, const float *inv_l, void *const *out_rows) {
    E::release();
    base_table()->write_rows(oT, nrows, d, inv_l, out_rows);
}

FA_TARGET_END

template <class E>
TileKernels<float> make_table() {
    TileKernels<float> t = *base_table();
    t.name = E::name;
    t.pack_qT = &pack_qT<E>;
    t.scores = &scores<E>;
    t.pv = &pv<E>;
    t.prep_v = &prep_v;
    t.softmax_p = &softmax_p;
    t.pack_p = &pack_p;
    t.write_rows = &write_rows<E>;
    return t;
}

}  // namespace

const TileKernels<float> *amx_kernels(fa_dtype dt, bool emulated) {
    if (dt != FA_BF16 || base_table() == nullptr || base_table()->softmax_p == nullptr) return nullptr;
    static const TileKernels<float> hw = make_table<amx::HwTiles>();
    static const TileKernels<float> emu = make_table<amx::EmulatedTiles>();
    return emulated ? &emu : &hw;
}

#else

const TileKernels<float> *amx_kernels(fa_dtype, bool) { return nullptr; }

#endif

}  // namespace fa_cpu
