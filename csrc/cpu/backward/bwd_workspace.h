// bwd_workspace.h - the CPU backward's per-thread scratch tiles (Workspace) and their cache-line allocator.
#pragma once

#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "bwd_tile_math.h"

namespace fa_bwd {

// The forward writes +inf as the LSE of a row that sees no key; test the bits so this survives -ffast-math.
inline bool lse_is_dead(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return (u & 0x7f800000u) == 0x7f800000u;  // +-inf or nan: the row contributes nothing
}

// Vectors on 64-byte (cache line, zmm) boundaries: with rows of d floats (d a multiple of 16) every tile row starts
// a line, so the product kernels' vector loads never straddle two lines.
template <typename A>
struct LineAllocator {
    using value_type = A;
    static constexpr std::align_val_t kAlign{64};
    LineAllocator() = default;
    template <typename U> LineAllocator(const LineAllocator<U> &) {}
    A *allocate(size_t n) { return static_cast<A *>(::operator new(n * sizeof(A), kAlign)); }
    void deallocate(A *ptr, size_t) { ::operator delete(ptr, kAlign); }
    template <typename U> bool operator==(const LineAllocator<U> &) const { return true; }
    template <typename U> bool operator!=(const LineAllocator<U> &) const { return false; }
};
template <typename A> using TileVec = std::vector<A, LineAllocator<A>>;

// Key blocks per pass-1 work item: each query tile (q, dO, the dQ partial rows) is brought into cache once for
// this many key blocks, halving that traffic; the key-side tiles of both blocks stay in L2 (d = 128: ~330 KiB).
constexpr int kKeyGroup = 2;

// Per-thread scratch tiles, accumulation type A (see CpuBackward::workspace).
template <typename A>
struct Workspace {
    TileVec<A> q, dout;     // [kBlockQ][d], [kBlockQ][dv]: query rows of the tile (when not packed)
    const A *q_rows = nullptr, *dout_rows = nullptr;  // the tile's q and dO rows, d and dv apart
    // Key tiles come in kKeyGroup slots (pass 1 works on that many key blocks per query tile).
    TileVec<A> k_rows;      // [slot][kBlockK][d]: keys row-major (dQ += dX K)
    TileVec<A> v_rows;      // [kBlockK][dv]: values row-major (staging for v_t)
    // bf16 inputs with BwdKernelsF32::scores_bf16: the key tiles as bf16 pairs over the head dim (zero-padded to an
    // even d2 / dv2), [slot][d2/2][kBlockK][2] and [slot][dv2/2][kBlockK][2]; the query tile's bf16 rows.
    TileVec<uint16_t> k_t16, v_t16;
    const uint16_t *q16_rows = nullptr, *dout16_rows = nullptr;
    // bf16 inputs with BwdKernelsF32::accumulate_bf16: B operands as bf16 pairs over rows - the query tile's q and
    // dO [kBlockQ/2][d | dv][2] and the keys [slot][kBlockK/2][d][2] - and the A operands rounded to bf16: Pdᵀ, then
    // dXᵀ, as pairs over query rows [kBlockQ/2][kBlockK] (one buffer, used in turn), dX as rows [kBlockQ][kBlockK]
    // (pairs over keys).
    TileVec<uint16_t> q_pairs, dout_pairs, k_pairs, dx_rows16;
    TileVec<uint32_t> coef_t2;
    TileVec<A> k_t, v_t;    // [slot][d][kBlockK], [slot][dv][kBlockK]: keys/values transposed (S = Q Kᵀ, dPd = dO Vᵀ)
    TileVec<A> s, dp;       // [kBlockQ][kBlockK]: scores, then Pd; dPd, then dX
    TileVec<A> tanh_t;      // [kBlockQ][kBlockK]: tanh of the capped score (softcap derivative)
    TileVec<A> dk_acc, dv_acc;  // [slot][kBlockK][d | dv]: dK/dV accumulators of pass 1
    TileVec<A> dq_acc;          // [kBlockQ][d]: dQ accumulator of pass 2
    std::vector<A> lse, delta;  // [kBlockQ] per-row LSE and D
    std::vector<double> lse_hi, lse_lo;  // [kBlockQ] a refined row's LSE in two parts (refine_lse_block), else 0
    TileVec<double> s64;        // [kBlockQ][kBlockK]: q·k in double, for rows with a refined LSE (refined_scores)
    std::vector<char> dead;     // [kBlockQ] row sees no key
    bool any_dead = false;      // some row of the loaded query tile is dead
    std::vector<A> keep;        // [kBlockK] dropout factor of one row: 0 or 1 / (1 - p)

    int d_ = -1, dv_ = -1;  // head dims the tiles are sized for

    A *kt(int slot) { return k_t.data() + (size_t)slot * d_ * kBlockK; }
    A *vt(int slot) { return v_t.data() + (size_t)slot * dv_ * kBlockK; }
    A *krows(int slot) { return k_rows.data() + (size_t)slot * kBlockK * d_; }
    uint16_t *kt16(int slot) { return k_t16.data() + (size_t)slot * even(d_) * kBlockK; }
    uint16_t *vt16(int slot) { return v_t16.data() + (size_t)slot * even(dv_) * kBlockK; }
    uint16_t *kpairs(int slot) { return k_pairs.data() + (size_t)slot * kBlockK * d_; }
    static int even(int n) { return (n + 1) & ~1; }

    void ensure(int d, int dv) {
        if (d == d_ && dv == dv_) return;
        allocate(d, dv);
        d_ = d;
        dv_ = dv;
    }

    void allocate(int d, int dv) {
        q.assign((size_t)kBlockQ * d, A(0));
        dout.assign((size_t)kBlockQ * dv, A(0));
        k_rows.assign((size_t)kKeyGroup * kBlockK * d, A(0));
        v_rows.assign((size_t)kBlockK * dv, A(0));
        k_t16.assign((size_t)kKeyGroup * even(d) * kBlockK, 0);
        v_t16.assign((size_t)kKeyGroup * even(dv) * kBlockK, 0);
        q_pairs.assign((size_t)kBlockQ * d, 0);
        dout_pairs.assign((size_t)kBlockQ * dv, 0);
        k_pairs.assign((size_t)kKeyGroup * kBlockK * d, 0);
        dx_rows16.assign((size_t)kBlockQ * kBlockK, 0);
        coef_t2.assign((size_t)kBlockQ / 2 * kBlockK, 0);
        k_t.assign((size_t)kKeyGroup * d * kBlockK, A(0));
        v_t.assign((size_t)kKeyGroup * dv * kBlockK, A(0));
        s.assign((size_t)kBlockQ * kBlockK, A(0));
        dp.assign((size_t)kBlockQ * kBlockK, A(0));
        tanh_t.assign((size_t)kBlockQ * kBlockK, A(0));
        dk_acc.assign((size_t)kKeyGroup * kBlockK * d, A(0));
        dv_acc.assign((size_t)kKeyGroup * kBlockK * dv, A(0));
        dq_acc.assign((size_t)kBlockQ * d, A(0));
        lse.assign(kBlockQ, A(0));
        lse_hi.assign(kBlockQ, 0.0);
        lse_lo.assign(kBlockQ, 0.0);
        s64.assign((size_t)kBlockQ * kBlockK, 0.0);
        delta.assign(kBlockQ, A(0));
        dead.assign(kBlockQ, 0);
        keep.assign(kBlockK, A(0));
    }
};

}  // namespace fa_bwd
