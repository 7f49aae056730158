// tile_kernels_amx.cpp - the bf16 and fp16 forward's two products on AMX tiles (amx_tiles.h), in the query-lane
// layout of tile_kernels.h; everything else (softmax, the transposing write-out, the decode row layout) is the AVX-512
// table's of the same dtype, which each table starts from.
//
// fp16 through bf16 tiles, exactly enough: an fp16 value (11 significant bits) is hi + lo with hi = bf16(x) and
// lo = x - hi, both exact in bf16, so x.y = hi.hi' + hi.lo' + lo.hi' + lo.lo', the last term below 2^-16 |x y|
// (fp16's own rounding is 2^-11). The tiles multiply the parts laid end to end along the reduction, the left operand
// as [hi | lo | hi] and the right as [hi ; hi ; lo]: three bf16 products' work for one, still several times the rate
// of the AVX-512 fp32 FMAs. P (fp32) is split the same way (16 significant bits kept; flash_attn rounds it to 11).
//
//   S^T = K . Q^T   C = sT[16 keys][16 queries], A = the K tile's rows as copied once per work item (prep_k: 16 keys
//                   x 32 head-dim elements per tile row), B = qT as [d/2][BLOCK_M] bf16 pairs over the head dim.
//   O^T += V^T . P^T C = oT[16 dims][16 queries], A = V^T (prep_v transposes the V tile once per work item to
//                   [d][BLOCK_N] bf16, keys along a row), B = P as [nk/2][BLOCK_M] bf16 pairs over keys.
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

using amx::TILE_PAIRS;
using amx::TILE_ROWS;

constexpr int STEP = 2 * TILE_PAIRS;  // reduction elements per tile product
constexpr int64_t LANE_ROW_BYTES = BLOCK_M * 4;  // sT, oT, qT and P rows: BLOCK_M fp32 or bf16 pairs
// V^T rows: the keys of one K/V tile, whole steps of 32.
constexpr int VT_STRIDE = (BLOCK_N + STEP - 1) / STEP * STEP;
// (three parts for fp16; K rows are read in whole blocks of 16, past the tile's last row)
static_assert(size_t(HEADDIM_PAD) * 3 * VT_STRIDE * 2 <= KV_PACK_BYTES, "V^T fits the prepared-tile buffer");
static_assert(size_t(HEADDIM_PAD) * 3 * VT_STRIDE * 2 <= TILE_SCRATCH_BYTES, "V^T fits the scratch buffer");
static_assert(size_t(BLOCK_N + 15) * 3 * HEADDIM_PAD * 2 <= KV_PACK_BYTES, "K rows fit the prepared-tile buffer");

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }
// The head dim padded with zeros to whole steps: one part of a K row, of a qT column.
inline int k_part_width(int d) { return round_up(d, STEP); }

// bf16 operands are one part; fp16 operands three (hi, lo, hi on the left; hi, hi, lo on the right).
template <fa_dtype DT>
constexpr int PARTS = DT == FA_F16 ? 3 : 1;
constexpr int LEFT_PART[3] = {0, 1, 0}, RIGHT_PART[3] = {0, 0, 1};  // 0 = hi, 1 = lo
// The earlier segment holding the same part as segment `seg` (its values are copied, not converted again), or -1.
constexpr int same_part_before(const int (&parts)[3], int seg) {
    for (int s = 0; s < seg; ++s)
        if (parts[s] == parts[seg]) return s;
    return -1;
}

template <fa_dtype DT>
const TileKernels<float> *base_table() { return avx512_kernels(DT); }

FA_TARGET_BEGIN(FA_ISA_AMX)

// x = hi + lo, both rounded to bf16 (RNE), as fp32 values.
inline void split_bf16(__m512 x, __m512 &hi, __m512 &lo) {
    hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)), 16));
    lo = _mm512_sub_ps(x, hi);
}
// 32 elements of a row (fp16: widened; bf16: raw bits), elements [e0, e0 + 32) with those past n zero, as the
// bf16 bits of part `part`: 16 words of element pairs.
template <fa_dtype DT>
inline __m512i part_words(const void *row, int e0, int n, int part) {
    if (DT == FA_BF16) return _mm512_maskz_loadu_epi16(avx512::mask32(n - e0), static_cast<const uint16_t *>(row) + e0);
    __m512 x[2], hi, lo;
    for (int h = 0; h < 2; ++h)  // (a half wholly past the row reads nothing)
        x[h] = avx512::load16<FA_F16>(row, e0 + 16 * h, avx512::mask16(n - e0 - 16 * h));
    __m512 v[2];
    for (int h = 0; h < 2; ++h) {
        split_bf16(x[h], hi, lo);
        v[h] = part == 0 ? hi : lo;
    }
    return (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]);  // elements in order: v[0] then v[1] (exact: both are bf16)
}

// qT[w][r] = word w of row r's right operand [hi ; hi ; lo] (one part for bf16), each part k_part_width(d) elements,
// zero past d and past nrows; and the tile configuration of this thread's work item (every scores/pv call of the
// item follows its pack_qT calls in the same thread).
template <class E, fa_dtype DT>
void pack_qT(const void *const *rows, int nrows, int d, int nv, void *qT) {
    E::configure();
    const int part_words_n = k_part_width(d) / 2;
    uint32_t *out = static_cast<uint32_t *>(qT);
    for (int g = 0; g < nv; ++g) {
        for (int seg = 0; seg < PARTS<DT>; ++seg) {
            if (const int src = same_part_before(RIGHT_PART, seg); src >= 0) {
                for (int w = 0; w < part_words_n; ++w)
                    std::memcpy(out + (seg * part_words_n + w) * BLOCK_M + 16 * g,
                                out + (src * part_words_n + w) * BLOCK_M + 16 * g, 64);
                continue;
            }
            for (int w0 = 0; w0 < part_words_n; w0 += 16) {
                __m512 x[16];
                for (int r = 0; r < 16; ++r)
                    x[r] = 16 * g + r < nrows ? _mm512_castsi512_ps(part_words<DT>(rows[16 * g + r], 2 * w0, d,
                                                                                   RIGHT_PART[seg]))
                                              : _mm512_setzero_ps();
                avx512_tile::transpose16(x);
                for (int c = 0; c < 16; ++c)
                    _mm512_store_ps(reinterpret_cast<float *>(out + (seg * part_words_n + w0 + c) * BLOCK_M + 16 * g), x[c]);
            }
        }
    }
}

// K rows [hi | lo | hi] (one part for bf16), once per K/V tile and work item.
template <fa_dtype DT>
void prep_k(KvTile &t, int d) {
    const int pw = k_part_width(d), ws = PARTS<DT> * pw;
    uint16_t *dst = static_cast<uint16_t *>(t.packed);
    for (int j = 0; j < t.nk; ++j) {
        const void *row = static_cast<const uint16_t *>(t.rows) + j * t.stride;
        for (int seg = 0; seg < PARTS<DT>; ++seg) {
            if (const int src = same_part_before(LEFT_PART, seg); src >= 0) {
                std::memcpy(dst + j * ws + seg * pw, dst + j * ws + src * pw, size_t(pw) * 2);
                continue;
            }
            for (int c = 0; c < pw; c += STEP)
                _mm512_store_si512(dst + j * ws + seg * pw + c, part_words<DT>(row, c, d, LEFT_PART[seg]));
        }
    }
}

// sT[j][r] = sum_c K[j0 + j][c] Q[r][c]: rows j < round_up(nk, 16) are written (rows past nk are never read).
template <class E, fa_dtype DT>
void scores(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, float *sT, void *) {
    const int ws = PARTS<DT> * k_part_width(d);
    const uint16_t *kb = static_cast<const uint16_t *>(k.packed) + int64_t(j0) * ws;
    const uint16_t *q = static_cast<const uint16_t *>(qT);
    auto a = [&](int i, int s) { return kb + int64_t(i) * TILE_ROWS * ws + s * STEP; };
    auto b = [&](int j, int s) { return q + (int64_t(s) * TILE_PAIRS * BLOCK_M + 16 * j) * 2; };
    amx::tiled_product<E, false>(sT, BLOCK_M, (nk + TILE_ROWS - 1) / TILE_ROWS, nv, ws / STEP, a, int64_t(ws) * 2, b,
                                 LANE_ROW_BYTES);
}

// vT[c][seg * K + j] = part LEFT_PART[seg] of V[j][c] (bf16 bits), K = round_up(nk, 32), for c < round_up(d, 16);
// zero past d and past nk. Pairs of key rows are interleaved into 32-bit words and 16 x 16 words transposed in
// registers.
template <fa_dtype DT>
void transpose_v(const uint16_t *v, int64_t vstride, int nk, int d, uint16_t *vT) {
    const int keys = round_up(nk, STEP);
    for (int seg = 0; seg < PARTS<DT>; ++seg) {
        if (const int src = same_part_before(LEFT_PART, seg); src >= 0) {
            for (int c = 0; c < round_up(d, 16); ++c)
                std::memcpy(vT + c * PARTS<DT> * VT_STRIDE + seg * keys, vT + c * PARTS<DT> * VT_STRIDE + src * keys,
                            size_t(keys) * 2);
            continue;
        }
        for (int c0 = 0; c0 < d; c0 += 16) {
            const __mmask16 cols = avx512::mask16(d - c0);
            for (int kp0 = 0; kp0 < keys / 2; kp0 += 16) {
                __m512 x[16];
                for (int i = 0; i < 16; ++i) {
                    const int j = 2 * (kp0 + i);
                    __m512i w[2];
                    for (int h = 0; h < 2; ++h) {
                        if (j + h >= nk) {
                            w[h] = _mm512_setzero_si512();
                        } else if (DT == FA_BF16) {
                            w[h] = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(cols, v + (j + h) * vstride + c0));
                        } else {
                            __m512 hi, lo;
                            split_bf16(avx512::load16<FA_F16>(v, (j + h) * vstride + c0, cols), hi, lo);
                            w[h] = _mm512_srli_epi32(_mm512_castps_si512(LEFT_PART[seg] == 0 ? hi : lo), 16);
                        }
                    }
                    x[i] = _mm512_castsi512_ps(_mm512_or_si512(w[0], _mm512_slli_epi32(w[1], 16)));
                }
                avx512_tile::transpose16(x);
                for (int c = 0; c < 16; ++c)
                    _mm512_store_ps(reinterpret_cast<float *>(vT + (c0 + c) * PARTS<DT> * VT_STRIDE + seg * keys + 2 * kp0),
                                    x[c]);
            }
        }
    }
}

template <fa_dtype DT>
void prep_v(KvTile &t, int d) {
    transpose_v<DT>(static_cast<const uint16_t *>(t.rows), t.stride, t.nk, d, static_cast<uint16_t *>(t.packed));
}

// P pair rows past the keys' last pair, up to a whole step, set to zero (the product reads whole steps).
void zero_p_tail(int nk, int nv, void *p) {
    const int pairs = (nk + 1) / 2, padded = round_up(nk, STEP) / 2;
    for (int kp = pairs; kp < padded; ++kp)
        std::memset(static_cast<char *>(p) + size_t(kp) * LANE_ROW_BYTES, 0, size_t(nv) * 64);
}

// bf16: the softmax writes P as key pairs (the AVX-512 bf16 kernel), then the tail to a whole step.
void softmax_p_bf16(float *sT, int nk, int nv, float mul, float *m, float *l, float *alpha, void *p) {
    base_table<FA_BF16>()->softmax_p(sT, nk, nv, mul, m, l, alpha, p);
    zero_p_tail(nk, nv, p);
}

// P (fp32 sT) as the right operand's parts [hi ; hi ; lo] of key pairs (one part for bf16), each part
// round_up(nk, 32) / 2 pair rows with zeros past the keys.
template <fa_dtype DT>
void pack_p(const float *sT, int nk, int nv, void *p) {
    const int part_rows = round_up(nk, STEP) / 2;
    uint32_t *pp = static_cast<uint32_t *>(p);
    for (int kp = 0; kp < part_rows; ++kp)
        for (int w = 0; w < nv; ++w) {
            const int j = 2 * kp;
            const __m512 a = j < nk ? _mm512_load_ps(sT + j * BLOCK_M + 16 * w) : _mm512_setzero_ps();
            const __m512 b = j + 1 < nk ? _mm512_load_ps(sT + (j + 1) * BLOCK_M + 16 * w) : _mm512_setzero_ps();
            __m512 ah = a, al = a, bh = b, bl = b;
            if (DT == FA_F16) {
                split_bf16(a, ah, al);
                split_bf16(b, bh, bl);
            }
            for (int seg = 0; seg < PARTS<DT>; ++seg) {
                const bool lo = RIGHT_PART[seg] == 1;
                _mm512_store_si512(pp + (seg * part_rows + kp) * BLOCK_M + 16 * w,
                                   avx512::interleave_bf16(lo ? al : ah, lo ? bl : bh));
            }
        }
}

// oT[c][r] = alpha[r] oT[c][r] + sum_j V[j0 + j][c] P[j][r]. The prepared V^T serves a query tile that uses the whole
// K/V tile; one whose band starts or ends inside it (causal diagonal, local window) gets V^T of exactly its keys, so
// that a key outside the band (whose V may be inf or NaN) never meets a zero P.
template <class E, fa_dtype DT>
void pv(const KvTile &v, int j0, int nk, int d, const void *p, int nv, const float *alpha, float *oT, void *scratch) {
    const uint16_t *vT = static_cast<const uint16_t *>(v.packed);
    if (j0 != 0 || nk != v.nk) {
        uint16_t *own = static_cast<uint16_t *>(scratch);
        transpose_v<DT>(static_cast<const uint16_t *>(v.rows) + int64_t(j0) * v.stride, v.stride, nk, d, own);
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
    constexpr int vt_row = PARTS<DT> * VT_STRIDE;
    auto a = [&](int i, int s) { return vT + int64_t(i) * TILE_ROWS * vt_row + s * STEP; };
    auto b = [&](int j, int s) { return pp + (int64_t(s) * TILE_PAIRS * BLOCK_M + 16 * j) * 2; };
    amx::tiled_product<E, true>(oT, BLOCK_M, row_blocks, nv, PARTS<DT> * round_up(nk, STEP) / STEP, a,
                                int64_t(vt_row) * 2, b, LANE_ROW_BYTES);
}

// The write-out of a finished query tile ends the work item's use of the tiles.
template <class E, fa_dtype DT>
void write_rows(const float *oT, int nrows, int d, const float *inv_l, void *const *out_rows) {
    E::release();
    base_table<DT>()->write_rows(oT, nrows, d, inv_l, out_rows);
}

FA_TARGET_END

template <class E, fa_dtype DT>
TileKernels<float> make_table() {
    TileKernels<float> t = *base_table<DT>();
    t.name = E::name;
    t.pack_qT = &pack_qT<E, DT>;
    t.scores = &scores<E, DT>;
    t.pv = &pv<E, DT>;
    t.prep_k = &prep_k<DT>;
    t.prep_v = &prep_v<DT>;
    // bf16: the AVX-512 softmax writes the pairs in the same pass; fp16: fp32 P is split afterwards
    t.softmax_p = DT == FA_BF16 ? &softmax_p_bf16 : nullptr;
    t.pack_p = &pack_p<DT>;
    t.write_rows = &write_rows<E, DT>;
    return t;
}

}  // namespace

const TileKernels<float> *amx_kernels(fa_dtype dt, bool emulated) {
    if (dt == FA_BF16 && base_table<FA_BF16>() != nullptr && base_table<FA_BF16>()->softmax_p != nullptr) {
        static const TileKernels<float> hw = make_table<amx::HwTiles, FA_BF16>();
        static const TileKernels<float> emu = make_table<amx::EmulatedTiles, FA_BF16>();
        return emulated ? &emu : &hw;
    }
    if (dt == FA_F16 && base_table<FA_F16>() != nullptr) {
        static const TileKernels<float> hw = make_table<amx::HwTiles, FA_F16>();
        static const TileKernels<float> emu = make_table<amx::EmulatedTiles, FA_F16>();
        return emulated ? &emu : &hw;
    }
    return nullptr;
}

// Run once at detection, before AMX is ever selected: one product on the hardware tiles against the scalar model,
// with small integers (every partial sum exact, so any summation order gives the same bits), operands of different
// contents and strides (a swapped operand or a misread stride shows), accumulated onto a non-zero C. False: the tiles
// do not compute what the kernels assume, and the AVX-512 kernels are used instead.
FA_TARGET_BEGIN(FA_ISA_AMX)
template <class E>
void self_check_product(const uint16_t *a, const uint16_t *b, const float *c_in, float *c_out) {
    E::configure();
    E::template load<amx::C0>(c_in, 128);
    E::template load<amx::A0 + 1>(a, 96);
    E::template load<amx::B0>(b, 160);
    E::template dot_bf16<amx::C0, amx::A0 + 1, amx::B0>();
    E::template store<amx::C0>(c_out, 64);
    E::release();
}
FA_TARGET_END

bool amx_tiles_self_check() {
    alignas(64) static uint16_t a[16 * 48], b[16 * 80];
    alignas(64) static float c[16 * 32], hw[256], model[256];
    auto bf16_of_int = [](int v) {  // small integers are exact in bf16
        const float f = float(v);
        uint32_t u;
        std::memcpy(&u, &f, 4);
        return uint16_t(u >> 16);
    };
    for (int i = 0; i < 16 * 48; ++i) a[i] = bf16_of_int((i * 7 + 3) % 9 - 4);
    for (int i = 0; i < 16 * 80; ++i) b[i] = bf16_of_int((i * 5 + 1) % 7 - 3);
    for (int i = 0; i < 16 * 32; ++i) c[i] = float((i * 3) % 11 - 5);
    self_check_product<amx::HwTiles>(a, b, c, hw);
    self_check_product<amx::EmulatedTiles>(a, b, c, model);
    return std::memcmp(hw, model, sizeof hw) == 0;
}

#else

const TileKernels<float> *amx_kernels(fa_dtype, bool) { return nullptr; }
bool amx_tiles_self_check() { return false; }

#endif

}  // namespace fa_cpu
