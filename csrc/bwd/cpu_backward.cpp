// cpu_backward.cpp - FlashAttention-2 backward on the CPU (fa_cpu_backward in csrc/fa_backends.h).
//
// Algorithm (Dao, "FlashAttention-2", 2023, Algorithm 2), with P recomputed tile by tile from the forward's LSE:
//   D    = rowsum(dO * O)                          pass 0, once per query row (also packs q and dO per head)
//   P    = exp(S - lse),  Pd = P * dropout_mask / (1 - p)
//   dV  += Pdᵀ dO,  dPd = dO Vᵀ,  dS = P * (dPd * dropout_mask / (1 - p) - D)
//   dX   = dS * scale * (1 - tanh²) under softcap  (gradient with respect to the raw product q·k)
//   dK  += dXᵀ Q                                   pass 1: one work item per (batch, kv head, kKeyGroup key blocks)
//   dQ  += dX K                                    pass 1 (per-thread partials), or pass 2 when deterministic:
//                                                  one work item per (batch, q head, query block)
// D is the right correction with dropout too because O already contains the dropped, rescaled P.
// The tile products and the fused interior-tile softmax gradient come from a kernel table chosen at run time
// (bwd_kernels.h: AVX-512 register tiles, or portable loops); README.md in this directory has the layout decisions.
//
// Work items run on the CPU backend's pool (csrc/cpu/thread_pool.h). Two schedules:
// - deterministic (fa_params.deterministic = 1): every work item owns the output rows it writes and sums in a fixed
//   order, so the bits never depend on the thread count or schedule. Pass 2 recomputes S and dPd for dQ (7 tile
//   products instead of 5); no atomics, no copies of dQ. Extra memory: D per query row and head, tiles per thread.
// - default: pass 1 also accumulates dQ into one fp32 partial copy per thread, summed at the end (5 products; the
//   summation order of dQ depends on the schedule, as flash_attn's deterministic=False allows). Extra memory: one
//   dQ-sized fp32 buffer per thread, capped (above the cap the deterministic schedule runs).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#include "bwd_dtype.h"
#include "bwd_geometry.h"
#include "bwd_kernels.h"
#include "bwd_tile_math.h"
#include "fa_backends.h"
#include "fa_philox.h"
#include "cpu/buffer_pool.h"
#include "cpu/thread_pool.h"

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

template <typename T, typename A>
class CpuBackward {
public:
    explicit CpuBackward(const fa_params *p) : p_(p) {
        d_ = p->headdim;
        dv_ = p->headdim_v > 0 ? p->headdim_v : p->headdim;
        group_ = p->nheads_q / p->nheads_kv;
        window_ = mask_window(p);
        packed_q_ = p->cu_seqlens_q != nullptr;
        packed_k_ = p->cu_seqlens_k != nullptr;
        scale_ = (A)p->softmax_scale;
        softcap_ = (A)p->softcap;
        dropout_ = p->dropout_p > 0.0f;
        if (dropout_) {
            const double t = std::floor((double)p->dropout_p * 4294967296.0);
            threshold_ = t >= 4294967295.0 ? 0xffffffffu : (uint32_t)t;
            // the forward's factor exactly (a float, also in fp64) so forward and backward are consistent
            keep_scale_ = p->dropout_p < 1.0f ? (A)(1.0f / (1.0f - p->dropout_p)) : A(0);
        }
        refine_lse_ = sizeof(A) > sizeof(float) || huge_lse();
        kernels_ = select_bwd_kernels_f32();
        q_rows_ = packed_q_ ? p->total_q : (int64_t)p->batch * p->seqlen_q;
        max_sq_ = p->seqlen_q;
        max_sk_ = p->seqlen_k;
        if (packed_q_ || packed_k_) {
            for (int64_t b = 0; b < p->batch; ++b) {
                const SeqGeometry g = sequence_geometry(p, b);
                if (packed_q_) max_sq_ = b == 0 ? g.sq : std::max(max_sq_, g.sq);
                if (packed_k_) max_sk_ = b == 0 ? g.sk_rows : std::max(max_sk_, g.sk_rows);
            }
        }
    }

    // Returns false if a work item failed (out of memory for its workspace).
    bool run() {
        delta_.assign((size_t)p_->nheads_q * (size_t)q_rows_, A(0));
        allocate_query_packs();
        if constexpr (std::is_same<T, bf16_bits>::value) {
            if (kernels_->scores_bf16 && q_pack_) allocate_bf16_packs();
            bf16_products_ = q16_pack_ != nullptr && kernels_->accumulate_bf16 != nullptr;
        }
        const int64_t nqb = (max_sq_ + kBlockQ - 1) / kBlockQ;
        const int64_t nkb = (max_sk_ + kBlockK - 1) / kBlockK;
        const int64_t items0 = (int64_t)p_->batch * p_->nheads_q;
        const int64_t nkg = (nkb + kKeyGroup - 1) / kKeyGroup;
        const int64_t items1 = (int64_t)p_->batch * p_->nheads_kv * nkg;
        const int64_t items2 = (int64_t)p_->batch * p_->nheads_q * nqb;
        const int threads = p_->num_threads;
        const fa_cancel *cancel = p_->cancel;  // items stop early once requested (fa_cancel.h)
        bool ok = fa_cpu::parallel_for(items0, [&](int64_t item) {
            compute_delta(item / p_->nheads_q, item % p_->nheads_q);
        }, threads, cancel);
        if (refine_lse_) {
            lse_fine_.assign((size_t)p_->nheads_q * (size_t)q_rows_, 0.0);
            lse_lo_.assign((size_t)p_->nheads_q * (size_t)q_rows_, 0.0);
            ok = ok && fa_cpu::parallel_for(items2, [&](int64_t item) {
                const int64_t qb = item % nqb, rest = item / nqb;
                refine_lse_block(rest / p_->nheads_q, rest % p_->nheads_q, qb, workspace());
            }, threads, cancel);
        }
        single_pass_ = use_single_pass(threads);
        ok = ok && fa_cpu::parallel_for(items1, [&](int64_t item) {
            const int64_t kg = item % nkg, rest = item / nkg;
            dkdv_block(rest / p_->nheads_kv, rest % p_->nheads_kv, kg, workspace());
        }, threads, cancel);
        if (single_pass_) {
            ok = ok && fa_cpu::parallel_for(items2, [&](int64_t item) {
                const int64_t qb = item % nqb, rest = item / nqb;
                store_dq_from_partials(rest / p_->nheads_q, rest % p_->nheads_q, qb);
            }, threads, cancel);
        } else {
            ok = ok && fa_cpu::parallel_for(items2, [&](int64_t item) {
                const int64_t qb = item % nqb, rest = item / nqb;
                dq_block(rest / p_->nheads_q, rest % p_->nheads_q, qb, workspace());
            }, threads, cancel);
        }
        if (ok) zero_unowned_packed_rows();
        return ok;
    }

private:
    // ---- addressing ----
    // Element pointer of row `row` (relative to the sequence) of a q-side tensor (q, out, dout, dq).
    T *q_side(const fa_tensor &t, int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t off = (packed_q_ ? 0 : b * t.batch_stride) + (g.q_row0 + row) * t.row_stride + h * t.head_stride;
        return static_cast<T *>(t.data) + off;
    }
    T *k_side(const fa_tensor &t, int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t off = (packed_k_ ? 0 : b * t.batch_stride) + (g.k_row0 + row) * t.row_stride + h * t.head_stride;
        return static_cast<T *>(t.data) + off;
    }
    float lse_at(int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t off = (packed_q_ ? 0 : b * p_->lse_batch_stride) + h * p_->lse_head_stride +
                            (g.q_row0 + row) * p_->lse_row_stride;
        return p_->lse[off];
    }
    // Element (b, h, row) of a per-query-row buffer laid out [nheads_q][q rows] (D, refined LSE).
    template <typename E>
    E &row_at(std::vector<E> &buf, int64_t b, const SeqGeometry &g, int64_t row, int64_t h) const {
        const int64_t r = packed_q_ ? g.q_row0 + row : b * p_->seqlen_q + row;
        return buf[(size_t)h * (size_t)q_rows_ + (size_t)r];
    }
    A &delta_at(int64_t b, const SeqGeometry &g, int64_t row, int64_t h) { return row_at(delta_, b, g, row, h); }
    // The calling thread's scratch tiles: pool workers persist, so each keeps one set across calls.
    Workspace<A> &workspace() const {
        thread_local Workspace<A> ws;
        ws.ensure(d_, dv_);
        return ws;
    }
    A alibi_slope(int64_t b, int64_t h) const {
        return p_->alibi_slopes ? (A)p_->alibi_slopes[b * p_->alibi_batch_stride + h] : A(0);
    }

    // ---- tile products (bwd_kernels.h): the float kernel table, or the portable double loops ----
    void product(int m, int n, int kk, const A *a, int64_t a_rs, int64_t a_ks, const A *b, int64_t b_rs, A *c,
                 int64_t c_rs, bool accumulate) const {
        if constexpr (std::is_same<A, float>::value)
            kernels_->product(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, accumulate);
        else
            tile_product(m, n, kk, a, a_rs, a_ks, b, b_rs, c, c_rs, accumulate);
    }
    void exp_row(A *x) const {
        if constexpr (std::is_same<A, float>::value) kernels_->exp_row(x);
        else tile_exp_row(x);
    }
    // out[r][0:kBlockK] = x[r][:n] · yt[:n][0:kBlockK] for r < nrows, x rows x_rs apart (S = Q Kᵀ, dPd = dO Vᵀ)
    void matmul_nt(const A *x, int64_t x_rs, int n, const A *yt, int nrows, A *out) const {
        product(nrows, kBlockK, n, x, x_rs, 1, yt, kBlockK, out, kBlockK, false);
    }
    // acc[c][:n] += sum_r coef[r][c] * x[r][:n] for c < ncols, r < nrows  (dV += Pdᵀ dO, dK += dXᵀ Q)
    void accumulate_tn(A *acc, const A *coef, const A *x, int64_t x_rs, int nrows, int ncols, int n) const {
        product(ncols, n, nrows, coef, 1, kBlockK, x, x_rs, acc, n, true);
    }
    // acc[r][:n] += sum_c coef[r][c] * y[c][:n] for r < nrows, c < ncols  (dQ += dX K)
    void accumulate_nn(A *acc, const A *coef, const A *y, int nrows, int ncols, int n) const {
        product(nrows, n, ncols, coef, kBlockK, 1, y, n, acc, n, true);
    }

    // ---- query-side packs: q and dO of every head, converted to A, rows contiguous per head ----
    // Every key block sweeps all query rows of its heads; read from the user's arrays (rows nheads * d apart, a
    // power of two that folds a tile onto a few L1 sets) each sweep stalls on misses. Packed once in pass 0, the
    // tiles are contiguous, stream well and need no per-tile copy or conversion. Costs (d + dv) * sizeof(A) bytes
    // per query row and head; above kMaxPackBytes the tiles are copied from the user's arrays instead.
    void allocate_query_packs() {
        const double bytes = (double)p_->nheads_q * (double)q_rows_ * (double)(d_ + dv_) * sizeof(A);
        if (bytes > kMaxPackBytes) return;
        const size_t n = (size_t)p_->nheads_q * (size_t)q_rows_;
        try {  // from the buffer pool, contents unspecified: pass 0 writes every row a tile can read
            q_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)d_ * sizeof(A));
            dout_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)dv_ * sizeof(A));
            q_pack_ = q_pack_mem_.as<A>();
            dout_pack_ = dout_pack_mem_.as<A>();
        } catch (const std::bad_alloc &) {  // slower per-tile copies instead
            q_pack_mem_.release();
            dout_pack_mem_.release();
        }
    }
    // Up to 8 GiB of packs (q and dO of 4 GiB each in fp32, e.g. batch 4 x 32 heads x 64k rows x d 128); beyond,
    // or when the allocation fails, the tiles are copied per use.
    static constexpr double kMaxPackBytes = 8.0 * 1024 * 1024 * 1024;
    // bf16 copies of the packs for scores_bf16 (raw bits, rows zero-padded to an even length): half the bytes again.
    void allocate_bf16_packs() {
        const size_t n = (size_t)p_->nheads_q * (size_t)q_rows_;
        d2_ = (d_ + 1) & ~1;
        dv2_ = (dv_ + 1) & ~1;
        try {
            q16_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)d2_ * sizeof(uint16_t));
            dout16_pack_mem_ = fa_cpu::PooledBuffer(n * (size_t)dv2_ * sizeof(uint16_t));
            q16_pack_ = q16_pack_mem_.as<uint16_t>();
            dout16_pack_ = dout16_pack_mem_.as<uint16_t>();
        } catch (const std::bad_alloc &) {  // fp32 products instead
            q16_pack_mem_.release();
            dout16_pack_mem_.release();
        }
    }
    size_t pack_row(int64_t b, const SeqGeometry &g, int64_t i, int64_t h) const {
        const int64_t r = packed_q_ ? g.q_row0 + i : b * p_->seqlen_q + i;
        return (size_t)h * (size_t)q_rows_ + (size_t)r;
    }

    // ---- pass 0: D = rowsum(dO * O), and the query-side packs ----
    void compute_delta(int64_t b, int64_t h) {
        const SeqGeometry g = sequence_geometry(p_, b);
        for (int64_t i = 0; i < g.sq; ++i) {
            const T *o = q_side(p_->out, b, g, i, h);
            const T *dout = q_side(p_->dout, b, g, i, h);
            A sum = 0;
            for (int e = 0; e < dv_; ++e) sum += elem<T, A>::load(o + e) * elem<T, A>::load(dout + e);
            delta_at(b, g, i, h) = sum;
            if constexpr (std::is_same<T, bf16_bits>::value) {
                if (q16_pack_) {
                    const T *q = q_side(p_->q, b, g, i, h);
                    uint16_t *q16 = &q16_pack_[pack_row(b, g, i, h) * d2_];
                    uint16_t *do16 = &dout16_pack_[pack_row(b, g, i, h) * dv2_];
                    for (int e = 0; e < d2_; ++e) q16[e] = e < d_ ? q[e].bits : 0;
                    for (int e = 0; e < dv2_; ++e) do16[e] = e < dv_ ? dout[e].bits : 0;
                }
            }
            if (q_pack_) {
                const T *q = q_side(p_->q, b, g, i, h);
                A *qp = &q_pack_[pack_row(b, g, i, h) * d_];
                A *dp = &dout_pack_[pack_row(b, g, i, h) * dv_];
                for (int e = 0; e < d_; ++e) qp[e] = elem<T, A>::load(q + e);
                for (int e = 0; e < dv_; ++e) dp[e] = elem<T, A>::load(dout + e);
            }
        }
    }

    // ---- tile loads ----
    // Query-side rows [i0, i0+nq) of head h: q, dO, LSE, D and the dead-row flags.
    void load_query_tile(int64_t b, const SeqGeometry &g, int64_t h, int64_t i0, int nq, Workspace<A> &w) {
        w.any_dead = false;
        if (q16_pack_) {
            w.q16_rows = &q16_pack_[pack_row(b, g, i0, h) * d2_];
            w.dout16_rows = &dout16_pack_[pack_row(b, g, i0, h) * dv2_];
            if (bf16_products_) {
                kernels_->pair_rows_bf16(w.q16_rows, d2_, nq, d_, w.q_pairs.data(), 2 * d_);
                kernels_->pair_rows_bf16(w.dout16_rows, dv2_, nq, dv_, w.dout_pairs.data(), 2 * dv_);
            }
        }
        if (q_pack_) {
            w.q_rows = &q_pack_[pack_row(b, g, i0, h) * d_];
            w.dout_rows = &dout_pack_[pack_row(b, g, i0, h) * dv_];
        } else {
            // Copied even when T == A, for the same L1-set reason as the packs.
            for (int r = 0; r < nq; ++r) {
                const T *q = q_side(p_->q, b, g, i0 + r, h);
                const T *dout = q_side(p_->dout, b, g, i0 + r, h);
                A *qr = &w.q[(size_t)r * d_];
                A *dr = &w.dout[(size_t)r * dv_];
                for (int e = 0; e < d_; ++e) qr[e] = elem<T, A>::load(q + e);
                for (int e = 0; e < dv_; ++e) dr[e] = elem<T, A>::load(dout + e);
            }
            w.q_rows = w.q.data();
            w.dout_rows = w.dout.data();
        }
        for (int r = 0; r < nq; ++r) {
            const float lse = lse_at(b, g, i0 + r, h);
            w.dead[r] = lse_is_dead(lse) || window_.key_lo(i0 + r, g) > window_.key_hi(i0 + r, g);
            w.any_dead = w.any_dead || w.dead[r];
            w.lse[r] = w.dead[r] ? A(0) : (A)lse;
            const bool refined = !w.dead[r] && !lse_fine_.empty();
            w.lse_hi[r] = refined ? row_at(lse_fine_, b, g, i0 + r, h) : 0.0;
            w.lse_lo[r] = refined ? row_at(lse_lo_, b, g, i0 + r, h) : 0.0;
            w.delta[r] = delta_at(b, g, i0 + r, h);
        }
    }

    // Keys/values [j0, j0+nk) of kv head hk into a slot: row-major keys (dQ += dX K) and Kᵀ, Vᵀ zero-padded to
    // kBlockK columns.
    // The user's rows are first copied whole (sequential reads, many misses in flight), then transposed from cache.
    void load_key_tile(int64_t b, const SeqGeometry &g, int64_t hk, int64_t j0, int nk, Workspace<A> &w, int slot) {
        A *kt = w.kt(slot), *vt = w.vt(slot), *krows = w.krows(slot), *vrows = w.v_rows.data();
        for (int c = 0; c < kBlockK; ++c) {
            A *kr = krows + (size_t)c * d_;
            A *vr = vrows + (size_t)c * dv_;
            if (c < nk) {
                const T *k = k_side(p_->k, b, g, j0 + c, hk);
                const T *v = k_side(p_->v, b, g, j0 + c, hk);
                for (int e = 0; e < d_; ++e) kr[e] = elem<T, A>::load(k + e);
                for (int e = 0; e < dv_; ++e) vr[e] = elem<T, A>::load(v + e);
            } else {
                for (int e = 0; e < d_; ++e) kr[e] = A(0);
                for (int e = 0; e < dv_; ++e) vr[e] = A(0);
            }
        }
        if constexpr (std::is_same<T, bf16_bits>::value) {
            if (q16_pack_) {  // pairs over the head dim for scores_bf16 (the fp32 Kᵀ, Vᵀ are not needed then)
                bf16_pairs(b, g, p_->k, hk, j0, nk, d_, w.kt16(slot));
                bf16_pairs(b, g, p_->v, hk, j0, nk, dv_, w.vt16(slot));
                if (bf16_products_ && nk > 0)  // keys as pairs over rows for dQ += dX K
                    kernels_->pair_rows_bf16(reinterpret_cast<const uint16_t *>(k_side(p_->k, b, g, j0, hk)),
                                             p_->k.row_stride, nk, d_, w.kpairs(slot), 2 * d_);
                if (!refine_lse_) return;  // refined_scores reads the fp32 Kᵀ
            }
        }
        for (int e = 0; e < d_; ++e)
            for (int c = 0; c < kBlockK; ++c) kt[(size_t)e * kBlockK + c] = krows[(size_t)c * d_ + e];
        for (int e = 0; e < dv_; ++e)
            for (int c = 0; c < kBlockK; ++c) vt[(size_t)e * kBlockK + c] = vrows[(size_t)c * dv_ + e];
    }

    // out[((e/2)*kBlockK + c)*2 + e%2] = bits of row j0 + c, element e of t (0 past nk rows or the head dim n).
    void bf16_pairs(int64_t b, const SeqGeometry &g, const fa_tensor &t, int64_t hk, int64_t j0, int nk, int n,
                    uint16_t *out) const {
        const int n2 = (n + 1) & ~1;
        for (int c = 0; c < kBlockK; ++c) {
            const T *row = c < nk ? k_side(t, b, g, j0 + c, hk) : nullptr;
            for (int e = 0; e < n2; ++e) {
                uint16_t bits = 0;
                if constexpr (std::is_same<T, bf16_bits>::value) bits = (row && e < n) ? row[e].bits : 0;
                out[((size_t)(e >> 1) * kBlockK + c) * 2 + (e & 1)] = bits;
            }
        }
    }

    // One row of the tile: raw products q·k in `raw` -> P = exp(score - lse) in out, 0 on masked keys (and tanh of
    // the capped score in th for the softcap derivative). Returns true if some key of the row is visible.
    template <typename S>
    bool probabilities_row(int64_t b, int64_t h, const SeqGeometry &g, int64_t i, int64_t j0, int nk, bool full,
                           const S *raw, S lse, S lse_lo, A *out, A *th) const {
        const bool any = logits_row(b, h, g, i, j0, nk, full, raw, lse, lse_lo, out, th);
        exp_row(out);
        return any;
    }

    // The exponents of probabilities_row: out[c] <- (score - lse) - lse_lo (-1e30 on masked keys), the score formed
    // from raw[c] in S (A, or double for a refined LSE: see refined_scores) and rounded to S first; lse_lo is 0
    // unless the LSE was refined (refine_lse_block). out may be raw.
    template <typename S, typename O>
    bool logits_row(int64_t b, int64_t h, const SeqGeometry &g, int64_t i, int64_t j0, int nk, bool full,
                    const S *raw, S lse, S lse_lo, O *out, A *th) const {
        const S slope = (S)alibi_slope(b, h);
        const S scale = std::is_same<S, A>::value ? (S)scale_ : (S)p_->softmax_scale;
        const S cap = std::is_same<S, A>::value ? (S)softcap_ : (S)p_->softcap;
        const bool capped = cap > S(0);
        const S inv_cap = capped ? S(1) / cap : S(0);
        bool any = false;
        bool visible[kBlockK];
        S x[kBlockK];
        for (int c = 0; c < kBlockK; ++c) {
            const int64_t j = j0 + c;
            visible[c] = c < nk && (full || window_.visible(i, j, g));
            if (!visible[c]) continue;
            S v = raw[c] * scale;
            if (capped) {
                const S t = std::tanh(v * inv_cap);
                th[c] = (A)t;
                v = cap * t;
            }
            if (slope != S(0)) {
                const int64_t dist = i + g.diag - j;
                v -= slope * (S)(dist < 0 ? -dist : dist);
            }
            x[c] = v;
            any = true;
        }
        // The LSE is subtracted in a loop of its own, from the score as stored (rounded to S): in one expression the
        // compiler may fuse the last product into an FMA (C++ compilers contract by default), whose exact product
        // would differ from the rounded one the LSE refinement and the fused kernels use - by 64 and more for huge
        // logits (exp of that: no weight, or inf).
        for (int c = 0; c < kBlockK; ++c) out[c] = visible[c] ? (O)((x[c] - lse) - lse_lo) : O(-1e30);  // masked: 0
        return any;
    }

    // q·k of the tile's rows in double, for rows whose LSE is refined (refine_lse_: large logits, or fp64). A P whose
    // exponent is scale * q·k - LSE moves by scale times the error of q·k: the fp32 product's rounding (a few units
    // of 2^-24 |q||k|) gives P relative errors of ~1e-4 at softmax_scale 100 with unit q, which dQ and dK carry as
    // rounding noise as large as the float32 reference's own, and 1-3x beyond the tolerance depending on the data
    // (issue 17 item 6). The products of two floats are exact in double and their sum nearly so, so P is then exact
    // to float rounding and the fp32 gradients stay far inside the tolerance. Only the refined path pays for it.
    double *refined_scores(int nq, Workspace<A> &w, int slot) const {
        if constexpr (std::is_same<A, double>::value) {
            return w.s.data();  // score_products formed them in double already
        } else {
            tile_scores_f64(nq, d_, w.q_rows, d_, w.kt(slot), w.s64.data());
            return w.s64.data();
        }
    }

    // Raw products of the tile: q·k into w.s and (with dp) dO·v into w.dp. One place, so that the LSE refinement sees
    // the very scores (same kernel, same rounding) that the gradient passes turn into probabilities.
    // With a refined LSE, float tiles take q·k from refined_scores instead (w.s is not formed here).
    void score_products(int nq, Workspace<A> &w, int slot, bool dp) const {
        const bool s = std::is_same<A, double>::value || !refine_lse_;
        if constexpr (std::is_same<A, float>::value) {
            if (q16_pack_) {
                if (s) kernels_->scores_bf16(nq, d2_ / 2, w.q16_rows, d2_, w.kt16(slot), w.s.data());
                if (dp) kernels_->scores_bf16(nq, dv2_ / 2, w.dout16_rows, dv2_, w.vt16(slot), w.dp.data());
                return;
            }
        }
        if (s) matmul_nt(w.q_rows, d_, d_, w.kt(slot), nq, w.s.data());
        if (dp) matmul_nt(w.dout_rows, dv_, dv_, w.vt(slot), nq, w.dp.data());
    }

    // ---- the shared tile: probabilities and score gradients for rows [i0, i0+nq) x keys [j0, j0+nk) ----
    // On return w.s holds Pd (dropped, rescaled probabilities: dV += Pdᵀ dO) and w.dp holds dX, the gradient with
    // respect to the raw product q·k (dQ += dX K, dK += dXᵀ Q). Returns false when the whole tile is masked.
    bool score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0, int nk,
                         Workspace<A> &w, int slot) {
        if (!tile_score_gradients(b, h, g, i0, nq, j0, nk, w, slot)) return false;
        peaked_score_gradients(b, h, g, i0, nq, j0, nk, w);
        return true;
    }

    // dS = P (dP - D) cancels where P is close to 1 (one key takes almost all of a row's weight: huge logits, or a
    // very peaked softmax): dP = dO·v and D = dO·O are then nearly equal sums, each rounded in fp32, and their
    // difference - the whole gradient - is rounding noise, multiplied by softmax_scale (1e8 gives dQ errors in the
    // hundreds where the exact gradient is 0). For those elements (P >= 1/2: at most two per row) the difference is
    // recomputed as dO·(v - O) in double from the stored rows, the same quantity summed after the subtraction: exactly
    // 0 when the row's output is that key's value. O(headdim) per row, not per key.
    // With a refined LSE (fp64, huge logits) D itself is taken from the probabilities (refine_lse_block), which
    // removes the cancellation at its root; this is for the plain path.
    void peaked_score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0, int nk,
                                Workspace<A> &w) {
        if (refine_lse_) return;
        const bool capped = softcap_ > A(0);
        const int64_t hk = h / group_;
        for (int r = 0; r < nq; ++r) {
            if (w.dead[r]) continue;
            const A *s = &w.s[(size_t)r * kBlockK];
            A *dp = &w.dp[(size_t)r * kBlockK];
            for (int c = 0; c < nk; ++c) {
                // s holds Pd = P * keep / (1 - p): P of a kept key is s / keep_scale_, a dropped key has no cancellation
                const A prob = dropout_ ? (s[c] != A(0) ? s[c] / keep_scale_ : A(0)) : s[c];
                if (!(prob >= A(0.5))) continue;
                const double kf = dropout_ ? (double)keep_scale_ : 1.0;
                const T *o = q_side(p_->out, b, g, i0 + r, h);
                const T *dout = q_side(p_->dout, b, g, i0 + r, h);
                const T *v = k_side(p_->v, b, g, j0 + c, hk);
                double diff = 0.0;
                for (int e = 0; e < dv_; ++e)
                    diff += (double)elem<T, A>::load(dout + e) *
                            (kf * (double)elem<T, A>::load(v + e) - (double)elem<T, A>::load(o + e));
                A ds = prob * (A)diff;
                if (capped) ds *= A(1) - w.tanh_t[(size_t)r * kBlockK + c] * w.tanh_t[(size_t)r * kBlockK + c];
                dp[c] = ds * scale_;
            }
        }
    }

    bool tile_score_gradients(int64_t b, int64_t h, const SeqGeometry &g, int64_t i0, int nq, int64_t j0, int nk,
                              Workspace<A> &w, int slot) {
        const bool full = window_.tile_fully_visible(i0, i0 + nq, j0, j0 + nk, g);
        const bool capped = softcap_ > A(0);

        score_products(nq, w, slot, true);
        const double *raw64 = refine_lse_ ? refined_scores(nq, w, slot) : nullptr;

        // The common interior tile: every pair visible, no per-element feature. One fused vector pass - except with a
        // refined LSE (huge logits), where every exponent must be formed as logits_row forms it (the refinement's
        // own rounding), which a fused score*scale - lse (one FMA) is not.
        if constexpr (std::is_same<A, float>::value) {
            if (full && nk == kBlockK && !capped && !dropout_ && !w.any_dead && alibi_slope(b, h) == A(0) &&
                lse_lo_.empty()) {
                kernels_->softmax_grad(w.s.data(), w.dp.data(), w.lse.data(), w.delta.data(), nq, scale_);
                return true;
            }
        }

        bool any = false;
        for (int r = 0; r < nq; ++r) {
            A *s = &w.s[(size_t)r * kBlockK];
            A *dp = &w.dp[(size_t)r * kBlockK];
            A *th = &w.tanh_t[(size_t)r * kBlockK];
            const int64_t i = i0 + r;
            if (w.dead[r]) {
                for (int c = 0; c < kBlockK; ++c) s[c] = dp[c] = A(0);
                continue;
            }
            const bool live = raw64 ? probabilities_row(b, h, g, i, j0, nk, full, raw64 + (size_t)r * kBlockK,
                                                        w.lse_hi[r], w.lse_lo[r], s, th)
                                    : probabilities_row(b, h, g, i, j0, nk, full, s, w.lse[r], A(0), s, th);
            any = any || live;
            // dS = P (dP - D) with dP = dPd * keep / (1 - p); dX = dS * scale (* softcap derivative).
            // Pd = P * keep / (1 - p) replaces P afterwards (dS needs the undropped P).
            const A delta = w.delta[r];
            if (dropout_) {
                A *keep = w.keep.data();
                dropout_factors(b, h, i, j0, keep);
                for (int c = 0; c < kBlockK; ++c) {
                    A ds = s[c] * (dp[c] * keep[c] - delta);
                    if (capped) ds *= A(1) - th[c] * th[c];
                    dp[c] = ds * scale_;
                    s[c] *= keep[c];
                }
            } else {
                for (int c = 0; c < kBlockK; ++c) {
                    A ds = s[c] * (dp[c] - delta);
                    if (capped) ds *= A(1) - th[c] * th[c];
                    dp[c] = ds * scale_;
                }
            }
        }
        return any;
    }

    // keep[c] = 1 / (1 - p) if key j0 + c of row i survives dropout, else 0. The mask is regenerated from Philox
    // exactly as the forward drew it (kernels/fa_philox.h): bh = b * nheads_q + h, row/col within the sequence.
    // j0 is a multiple of kBlockK, hence of 4, so each Philox call covers 4 consecutive columns of this tile.
    void dropout_factors(int64_t b, int64_t h, int64_t i, int64_t j0, A *keep) const {
        const uint32_t bh = (uint32_t)(b * p_->nheads_q + h);
        for (int c = 0; c < kBlockK; c += 4) {
            const fa_philox_out words =
                fa_dropout_words(p_->dropout_seed, p_->dropout_offset, bh, (uint32_t)i, (uint32_t)(j0 + c));
            for (int u = 0; u < 4; ++u) keep[c + u] = words.w[u] >= threshold_ ? keep_scale_ : A(0);
        }
    }

    // ---- the LSE recomputed from this pass's own scores ----
    // fp64: the ABI's LSE is fp32, which would cap fp64 gradients at ~1e-7 relative error (useless for gradcheck).
    // fp32 with huge logits (|LSE| above kRefineLseAbove, e.g. softmax_scale 1e8): the fp32 LSE is rounded to a unit
    // of |LSE| * 2^-24 (64 at 1e9) and the forward rounded its scores differently from these, so exp(score - lse)
    // of a row's largest score could be anything from e^-64 to 1 instead of 1 / (row sum): wrong dV, dK, dQ.
    // lse = max_j x_j + log(sum_j exp(x_j - max_j x_j)), x_j the scores exactly as score_gradients forms them
    // (same products, same rounding), makes every P consistent with them. Taken online against the running max, so
    // no exponent is positive. One extra pass of Q Kᵀ, only in those two cases.
    void refine_lse_block(int64_t b, int64_t h, int64_t qb, Workspace<A> &w) {
        const SeqGeometry g = sequence_geometry(p_, b);
        const int64_t i0 = qb * kBlockQ;
        if (i0 >= g.sq) return;
        const int nq = (int)std::min<int64_t>(kBlockQ, g.sq - i0);
        load_query_tile(b, g, h, i0, nq, w);
        double mx[kBlockQ];
        double sums[kBlockQ] = {}, wsums[kBlockQ] = {};  // sum_j e^(x_j - mx) and sum_j e^(x_j - mx) keep_j dPd_j
        for (int r = 0; r < nq; ++r) mx[r] = -1e300;
        const int64_t jlo = window_.key_lo(i0, g), jhi = window_.key_hi(i0 + nq - 1, g);
        for (int64_t kb = jlo / kBlockK; jlo <= jhi && kb <= jhi / kBlockK; ++kb) {
            const int64_t j0 = kb * kBlockK;
            const int nk = (int)std::min<int64_t>(kBlockK, g.sk - j0);
            load_key_tile(b, g, h / group_, j0, nk, w, 0);
            const bool full = window_.tile_fully_visible(i0, i0 + nq, j0, j0 + nk, g);
            score_products(nq, w, 0, true);
            double *x = refined_scores(nq, w, 0);  // the logits replace the products in place
            for (int r = 0; r < nq; ++r) {
                if (w.dead[r]) continue;
                double *s = x + (size_t)r * kBlockK;
                const A *dp = &w.dp[(size_t)r * kBlockK];
                logits_row(b, h, g, i0 + r, j0, nk, full, s, 0.0, 0.0, s, &w.tanh_t[(size_t)r * kBlockK]);
                if (dropout_) dropout_factors(b, h, i0 + r, j0, w.keep.data());
                double tmax = mx[r];
                for (int c = 0; c < kBlockK; ++c) tmax = s[c] > tmax ? s[c] : tmax;
                if (tmax > mx[r]) {
                    const double f = std::exp(mx[r] - tmax);
                    sums[r] *= f;
                    wsums[r] *= f;
                    mx[r] = tmax;
                }
                for (int c = 0; c < kBlockK; ++c) {
                    const double e = std::exp(s[c] - tmax);
                    sums[r] += e;
                    wsums[r] += e * (double)dp[c] * (dropout_ ? (double)w.keep[c] : 1.0);
                }
            }
        }
        // Kept as two parts, the row's largest score and log(sum): one fp32 number could not hold both when the
        // score is huge (1e9 + log(3) rounds to 1e9, and three tied keys would each get P = 1 instead of 1/3).
        // D = rowsum(dO * O) is replaced by the same sum taken over these probabilities, sum_j P_j keep_j dPd_j, from
        // the very dPd values the gradient passes subtract it from: where one key has all the weight, dPd - D is then
        // exactly 0 (the exact gradient) instead of the rounding of the stored O times softmax_scale.
        for (int r = 0; r < nq; ++r) {
            const bool live = !w.dead[r] && sums[r] > 0.0;
            row_at(lse_fine_, b, g, i0 + r, h) = live ? mx[r] : 0.0;
            row_at(lse_lo_, b, g, i0 + r, h) = live ? std::log(sums[r]) : 0.0;
            if (live) delta_at(b, g, i0 + r, h) = (A)(wsums[r] / sums[r]);
        }
    }

    // Are there live rows whose fp32 LSE is too coarse for consistent probabilities (see refine_lse_block)?
    // 64, as the Metal kernels (FA_BWD_REFINE_LSE2, kernels/fa_bwd_params.h): from |LSE| ~100 (softmax_scale 20 with
    // unit q) the fp32 LSE's unit (2^-17 at 64) already moved fp32 dV past the float32 reference's error.
    static constexpr float kRefineLseAbove = 64.0f;
    bool huge_lse() const {
        for (int64_t b = 0; b < p_->batch; ++b) {
            const SeqGeometry g = sequence_geometry(p_, b);
            for (int64_t h = 0; h < p_->nheads_q; ++h)
                for (int64_t i = 0; i < g.sq; ++i) {
                    const float v = lse_at(b, g, i, h);
                    if (!lse_is_dead(v) && std::fabs(v) > kRefineLseAbove) return true;
                }
        }
        return false;
    }

    // ---- pass 1: dK, dV for key blocks [kg*kKeyGroup, ...) of kv head hk, summed over its query heads ----
    void dkdv_block(int64_t b, int64_t hk, int64_t kg, Workspace<A> &w) {
        const SeqGeometry g = sequence_geometry(p_, b);
        struct Slot {
            int64_t j0;
            int rows_out, nk;    // key rows this item writes / rows attended
            int64_t ilo, ihi;    // query rows that see a key of the block
        } slots[kKeyGroup];
        int nslots = 0;
        int64_t ilo = g.sq, ihi = -1;  // union of the slots' query rows
        for (int sl = 0; sl < kKeyGroup; ++sl) {
            const int64_t j0 = (kg * kKeyGroup + sl) * kBlockK;
            if (j0 >= g.sk_rows) break;
            Slot &s = slots[nslots++];
            s.j0 = j0;
            s.rows_out = (int)std::min<int64_t>(kBlockK, g.sk_rows - j0);
            s.nk = (int)std::max<int64_t>(0, std::min<int64_t>(kBlockK, g.sk - j0));
            s.ilo = window_.row_lo(j0, g);
            s.ihi = s.nk > 0 ? window_.row_hi(j0 + s.nk, g) : -1;
            std::fill(w.dk_acc.begin() + (size_t)sl * kBlockK * d_, w.dk_acc.begin() + (size_t)(sl + 1) * kBlockK * d_,
                      A(0));
            std::fill(w.dv_acc.begin() + (size_t)sl * kBlockK * dv_,
                      w.dv_acc.begin() + (size_t)(sl + 1) * kBlockK * dv_, A(0));
            if (s.nk > 0 && s.ilo <= s.ihi) {
                load_key_tile(b, g, hk, j0, s.nk, w, sl);
                ilo = std::min(ilo, s.ilo);
                ihi = std::max(ihi, s.ihi);
            }
        }
        if (nslots == 0) return;
        A *dq_part = single_pass_ && ilo <= ihi ? dq_partials() : nullptr;
        for (int64_t h = hk * group_; h < (hk + 1) * group_; ++h) {
            for (int64_t i0 = ilo; i0 <= ihi; i0 += kBlockQ) {
                if (fa_cancel_rt::check(p_->cancel)) return;
                const int nq = (int)std::min<int64_t>(kBlockQ, ihi + 1 - i0);
                load_query_tile(b, g, h, i0, nq, w);
                for (int sl = 0; sl < nslots; ++sl) {
                    const Slot &s = slots[sl];
                    if (s.nk == 0 || i0 > s.ihi || i0 + nq - 1 < s.ilo) continue;  // no row of the tile sees it
                    if (!score_gradients(b, h, g, i0, nq, s.j0, s.nk, w, sl)) continue;
                    A *dk = w.dk_acc.data() + (size_t)sl * kBlockK * d_;
                    A *dv = w.dv_acc.data() + (size_t)sl * kBlockK * dv_;
                    A *dq_rows = dq_part ? dq_part + (size_t)partial_row(b, g, i0, h) * d_ : nullptr;
                    if constexpr (std::is_same<A, float>::value) {
                        if (bf16_products_) {
                            bf16_gradient_products(w, nq, s.nk, sl, dv, dk, dq_rows);
                            continue;
                        }
                    }
                    accumulate_tn(dv, w.s.data(), w.dout_rows, dv_, nq, s.nk, dv_);  // dV += Pdᵀ dO
                    accumulate_tn(dk, w.dp.data(), w.q_rows, d_, nq, s.nk, d_);      // dK += dXᵀ Q
                    if (dq_rows)  // dQ += dX K into this thread's partial sums (rows are contiguous there)
                        accumulate_nn(dq_rows, w.dp.data(), w.krows(sl), nq, s.nk, d_);
                }
            }
        }
        for (int sl = 0; sl < nslots; ++sl) {
            const Slot &s = slots[sl];
            const A *dk = w.dk_acc.data() + (size_t)sl * kBlockK * d_;
            const A *dv = w.dv_acc.data() + (size_t)sl * kBlockK * dv_;
            for (int c = 0; c < s.rows_out; ++c) {
                T *dkr = k_side(p_->dk, b, g, s.j0 + c, hk);
                T *dvr = k_side(p_->dv, b, g, s.j0 + c, hk);
                for (int e = 0; e < d_; ++e) elem<T, A>::store(dkr + e, dk[(size_t)c * d_ + e]);
                for (int e = 0; e < dv_; ++e) elem<T, A>::store(dvr + e, dv[(size_t)c * dv_ + e]);
            }
        }
    }

    // ---- single pass (deterministic == 0): dQ from per-thread partial sums ----
    // Saves pass 2's recomputation of S and dPd (5 tile products instead of 7) at the price of one fp32 copy of dQ
    // per thread, summed at the end in thread-arrival order: the bits may then differ from run to run, which is what
    // flash_attn's deterministic=False allows. deterministic=1 (or too little memory) keeps the two-pass schedule.
    bool use_single_pass(int threads) const {
        if (p_->deterministic) return false;
        const int n = threads > 0 ? threads : fa_cpu::pool_num_threads();
        const double bytes = (double)n * (double)p_->nheads_q * (double)q_rows_ * d_ * sizeof(A);
        return bytes <= kMaxPartialBytes;
    }
    static constexpr double kMaxPartialBytes = 256.0 * 1024 * 1024;

    // Row index of (b, h, row i) in a [nheads_q][q rows][d] partial buffer.
    int64_t partial_row(int64_t b, const SeqGeometry &g, int64_t i, int64_t h) const {
        const int64_t r = packed_q_ ? g.q_row0 + i : b * p_->seqlen_q + i;
        return h * q_rows_ + r;
    }

    // The calling thread's zeroed partial dQ buffer for this call (registered on first use).
    A *dq_partials() {
        const size_t n = (size_t)p_->nheads_q * (size_t)q_rows_ * (size_t)d_;
        A *part;
        {
            std::lock_guard<std::mutex> lock(partials_mutex_);
            const std::thread::id me = std::this_thread::get_id();
            for (size_t i = 0; i < partial_owner_.size(); ++i)
                if (partial_owner_[i] == me) return partials_[i].as<A>();
            partials_.emplace_back(n * sizeof(A));  // pooled: warm pages after the first call, old contents
            partial_owner_.push_back(me);
            part = partials_.back().as<A>();
        }
        std::fill(part, part + n, A(0));  // outside the lock; no other thread reads it before pass 1 ends
        return part;
    }

    // dQ rows of query block qb of head h: the sum of every thread's partials.
    void store_dq_from_partials(int64_t b, int64_t h, int64_t qb) {
        const SeqGeometry g = sequence_geometry(p_, b);
        const int64_t i0 = qb * kBlockQ;
        if (i0 >= g.sq) return;
        const int nq = (int)std::min<int64_t>(kBlockQ, g.sq - i0);
        for (int r = 0; r < nq; ++r) {
            const size_t at = (size_t)partial_row(b, g, i0 + r, h) * d_;
            T *out = q_side(p_->dq, b, g, i0 + r, h);
            for (int e = 0; e < d_; ++e) {
                A sum = A(0);
                for (const auto &part : partials_) sum += part.as<A>()[at + e];
                elem<T, A>::store(out + e, sum);
            }
        }
    }

    // dV += Pdᵀ dO, dK += dXᵀ Q (when dv/dk are given) and dQ += dX K (when dq is given) for the tile in w (nq query
    // rows, nk keys of key slot `slot`), by accumulate_bf16: Pd and dX rounded to bf16 as flash_attn rounds P and dS
    // before these products; q, dO and K are the exact bf16 inputs. Only A = float (bf16 inputs) gets here.
    void bf16_gradient_products(Workspace<A> &w, int nq, int nk, int slot, float *dv, float *dk, float *dq) const {
        const int nq2 = (nq + 1) / 2;
        if (dv) {
            kernels_->pair_tile_rows_bf16(w.s.data(), nq, w.coef_t2.data());
            kernels_->accumulate_bf16(nk, dv_, nq2, w.coef_t2.data(), 1, kBlockK, w.dout_pairs.data(), 2 * dv_, dv, dv_);
        }
        if (dk) {
            kernels_->pair_tile_rows_bf16(w.dp.data(), nq, w.coef_t2.data());
            kernels_->accumulate_bf16(nk, d_, nq2, w.coef_t2.data(), 1, kBlockK, w.q_pairs.data(), 2 * d_, dk, d_);
        }
        if (dq) {
            kernels_->round_tile_bf16(w.dp.data(), nq, nk, w.dx_rows16.data());
            kernels_->accumulate_bf16(nq, d_, (nk + 1) / 2, reinterpret_cast<const uint32_t *>(w.dx_rows16.data()),
                                      kBlockK / 2, 1, w.kpairs(slot), 2 * d_, dq, d_);
        }
    }

    // ---- pass 2: dQ for query rows [qb*kBlockQ, ...) of head h ----
    void dq_block(int64_t b, int64_t h, int64_t qb, Workspace<A> &w) {
        const SeqGeometry g = sequence_geometry(p_, b);
        const int64_t i0 = qb * kBlockQ;
        if (i0 >= g.sq) return;
        const int nq = (int)std::min<int64_t>(kBlockQ, g.sq - i0);
        const int64_t hk = h / group_;
        A *dq = w.dq_acc.data();
        std::fill(dq, dq + (size_t)kBlockQ * d_, A(0));
        load_query_tile(b, g, h, i0, nq, w);
        const int64_t jlo = window_.key_lo(i0, g), jhi = window_.key_hi(i0 + nq - 1, g);
        for (int64_t kb = jlo / kBlockK; jlo <= jhi && kb <= jhi / kBlockK; ++kb) {
            if (fa_cancel_rt::check(p_->cancel)) return;
            const int64_t j0 = kb * kBlockK;
            const int nk = (int)std::min<int64_t>(kBlockK, g.sk - j0);
            load_key_tile(b, g, hk, j0, nk, w, 0);
            if (!score_gradients(b, h, g, i0, nq, j0, nk, w, 0)) continue;
            if constexpr (std::is_same<A, float>::value) {
                if (bf16_products_) {
                    bf16_gradient_products(w, nq, nk, 0, nullptr, nullptr, dq);
                    continue;
                }
            }
            accumulate_nn(dq, w.dp.data(), w.krows(0), nq, nk, d_);  // dQ += dX K
        }
        for (int r = 0; r < nq; ++r) {
            T *out = q_side(p_->dq, b, g, i0 + r, h);
            for (int e = 0; e < d_; ++e) elem<T, A>::store(out + e, dq[(size_t)r * d_ + e]);
        }
    }

    // Packed rows past the last sequence belong to nobody; write zeros so the gradients are fully defined.
    void zero_unowned_packed_rows() {
        const int64_t nb = p_->batch;
        if (packed_q_) {
            for (int64_t row = p_->cu_seqlens_q[nb]; row < p_->total_q; ++row)
                for (int64_t h = 0; h < p_->nheads_q; ++h) {
                    T *out = static_cast<T *>(p_->dq.data) + row * p_->dq.row_stride + h * p_->dq.head_stride;
                    for (int e = 0; e < d_; ++e) elem<T, A>::store(out + e, A(0));
                }
        }
        if (packed_k_) {
            for (int64_t row = p_->cu_seqlens_k[nb]; row < p_->total_k; ++row)
                for (int64_t h = 0; h < p_->nheads_kv; ++h) {
                    T *dk = static_cast<T *>(p_->dk.data) + row * p_->dk.row_stride + h * p_->dk.head_stride;
                    T *dv = static_cast<T *>(p_->dv.data) + row * p_->dv.row_stride + h * p_->dv.head_stride;
                    for (int e = 0; e < d_; ++e) elem<T, A>::store(dk + e, A(0));
                    for (int e = 0; e < dv_; ++e) elem<T, A>::store(dv + e, A(0));
                }
        }
    }

    const fa_params *p_;
    int d_ = 0, dv_ = 0;
    int64_t group_ = 1;
    MaskWindow window_;
    bool packed_q_ = false, packed_k_ = false;
    A scale_ = 1, softcap_ = 0;
    bool dropout_ = false;
    uint32_t threshold_ = 0;
    A keep_scale_ = 1;
    int64_t q_rows_ = 0, max_sq_ = 0, max_sk_ = 0;
    std::vector<A> delta_;     // [nheads_q][q rows]: D = rowsum(dO * O)
    // Query packs (see allocate_query_packs), [nheads_q][q rows][d | dv]: pooled memory and typed views of it (null
    // when not packed); the bf16 ones only for scores_bf16, rows d2_ / dv2_ long.
    fa_cpu::PooledBuffer q_pack_mem_, dout_pack_mem_, q16_pack_mem_, dout16_pack_mem_;
    A *q_pack_ = nullptr, *dout_pack_ = nullptr;
    uint16_t *q16_pack_ = nullptr, *dout16_pack_ = nullptr;
    bool bf16_products_ = false;  // dV, dK, dQ by accumulate_bf16 (bf16 inputs, AVX512-BF16, bf16 packs present)
    int d2_ = 0, dv2_ = 0;
    bool single_pass_ = false; // dQ accumulated in pass 1 (see use_single_pass)
    std::mutex partials_mutex_;
    std::deque<fa_cpu::PooledBuffer> partials_;  // per-thread [nheads_q][q rows][d] dQ partial sums
    std::vector<std::thread::id> partial_owner_;
    const BwdKernelsF32 *kernels_ = nullptr;  // float products (runtime ISA choice); double uses tile_product
    bool refine_lse_ = false;  // fp64, or fp32 with huge logits: recompute the LSE (refine_lse_block)
    std::vector<double> lse_fine_;  // [nheads_q][q rows]: the refined LSE, empty unless refine_lse_
    std::vector<double> lse_lo_;    // [nheads_q][q rows]: its second part (LSE = lse_fine_ + lse_lo_), same
};

template <typename T, typename A>
int run_backward(const fa_params *p, char *err, size_t errlen) {
    try {
        CpuBackward<T, A> bwd(p);
        if (!bwd.run()) {
            std::snprintf(err, errlen, "cpu backward: a worker failed (out of memory for its tiles?)");
            return FA_ERR_RUNTIME;
        }
    } catch (const std::bad_alloc &) {
        std::snprintf(err, errlen, "cpu backward: out of memory allocating workspaces");
        return FA_ERR_RUNTIME;
    }
    return FA_OK;
}

}  // namespace fa_bwd

int fa_cpu_backward(const fa_params *p, char *err, size_t errlen) {
    using namespace fa_bwd;
    if (err && errlen) err[0] = '\0';
    if (p->block_table || p->leftpad_k || p->cache_batch_idx) {
        std::snprintf(err, errlen, "backward: paged / left-padded / batch-indexed KV caches have no backward");
        return FA_ERR_UNSUPPORTED;
    }
    if (!p->lse || !p->dout.data || !p->dq.data || !p->dk.data || !p->dv.data || !p->out.data) {
        std::snprintf(err, errlen, "backward: needs out, softmax_lse, dout, dq, dk and dv");
        return FA_ERR_VALUE;
    }
    switch (p->dtype) {
    case FA_F32: return run_backward<float, float>(p, err, errlen);
    case FA_F16: return run_backward<half_bits, float>(p, err, errlen);
    case FA_BF16: return run_backward<bf16_bits, float>(p, err, errlen);
    case FA_F64: return run_backward<double, double>(p, err, errlen);
    }
    std::snprintf(err, errlen, "backward: unknown dtype %d", (int)p->dtype);
    return FA_ERR_TYPE;
}
