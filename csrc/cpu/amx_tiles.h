// amx_tiles.h - the eight AMX tile registers behind one small interface, twice: the hardware (Intel AMX-TILE +
// AMX-BF16) and a scalar model of it that follows the instructions' pseudo-code in Intel's SDM (TILELOADD, TILESTORED,
// TILEZERO, TDPBF16PS), so that the AMX kernels' tiling is tested on every x86-64 machine, AMX or not
// (FLASH_ATTN_CY_CPU_ISA=amx-emulated; tests/cpu/test_cpu_isa_amx.py).
//
// One register shape everywhere: palette 1, all eight tiles 16 rows x 64 bytes (16 x 16 fp32, or 16 x 32 bf16 =
// 16 rows of 16 bf16 pairs). The kernels give the tiles fixed roles: 0-3 accumulators (C), 4-5 left operands (A,
// rows x pairs), 6-7 right operands (B, pairs x columns, "VNNI" layout: each 32-bit word two bf16 of consecutive
// reduction indices). C[m][n] += sum_k A[m][2k] B[k][2n] + A[m][2k+1] B[k][2n+1] in fp32, rounded to nearest even,
// bf16 inputs that are denormal read as 0, fp32 results that are denormal written as 0. The order of the sums is the
// SDM's (EmulatedTiles::dot_bf16), which is not vdpbf16ps's (pair by pair into C): AMX results are close to, not
// bitwise equal to, the AVX-512 bf16 kernels'.
//
// The tile state is per thread and must be configured (configure()) before a tile is touched; the forward
// configures at the start of each work item (pack_qT) and releases at its end (write_rows), backward products at
// each call. Linux gives a process the tile-data state only after arch_prctl(ARCH_REQ_XCOMP_PERM), asked once at
// detection (cpu_features.cpp); without it the first tile instruction faults, so AMX is then never selected.
#pragma once

#include "avx512_common.h"

#ifdef FA_HAVE_AVX512_KERNELS
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

// The AMX kernels' region: AVX-512 with bf16 for the packing and softmax around the tile products, plus the tiles.
#define FA_ISA_AMX "avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx512bf16,amx-tile,amx-bf16"

namespace fa_cpu {
namespace amx {

constexpr int TILE_ROWS = 16;    // rows of every tile
constexpr int TILE_COLSB = 64;   // bytes per tile row: 16 fp32, or 16 bf16 pairs
constexpr int TILE_PAIRS = 16;   // bf16 pairs per A row / B rows per product: 32 reduction elements
// Tile roles (see above).
constexpr int C0 = 0, A0 = 4, B0 = 6;

// The 64-byte operand of LDTILECFG (palette 1).
struct alignas(64) TileConfig {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

inline TileConfig uniform_config() {
    TileConfig cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = TILE_COLSB;
        cfg.rows[t] = TILE_ROWS;
    }
    return cfg;
}

FA_TARGET_BEGIN(FA_ISA_AMX)

// The hardware. GCC's tile intrinsics take the register number as a literal (it is pasted into the instruction's
// text), so each operation is spelled out per register the kernels use.
struct HwTiles {
    static constexpr const char *name = "amx";
    static void configure() {
        static const TileConfig cfg = uniform_config();
        _tile_loadconfig(&cfg);
    }
    static void release() { _tile_release(); }
#define FA_AMX_EACH_TILE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
    // GCC's tile load and store are asm statements that take the address as a plain input and declare no memory
    // effect, so the compiler could move ordinary stores of an operand past the load that reads it, or reuse values
    // it knows from before a tile store wrote over them: a compiler-only barrier on each side keeps program order.
    static void memory_barrier() { __asm__ __volatile__("" ::: "memory"); }
    template <int T>
    static void load(const void *p, int64_t stride) {
        memory_barrier();
#define FA_AMX_LOAD(n) if constexpr (T == n) _tile_loadd(n, p, stride);
        FA_AMX_EACH_TILE(FA_AMX_LOAD)
#undef FA_AMX_LOAD
    }
    template <int T>
    static void store(void *p, int64_t stride) {
#define FA_AMX_STORE(n) if constexpr (T == n) _tile_stored(n, p, stride);
        FA_AMX_EACH_TILE(FA_AMX_STORE)
#undef FA_AMX_STORE
        memory_barrier();
    }
    template <int T>
    static void zero() {
#define FA_AMX_ZERO(n) if constexpr (T == n) _tile_zero(n);
        FA_AMX_EACH_TILE(FA_AMX_ZERO)
#undef FA_AMX_ZERO
    }
#undef FA_AMX_EACH_TILE
    // C += A . B for the accumulator/operand combinations the kernels use (C 0-3, A 4-5, B 6-7).
    template <int C, int A, int B>
    static void dot_bf16() {
        static_assert(C >= 0 && C < 4 && (A == 4 || A == 5) && (B == 6 || B == 7), "tile roles");
#define FA_AMX_DP(c, a, b) if constexpr (C == c && A == a && B == b) _tile_dpbf16ps(c, a, b);
#define FA_AMX_DP_C(c) FA_AMX_DP(c, 4, 6) FA_AMX_DP(c, 4, 7) FA_AMX_DP(c, 5, 6) FA_AMX_DP(c, 5, 7)
        FA_AMX_DP_C(0) FA_AMX_DP_C(1) FA_AMX_DP_C(2) FA_AMX_DP_C(3)
#undef FA_AMX_DP_C
#undef FA_AMX_DP
    }
};

FA_TARGET_END

// The scalar model: the SDM pseudo-code, register by register. Touching a tile of an unconfigured thread is what
// faults on the hardware; here it stops the process with a message, so that a kernel that forgets configure()
// fails its tests on any machine.
struct EmulatedTiles {
    static constexpr const char *name = "amx-emulated";
    struct State {
        alignas(64) uint8_t t[8][TILE_ROWS * TILE_COLSB];
        bool configured = false;
    };
    static State &state() {
        static thread_local State s;
        return s;
    }
    static uint8_t *tile(int t) {
        State &s = state();
        if (!s.configured) {
            std::fprintf(stderr, "flash_attn_cy: internal error: AMX tile %d used before its configuration\n", t);
            std::abort();
        }
        return s.t[t];
    }
    static void configure() { state().configured = true; }
    static void release() {
        State &s = state();
        std::memset(s.t, 0, sizeof s.t);
        s.configured = false;
    }
    template <int T>
    static void load(const void *p, int64_t stride) {
        uint8_t *dst = tile(T);
        for (int r = 0; r < TILE_ROWS; ++r)
            std::memcpy(dst + r * TILE_COLSB, static_cast<const uint8_t *>(p) + r * stride, TILE_COLSB);
    }
    template <int T>
    static void store(void *p, int64_t stride) {
        const uint8_t *src = tile(T);
        for (int r = 0; r < TILE_ROWS; ++r)
            std::memcpy(static_cast<uint8_t *>(p) + r * stride, src + r * TILE_COLSB, TILE_COLSB);
    }
    template <int T>
    static void zero() {
        std::memset(tile(T), 0, TILE_ROWS * TILE_COLSB);
    }
    static float bf16_in(uint16_t h) {  // make_fp32, with denormal inputs read as 0
        if ((h & 0x7f80u) == 0) h &= 0x8000u;
        const uint32_t u = uint32_t(h) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    static float flush(float x) {  // denormal results written as (signed) 0
        uint32_t u;
        std::memcpy(&u, &x, 4);
        if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
        std::memcpy(&x, &u, 4);
        return x;
    }
    // The SDM's operation: per output element, the products of the even and of the odd bf16 of each pair are summed
    // in two fp32 chains (from 0, in pair order, each step one FMA), and C += (even + odd) at the end.
    template <int C, int A, int B>
    static void dot_bf16() {
        float c[TILE_ROWS][16];
        uint16_t a[TILE_ROWS][2 * TILE_PAIRS], b[TILE_PAIRS][32];
        std::memcpy(c, tile(C), sizeof c);
        std::memcpy(a, tile(A), sizeof a);
        std::memcpy(b, tile(B), sizeof b);
        for (int m = 0; m < TILE_ROWS; ++m)
            for (int n = 0; n < 16; ++n) {
                float even = 0.0f, odd = 0.0f;
                for (int k = 0; k < TILE_PAIRS; ++k) {
                    // a product of two bf16 is exact in fp32, so fmaf rounds only the sum, once per step
                    even = flush(std::fmaf(bf16_in(a[m][2 * k]), bf16_in(b[k][2 * n]), even));
                    odd = flush(std::fmaf(bf16_in(a[m][2 * k + 1]), bf16_in(b[k][2 * n + 1]), odd));
                }
                c[m][n] = flush(c[m][n] + flush(even + odd));
            }
        std::memcpy(tile(C), c, sizeof c);
    }
};

// ---- products over many tiles, for any engine ----
// A operand i / B operand j of reduction step s (16 pairs) are at a_ptr(i, s) / b_ptr(j, s), rows a_stride /
// b_stride bytes apart; every tile read or written lies wholly inside the caller's buffers (it pads them).
// In the AMX region, so that the hardware engine's operations inline into them.
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

// C (rows c_rs floats apart) over `row_blocks` x `col_blocks` tiles of 16 x 16, in 2 x 2 blocks.
template <class E, bool LOAD_C, class APtr, class BPtr>
void tiled_product(float *c, int64_t c_rs, int row_blocks, int col_blocks, int steps, APtr a_ptr, int64_t a_stride,
                   BPtr b_ptr, int64_t b_stride) {
    for (int rb = 0; rb < row_blocks; rb += 2) {
        for (int cb = 0; cb < col_blocks; cb += 2) {
            float *cc = c + int64_t(rb) * TILE_ROWS * c_rs + 16 * cb;
            auto a = [&](int i, int s) { return a_ptr(rb + i, s); };
            auto b = [&](int j, int s) { return b_ptr(cb + j, s); };
            const bool two_rows = rb + 1 < row_blocks, two_cols = cb + 1 < col_blocks;
            if (two_rows && two_cols) block_product<E, 2, 2, LOAD_C>(cc, c_rs, steps, a, a_stride, b, b_stride);
            else if (two_rows) block_product<E, 2, 1, LOAD_C>(cc, c_rs, steps, a, a_stride, b, b_stride);
            else if (two_cols) block_product<E, 1, 2, LOAD_C>(cc, c_rs, steps, a, a_stride, b, b_stride);
            else block_product<E, 1, 1, LOAD_C>(cc, c_rs, steps, a, a_stride, b, b_stride);
        }
    }
}

FA_TARGET_END

}  // namespace amx
}  // namespace fa_cpu
#endif
