// tile_kernels.h - the per-ISA inner kernels of the CPU FlashAttention forward, behind one function table.
//
// Layout idea ("query-lane" layout): every per-tile array keeps the BLOCK_M query rows of the tile along the
// contiguous axis, so one SIMD vector holds 16 query rows.
//   qT [d][BLOCK_M]      the Q tile transposed (packed once per Q tile)
//   sT [BLOCK_N][BLOCK_M] scores / probabilities of one K tile: sT[j*BLOCK_M + r]
//   oT [d][BLOCK_M]      the output accumulator, transposed
// With this layout
//   S^T = K · Q^T   broadcasts K elements straight from the user's K rows (no K packing for fp32/bf16),
//   O^T += V^T · P^T broadcasts V elements straight from the user's V rows,
// and the online softmax (max and sum over keys for each query) is a plain element-wise max/add over rows of sT,
// i.e. no horizontal reductions at all. Only the final write-out transposes O back.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fa_abi.h"

namespace fa_cpu {

// Query rows per tile: 4 vectors of 16 fp32 lanes. Large enough that K/V rows loaded into cache are reused by 64
// queries; small enough that qT, sT and oT for d = 128 (32 + 16 + 32 KiB) stay in L1/L2.
constexpr int BLOCK_M = 64;
constexpr int LANES = 16;  // fp32 lanes per vector (AVX-512); the portable path uses the same layout
// Keys per tile: 64 keeps sT at 16 KiB and gives the softmax pass enough work per rescale of oT.
constexpr int BLOCK_N = 64;
constexpr int HEADDIM_PAD = 256;  // FA_MAX_HEADDIM, even

// Scratch bytes a kernel table may use per call (staging a converted or padded K/V tile).
constexpr size_t TILE_SCRATCH_BYTES = size_t(BLOCK_N + 2) * (HEADDIM_PAD + 16) * sizeof(double);
constexpr size_t max_bytes(size_t a, size_t b) { return a > b ? a : b; }
// Bytes of a packed Q tile (qT, pack_qT) for accumulator Acc: the head dim of every row, or (AMX fp16,
// tile_kernels_amx.cpp) three bf16 parts of it as 32-bit pairs.
template <typename Acc>
constexpr size_t qT_bytes() {
    return max_bytes(sizeof(Acc) * HEADDIM_PAD * BLOCK_M, size_t(3) * HEADDIM_PAD / 2 * BLOCK_M * sizeof(uint32_t));
}
// Bytes of one prepared K or V tile (KvTile::packed): up to BLOCK_N rows widened to fp32 with padded rows, or (AMX
// fp16, tile_kernels_amx.cpp) rows of three bf16 parts read in whole 16-row blocks.
constexpr size_t KV_PACK_BYTES = max_bytes(size_t(BLOCK_N + 2) * (HEADDIM_PAD + 32) * sizeof(float),
                                           size_t(BLOCK_N + 16) * 3 * HEADDIM_PAD * sizeof(uint16_t));
// Bytes of P in a table's own format (softmax_p / pack_p): the fp32 sT of a tile, or (AMX fp16) three sets of bf16
// key pairs.
constexpr size_t P_PACK_BYTES = max_bytes(size_t(BLOCK_N + 2) * BLOCK_M * sizeof(float),
                                          size_t(3) * (BLOCK_N + 31) / 32 * 16 * BLOCK_M * sizeof(uint32_t));

// One K or V tile of up to BLOCK_N keys, prepared ONCE per work item (prep_k / prep_v) and then read by every query
// tile of the item: a conversion or re-layout is paid once per K/V tile instead of once per (query tile, K/V tile).
struct KvTile {
    const void *rows;  // row 0 of the tile (the user's storage, or a staged copy)
    int64_t stride;    // elements between rows
    int nk;            // keys in the tile
    void *packed;      // KV_PACK_BYTES, 64-byte aligned, for the table's prepared copy
};

template <typename Acc>
struct TileKernels {
    const char *name;
    // Pack `nrows` (<= BLOCK_M) query rows (pointers to the first element of each row, dtype of the table) into
    // qT, zero-padding rows up to nv*LANES. qT is qT_bytes<Acc>() bytes.
    void (*pack_qT)(const void *const *rows, int nrows, int d, int nv, void *qT);
    // sT[j][r] = sum_k K[j0+j][k] * qT[k][r] for j < nk, r < nv*LANES (keys j0.. of a prepared tile).
    void (*scores)(const KvTile &k, int j0, int nk, int d, const void *qT, int nv, Acc *sT, void *scratch);
    // Online-softmax step over rows j < nk of sT (scores times `mul` are log2-domain logits; -inf = masked):
    // updates running max m[r] and sum l[r], writes alpha[r] = exp2(m_old - m_new) and replaces sT by
    // p = exp2(s*mul - m_new). Lanes are r < nv*LANES.
    void (*softmax)(Acc *sT, int nk, int nv, Acc mul, Acc *m, Acc *l, Acc *alpha);
    // oT[c][r] = alpha[r]*oT[c][r] + sum_j V[j0+j][c] * P[j][r] for c < d, j < nk. P is fp32 sT, or the table's P
    // format when it has softmax_p.
    void (*pv)(const KvTile &v, int j0, int nk, int d, const void *p, int nv, const Acc *alpha, Acc *oT,
               void *scratch);
    // Optional "row layout" kernels for tiles with at most ROW_LAYOUT_MAX_ROWS query rows (decode). With one query
    // the lane layout would use 1 of 16 lanes; here vectors run over the head dim instead, so the work per key is
    // 2*d/16 vector FMAs per row and the kernel is bound by reading K/V, like any decode kernel. sT and the
    // softmax are shared with the lane layout; the accumulator is row-major: oR[r*HEADDIM_PAD + c]. nullptr = absent.
    void (*pack_q_rows)(const void *const *rows, int nrows, int d, Acc *qR);  // qR[r*HEADDIM_PAD + c], zero padded
    void (*scores_rows)(const void *k, int64_t kstride, int nk, int d, const Acc *qR, int nrows, Acc *sT);
    void (*pv_rows)(const void *v, int64_t vstride, int nk, int d, const Acc *pT, int nrows, const Acc *alpha,
                    Acc *oR);

    // Lane-layout extras, each optional (nullptr):
    // prep_k / prep_v fill KvTile::packed from KvTile::rows (once per K/V tile and work item).
    void (*prep_k)(KvTile &k, int d);
    void (*prep_v)(KvTile &v, int d);
    // softmax followed by conversion of P to the format pv reads (e.g. bf16 key pairs), in one pass, to `p`
    // (P_PACK_BYTES); pack_p converts an fp32 sT (after dropout) to the same format.
    void (*softmax_p)(Acc *sT, int nk, int nv, Acc mul, Acc *m, Acc *l, Acc *alpha, void *p);
    void (*pack_p)(const Acc *sT, int nk, int nv, void *p);
    // out_rows[r][c] = oT[c][r] * inv_l[r] in the table's dtype, r < nrows, c < d (the transposing write-out).
    void (*write_rows)(const Acc *oT, int nrows, int d, const Acc *inv_l, void *const *out_rows);
};

constexpr int ROW_LAYOUT_MAX_ROWS = 4;

// Portable kernels (any compiler, any CPU): element type dt, accumulator Acc.
const TileKernels<float> *portable_kernels_f32(fa_dtype dt);
const TileKernels<double> *portable_kernels_f64();
// AVX-512 kernels (x86-64 builds only; nullptr when not compiled in). Callers check the CPU first.
const TileKernels<float> *avx512_kernels(fa_dtype dt);
// AMX kernels for bf16 (x86-64 builds only; nullptr for other dtypes, when not compiled in, or without the AVX-512
// bf16 table they build on): the tile hardware, or its scalar model (`emulated`, amx_tiles.h). Callers check the CPU
// (and the OS's tile-data permission) first.
const TileKernels<float> *amx_kernels(fa_dtype dt, bool emulated);
// One small product on the AMX tiles, compared with their scalar model (cpu_features.cpp runs it once, after the OS
// has granted the tile state): false when they disagree, and AMX is then not used.
bool amx_tiles_self_check();
// AVX2+FMA+F16C kernels (x86-64 builds only; nullptr when not compiled in). Callers check the CPU first.
const TileKernels<float> *avx2_kernels(fa_dtype dt);
// Arm NEON kernels (AArch64 builds only; nullptr when not compiled in). Callers check the CPU first.
const TileKernels<float> *neon_kernels(fa_dtype dt);

// The kernel table chosen for this machine and dtype (runtime CPU-feature dispatch, isa_dispatch.cpp).
const TileKernels<float> *select_kernels_f32(fa_dtype dt);
// Human-readable kernel set in use, its first word "amx", "amx-emulated", "avx512", "avx2", "neon" or "portable"
// (isa_dispatch.cpp).
const char *cpu_isa_description();

}  // namespace fa_cpu
