// fa_forward.h - FlashAttention-2 forward on Apple GPUs: the templated kernel body and its helpers.
//
// Instantiated by fa_forward.metal (prefill: 4 simdgroups x 8 query rows) and fa_decode.metal (5..8 packed short-query
// rows: 1 simdgroup, split-KV; 1..4 rows run the vector kernel of fa_decode_vec.h, which reuses the helpers below).
// Include after <metal_stdlib> and `using namespace metal;`.
//
// Work split: one threadgroup per (query tile, head block, batch * num_splits + split). Each simdgroup owns 8 query
// rows; its Q rows stay in registers as 8x8 fragments for the whole key loop. For each key tile the threadgroup stages
// K and V (BK x BD, zero padded past the real head dim and past the last key) in threadgroup memory, then every
// simdgroup computes S = Q K^T and O += P V with simdgroup_matrix 8x8 multiply-accumulates in fp32.
//
// Softmax: base 2, with softmax_scale * log2(e) folded into Q at load (the host passes q_scale). Each lane holds two
// elements of one row of every 8x8 fragment (Apple's layout, see fa_frag_pos), so the row max / row sum are a local
// reduction followed by simd_shuffle_xor over lane masks 1 and 8. O is rescaled when the max moves and divided by the
// row sum once, at the end.
//
// No infinities or NaNs are computed (fast math): a masked score is the finite FA_MASKED and a row that has not seen
// a key keeps m = FA_MASKED, which the code tests explicitly. Such rows write zeros; the LSE of a row with no visible
// key is +inf (flash_attn's convention), stored as a bit pattern, not computed.
//
// Masks are bottom-right aligned: query i of a sequence (sq queries, sk keys) sees key j iff
// i + sk - sq - window_left <= j <= i + sk - sq + window_right (-1 = unbounded side; causal = window_right 0). The rule
// and its 64-bit, overflow-free evaluation live in fa_mask.h; here only its clamped results are used.
// The key-tile range of a query tile is computed up front, so tiles wholly outside the window are never loaded, and
// only tiles that cross a mask edge (or the end of the keys) evaluate the mask per element.
//
// Packed GQA (p.pack = group): the rows of a tile are (query i, head g of the KV group) pairs, row m = i * pack + g,
// so short queries fill the 8-row fragments with the heads that share one K/V tile. Prefill does not pack: a K/V
// tile is already shared by BQ = 32 query rows, and packing would not reduce the loads per row.
#ifndef FA_FORWARD_H
#define FA_FORWARD_H

#include "fa_kernel_params.h"
#include "fa_mask.h"
#include "fa_philox.h"
#include "fa_tiles.h"

// Score of a key the row may not see; also the running max of a row without keys. The most negative float, so that
// no real score (any finite fp32 value) is taken for it: -1e30 made rows whose scores all lay below -1e30 (huge
// logits) look empty.
#define FA_MASKED (-3.40282346638528859812e+38f)
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f
#define FA_INF_BITS 0x7f800000u  // +inf, stored (never computed) as a row's LSE when it sees no key

typedef simdgroup_matrix<float, 8, 8> fa_frag;

// tanh for softcap, finite for every finite x. Metal compiles with fast math, where `tanh` is (t-1)/(t+1) with
// t = exp(2x) (MSL specification, Table 8.2): NaN once exp(2x) overflows, i.e. for x above ~44, which a small softcap
// reaches with ordinary logits. precise::tanh is the Table 8.1 function (<= 5 ulp, all finite x), as MLX and candle
// use for the same reason. Every other transcendental in these kernels is fast and safe by construction: exp2 only
// of arguments <= 0 (a score minus a running max it cannot exceed), log2 only of row sums >= 1, divisions only by
// row sums in [1, 2^31]. The simulator's fast-math mode (FLASH_ATTN_CY_SIM_FAST_MATH=1) checks all of it.
inline float fa_tanh(float x) { return precise::tanh(x); }

// Position of a lane's two fragment elements: (row, col) and (row, col + 1) (Apple's simdgroup_matrix layout).
struct fa_lane_pos {
    short row;
    short col;
};

inline fa_lane_pos fa_frag_pos(ushort lane) {
    const short qid = short(lane / 4);
    fa_lane_pos pos;
    pos.row = short((qid & 4) + (lane / 2) % 4);
    pos.col = short((qid & 2) * 2 + (lane % 2) * 2);
    return pos;
}

// Fragment (8x8 at src, row stride ld) from threadgroup memory, converted to fp32.
template <typename T>
inline void fa_load_frag(thread fa_frag& f, const threadgroup T* src, int ld, fa_lane_pos pos) {
    f.thread_elements()[0] = float(src[pos.row * ld + pos.col]);
    f.thread_elements()[1] = float(src[pos.row * ld + pos.col + 1]);
}

// Transposed fragment: element (r, c) is src[c * ld + r] (K^T from a row-major K tile).
template <typename T>
inline void fa_load_frag_t(thread fa_frag& f, const threadgroup T* src, int ld, fa_lane_pos pos) {
    f.thread_elements()[0] = float(src[pos.col * ld + pos.row]);
    f.thread_elements()[1] = float(src[(pos.col + 1) * ld + pos.row]);
}

// Row-wise reductions over a fragment row: the 4 lanes of a row differ in lane bits 0 and 3.
inline float fa_row_max(float x) {
    x = max(x, simd_shuffle_xor(x, ushort(1)));
    return max(x, simd_shuffle_xor(x, ushort(8)));
}

inline float fa_row_sum(float x) {
    x += simd_shuffle_xor(x, ushort(1));
    return x + simd_shuffle_xor(x, ushort(8));
}

// Lengths and offsets of one sequence.
struct fa_seq {
    int sq;        // query rows
    int sk;        // keys it attends to
    int q_start;   // first packed q row (varlen), else 0
    int k_start;   // first packed k row (varlen), else 0
    int leftpad;   // key j is cache row leftpad + j
    int kv_batch;  // batch row of a dense k/v (cache_batch_idx)
};

// First packed row and row count of sequence b: from cu_seqlens in the varlen layout, else 0 and the dense length.
// Shared with the backward (fa_seq_qk_rows).
struct fa_seq_rows {
    int start;
    int count;
};

inline fa_seq_rows fa_seq_rows_of(bool varlen, device const int* cu_seqlens, int b, int dense_count) {
    fa_seq_rows r;
    r.start = varlen ? cu_seqlens[b] : 0;
    r.count = varlen ? cu_seqlens[b + 1] - r.start : dense_count;
    return r;
}

// Sequence b's q and k rows into S (fa_seq here, the backward's fa_bwd_seq): q_start, sq, k_start, and sk = every
// key row it owns (each caller applies seqused_k its own way). Flags and dense lengths are passed as values: the
// forward's and the backward's parameter structs both carry them.
template <typename S>
inline S fa_seq_qk_rows(uint flags, int seqlen_q, int seqlen_k, int b, device const int* cu_seqlens_q,
                        device const int* cu_seqlens_k) {
    const fa_seq_rows qr = fa_seq_rows_of((flags & FA_FLAG_VARLEN_Q) != 0, cu_seqlens_q, b, seqlen_q);
    const fa_seq_rows kr = fa_seq_rows_of((flags & FA_FLAG_VARLEN_K) != 0, cu_seqlens_k, b, seqlen_k);
    S s = {};
    s.q_start = qr.start;
    s.sq = qr.count;
    s.k_start = kr.start;
    s.sk = kr.count;
    return s;
}

inline fa_seq fa_seq_info(constant fa_fwd_params& p, int b, device const int* cu_seqlens_q,
                          device const int* cu_seqlens_k, device const int* seqused_k, device const int* leftpad_k,
                          device const int* cache_batch_idx) {
    fa_seq s = fa_seq_qk_rows<fa_seq>(p.flags, p.seqlen_q, p.seqlen_k, b, cu_seqlens_q, cu_seqlens_k);
    if (p.flags & FA_FLAG_SEQUSED_K) s.sk = seqused_k[b];
    s.leftpad = (p.flags & FA_FLAG_LEFTPAD_K) ? leftpad_k[b] : 0;
    s.kv_batch = (p.flags & FA_FLAG_CACHE_BATCH_IDX) ? cache_batch_idx[b] : b;
    return s;
}

// Where key j of a sequence lives: element offset = outer * batch_stride + row * row_stride (+ head).
struct fa_key_loc {
    fa_long outer;  // batch row (dense), page (paged), 0 (varlen)
    fa_long row;
};

inline fa_key_loc fa_locate_key(constant fa_fwd_params& p, thread const fa_seq& s, device const int* block_table,
                                int b, int j) {
    fa_key_loc loc;
    const int row = s.leftpad + j;
    if (p.flags & FA_FLAG_PAGED) {
        loc.outer = block_table[fa_long(b) * p.block_table_batch_stride + row / p.page_block_size];
        loc.row = row % p.page_block_size;
    } else if (p.flags & FA_FLAG_VARLEN_K) {
        loc.outer = 0;
        loc.row = fa_long(s.k_start) + row;
    } else {
        loc.outer = s.kv_batch;
        loc.row = row;
    }
    return loc;
}

constexpr int fa_pow2_floor(int x) { return x >= 256 ? 256 : x >= 128 ? 128 : x >= 64 ? 64 : x >= 32 ? 32 : 16; }

// Stage keys kb .. kb+BK-1 of K and V into threadgroup memory (row stride fa_tile_ld(BD)); zero past the last key
// and past the real head dim, so the fragments never need a bounds test. TPR consecutive threads cover one row
// (consecutive lanes read consecutive elements: coalesced device reads), and the page / batch lookup of a row is
// done once per row.
template <typename T, int BD, int BK, int NT>
inline void fa_load_kv_tile(threadgroup T* ks, threadgroup T* vs, device const T* k, device const T* v,
                            constant fa_fwd_params& p, thread const fa_seq& s, device const int* block_table, int b,
                            int hkv, int kb, ushort tid) {
    constexpr int LD = fa_tile_ld(BD);
    constexpr int TPR = fa_pow2_floor(NT < BD ? NT : BD);  // threads per row, divides NT
    constexpr int ROW_STEP = NT / TPR;                     // rows loaded per pass
    static_assert(NT % TPR == 0, "threads per row must divide the threadgroup");
    for (int j = tid / TPR; j < BK; j += ROW_STEP) {
        const int key = kb + j;
        const bool valid = key < s.sk;
        fa_long koff = 0;
        fa_long voff = 0;
        if (valid) {
            const fa_key_loc loc = fa_locate_key(p, s, block_table, b, key);
            koff = loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + fa_long(hkv) * p.k_head_stride;
            voff = loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + fa_long(hkv) * p.v_head_stride;
        }
        for (int d = tid % TPR; d < BD; d += TPR) {
            const bool in = valid && d < p.headdim;
            ks[j * LD + d] = in ? T(k[koff + d]) : T(0.0f);
            vs[j * LD + d] = in ? T(v[voff + d]) : T(0.0f);
        }
    }
}

// What one attention threadgroup works on (grid: row blocks of `rows_per_tg` packed rows, head blocks, batch x
// splits). Shared by the fragment and the vector kernels; uniform across the threadgroup.
struct fa_tg_rows {
    int batch;   // sequence
    int split;   // split-KV index (0 without splits)
    int hblock;  // head block: query heads hblock * pack .. + pack - 1
    fa_seq seq;
    int rows;    // packed rows of the sequence (query rows x pack)
    int m0;      // first packed row of the threadgroup; >= rows: nothing to do (varlen grids fit the longest)
    int nrows;   // packed rows it owns, when m0 < rows
};

inline fa_tg_rows fa_tg_rows_of(constant fa_fwd_params& p, uint3 tgid, int rows_per_tg, device const int* cu_seqlens_q,
                                device const int* cu_seqlens_k, device const int* seqused_k,
                                device const int* leftpad_k, device const int* cache_batch_idx) {
    fa_tg_rows t;
    t.batch = int(tgid.z) / p.num_splits;
    t.split = int(tgid.z) % p.num_splits;
    t.hblock = int(tgid.y);
    t.seq = fa_seq_info(p, t.batch, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, cache_batch_idx);
    t.rows = t.seq.sq * p.pack;
    t.m0 = int(tgid.x) * rows_per_tg;
    t.nrows = min(rows_per_tg, t.rows - t.m0);
    return t;
}

// The keys a threadgroup's rows visit: the sliding window of its first and last query row bounds them (bottom-right
// aligned, off = sk - sq), whole blocks of BK keys are visited, and with split-KV each split takes a contiguous run
// of those blocks.
struct fa_tg_keys {
    int off;             // sk - sq
    int i_lo, i_hi;      // first and last query row (unpacked) of the threadgroup
    int k_lo, k_hi;      // keys [k_lo, k_hi) some row may see; empty when k_lo >= k_hi
    int n_begin, n_end;  // key blocks [n_begin, n_end) of this split
};

template <int BK>
inline fa_tg_keys fa_tg_keys_of(constant fa_fwd_params& p, thread const fa_tg_rows& t) {
    fa_tg_keys r;
    r.off = t.seq.sk - t.seq.sq;
    r.i_lo = t.m0 / p.pack;
    r.i_hi = (t.m0 + t.nrows - 1) / p.pack;
    r.k_lo = int(fa_mask_key_lo(r.i_lo, t.seq.sq, t.seq.sk, p.window_left));
    r.k_hi = int(fa_mask_key_hi(r.i_hi, t.seq.sq, t.seq.sk, p.window_right));
    r.n_begin = 0;
    r.n_end = 0;
    if (r.k_lo < r.k_hi) {
        r.n_begin = r.k_lo / BK;
        r.n_end = (r.k_hi + BK - 1) / BK;
    }
    const int nsplit = p.num_splits;
    if (nsplit > 1) {  // flash-decoding: this split takes a contiguous run of the key blocks
        const int per = (r.n_end - r.n_begin + nsplit - 1) / nsplit;
        r.n_begin = min(r.n_end, r.n_begin + t.split * per);
        r.n_end = min(r.n_end, r.n_begin + per);
    }
    return r;
}

// ---- blocked accumulation (BLOCKED kernels, long key ranges; issue 17 item 8) ----
// The running row sum l and O take one fp32 addition per key tile, and each rounds: n additions give a relative error
// up to ~n * 2^-24 (constant terms round the same way every time; the sum stops absorbing at 2^26 of them). Split-KV
// bounds n per work item, but its partials cost splits x q rows x heads x (headdim + 1) fp32, which a long prefill
// cannot afford (csrc/plan/fa_plan_forward.cpp, forced_partial_budget). The BLOCKED kernels instead restart (m, l, O)
// every p.acc_block_tiles key tiles and merge each finished block into an outer (m, l, O) through its max, as the
// split merge does through the LSE: about sqrt(tiles) additions at each level (the plan picks the block), in
// registers, no extra memory.
template <int NDF>
inline void fa_fold_block(thread fa_frag* o_out, thread float& m_out, thread float& l_out, thread fa_frag* o_run,
                          thread float& m_run, thread float& l_run) {
    if (m_run != FA_MASKED) {  // the block saw a key (m_run is uniform across the 4 lanes of a row)
        const float mn = max(m_out, m_run);
        const float f_out = (m_out == FA_MASKED) ? 0.0f : exp2(m_out - mn);  // exponents <= 0: fast-math safe
        const float f_run = exp2(m_run - mn);
        l_out = l_out * f_out + l_run * f_run;
        for (int d = 0; d < NDF; ++d) {
            for (int e = 0; e < 2; ++e)
                o_out[d].thread_elements()[e] = o_out[d].thread_elements()[e] * f_out + o_run[d].thread_elements()[e] * f_run;
        }
        m_out = mn;
    }
    for (int d = 0; d < NDF; ++d) o_run[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    m_run = FA_MASKED;
    l_run = 0.0f;
}

// Does query i of sequence s see key j? (fa_mask.h)
inline bool fa_visible(constant fa_fwd_params& p, thread const fa_seq& s, int i, int j) {
    return fa_mask_visible(i, j, s.sq, s.sk, p.window_left, p.window_right);
}

// The kernel. T: element type; BD: head dim of the specialization; BQ = 8 * NSG query rows; BK keys per tile.
// BLOCKED: accumulate in blocks of p.acc_block_tiles key tiles (fa_fold_block), for key ranges the plan cannot split
// enough; a separate specialization so that the outer accumulator costs no registers in every other call.
template <typename T, int BD, int BQ, int BK, int NSG, bool BLOCKED = false>
[[kernel]] void fa_attention(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                             device const T* v [[buffer(2)]], device T* out [[buffer(3)]],
                             device float* lse [[buffer(4)]], device const float* alibi [[buffer(5)]],
                             device const int* cu_seqlens_q [[buffer(6)]], device const int* cu_seqlens_k [[buffer(7)]],
                             device const int* seqused_k [[buffer(8)]], device const int* leftpad_k [[buffer(9)]],
                             device const int* cache_batch_idx [[buffer(10)]],
                             device const int* block_table [[buffer(11)]], device float* o_partial [[buffer(12)]],
                             device float* lse_partial [[buffer(13)]], constant fa_fwd_params& p [[buffer(15)]],
                             uint3 tgid [[threadgroup_position_in_grid]],
                             ushort sg [[simdgroup_index_in_threadgroup]],
                             ushort lane [[thread_index_in_simdgroup]],
                             ushort tid [[thread_index_in_threadgroup]]) {
    static_assert(BQ == 8 * NSG, "each simdgroup owns 8 query rows");
    static_assert(BD % 8 == 0 && BK % 8 == 0, "tiles are made of 8x8 fragments");
    constexpr int NT = NSG * FA_SIMD_WIDTH;
    constexpr int LD = fa_tile_ld(BD);
    constexpr int NKF = BK / 8;  // fragments across a key tile
    constexpr int NDF = BD / 8;  // fragments across the head dim

    threadgroup T ks[BK * LD];
    threadgroup T vs[BK * LD];

    // ---- which rows and keys this threadgroup owns (uniform across the threadgroup) ----
    const fa_tg_rows tg = fa_tg_rows_of(p, tgid, BQ, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, cache_batch_idx);
    if (tg.m0 >= tg.rows) return;  // varlen grids are sized for the longest sequence: the whole threadgroup leaves
    const fa_tg_keys tk = fa_tg_keys_of<BK>(p, tg);
    const int b = tg.batch, split = tg.split, hblock = tg.hblock, rows = tg.rows, m0 = tg.m0;
    const fa_seq s = tg.seq;
    const int off = tk.off, i_lo = tk.i_lo, i_hi = tk.i_hi, n_begin = tk.n_begin, n_end = tk.n_end;

    // ---- this lane's query row ----
    const fa_lane_pos pos = fa_frag_pos(lane);
    const int m = m0 + int(sg) * 8 + pos.row;
    const bool row_valid = m < rows;
    const int i = row_valid ? m / p.pack : i_lo;
    const int hq = hblock * p.pack + (row_valid ? m % p.pack : 0);
    const int hkv = (hblock * p.pack) / p.group;
    const int row_klo = int(fa_mask_key_lo(i, s.sq, s.sk, p.window_left));  // keys [row_klo, row_khi) are visible
    const int row_khi = int(fa_mask_key_hi(i, s.sq, s.sk, p.window_right));

    // Q rows -> registers, scaled.
    fa_frag qf[NDF];
    {
        const fa_long qrow = (p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) * p.q_row_stride
                                                          : fa_long(b) * p.q_batch_stride + fa_long(i) * p.q_row_stride;
        const fa_long qoff = qrow + fa_long(hq) * p.q_head_stride;
        for (int kd = 0; kd < NDF; ++kd) {
            for (int e = 0; e < 2; ++e) {
                const int col = kd * 8 + pos.col + e;
                const float x = (row_valid && col < p.headdim) ? float(q[qoff + col]) : 0.0f;
                qf[kd].thread_elements()[e] = x * p.q_scale;
            }
        }
    }

    fa_frag of[NDF];
    for (int d = 0; d < NDF; ++d) of[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    float m_run = FA_MASKED;  // running row max (base-2 units); FA_MASKED = no visible key yet
    float l_run = 0.0f;       // running row sum of exp2(s - m_run), before dropout
    fa_frag o_out[BLOCKED ? NDF : 1];  // BLOCKED: the finished blocks' (m, l, O), merged by fa_fold_block
    for (int d = 0; d < (BLOCKED ? NDF : 1); ++d) o_out[d] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    float m_out = FA_MASKED;
    float l_out = 0.0f;
    int block_tiles = 0;

    const bool has_alibi = (p.flags & FA_FLAG_ALIBI) != 0;
    const float slope_log2 = has_alibi ? alibi[fa_long(b) * p.alibi_batch_stride + hq] * FA_LOG2E : 0.0f;
    const bool has_softcap = p.softcap_inv > 0.0f;
    const bool has_dropout = (p.flags & FA_FLAG_DROPOUT) != 0;
    const uint bh = uint(b * p.nheads_q + hq);

    for (int n = n_begin; n < n_end; ++n) {
        const int kb = n * BK;
        fa_load_kv_tile<T, BD, BK, NT>(ks, vs, k, v, p, s, block_table, b, hkv, kb, tid);
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // S = Q K^T
        fa_frag sf[NKF];
        for (int j = 0; j < NKF; ++j) sf[j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        for (int kd = 0; kd < NDF; ++kd) {
            for (int j = 0; j < NKF; ++j) {
                fa_frag kt;
                fa_load_frag_t(kt, ks + j * 8 * LD + kd * 8, LD, pos);
                simdgroup_multiply_accumulate(sf[j], qf[kd], kt, sf[j]);
            }
        }

        // Scores: softcap, ALiBi, and the mask only where the tile crosses a mask edge or the end of the keys.
        const bool boundary = !fa_mask_block_full(i_lo, i_hi, kb, fa_long(kb) + BK, s.sq, s.sk, p.window_left,
                                                  p.window_right);
        float tile_max = FA_MASKED;
        for (int j = 0; j < NKF; ++j) {
            for (int e = 0; e < 2; ++e) {
                const int key = kb + j * 8 + pos.col + e;
                float x = sf[j].thread_elements()[e];
                if (has_softcap) x = p.softcap_log2 * fa_tanh(x * p.softcap_inv);
                if (has_alibi) x -= slope_log2 * abs(float(i + off - key));
                if (boundary && (key < row_klo || key >= row_khi)) x = FA_MASKED;
                sf[j].thread_elements()[e] = x;
                tile_max = max(tile_max, x);
            }
        }

        // Online softmax: new max, rescale factor, probabilities (dropped ones zeroed after the sum), new sum.
        const float m_new = max(m_run, fa_row_max(tile_max));
        const float factor = (m_run == FA_MASKED) ? 0.0f : exp2(m_run - m_new);
        float tile_sum = 0.0f;
        for (int j = 0; j < NKF; ++j) {
            for (int e = 0; e < 2; ++e) {
                const float x = sf[j].thread_elements()[e];
                float pr = (x == FA_MASKED) ? 0.0f : exp2(x - m_new);
                tile_sum += pr;
                if (has_dropout) {
                    const uint key = uint(kb + j * 8 + pos.col + e);
                    const bool keep = fa_dropout_keep(p.dropout_seed, p.dropout_offset, bh, uint(i), key,
                                                      p.dropout_threshold);
                    pr = keep ? pr * p.dropout_scale : 0.0f;
                }
                sf[j].thread_elements()[e] = pr;
            }
        }
        l_run = l_run * factor + fa_row_sum(tile_sum);
        m_run = m_new;

        // O = O * factor + P V, the tile's P V summed on its own first: O takes one fp32 addition per tile (not one
        // per key, as accumulating every product into O would), which is what the plan's accuracy bound counts
        // (kMaxAccumulatorAddsPerSplit in csrc/plan/fa_plan_forward.cpp).
        for (int d = 0; d < NDF; ++d) {
            fa_frag pv = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
            for (int j = 0; j < NKF; ++j) {
                fa_frag vf;
                fa_load_frag(vf, vs + j * 8 * LD + d * 8, LD, pos);
                simdgroup_multiply_accumulate(pv, sf[j], vf, pv);
            }
            for (int e = 0; e < 2; ++e)
                of[d].thread_elements()[e] = of[d].thread_elements()[e] * factor + pv.thread_elements()[e];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the next tile overwrites ks / vs
        if (BLOCKED && ++block_tiles == p.acc_block_tiles) {
            fa_fold_block<NDF>(o_out, m_out, l_out, of, m_run, l_run);
            block_tiles = 0;
        }
    }
    if (BLOCKED) {  // the last block, then the outer sums take the running ones' place
        fa_fold_block<NDF>(o_out, m_out, l_out, of, m_run, l_run);
        for (int d = 0; d < NDF; ++d) of[d] = o_out[(BLOCKED ? d : 0)];
        m_run = m_out;
        l_run = l_out;
    }

    // ---- epilogue: one normalisation, then O and the LSE ----
    if (!row_valid) return;  // no barrier or simd function follows
    const bool has_key = m_run != FA_MASKED;
    const float inv_l = (has_key && l_run > 0.0f) ? 1.0f / l_run : 0.0f;
    const bool lse_lane = (lane & 9) == 0;  // one of the 4 lanes that share a row
    if (p.flags & FA_FLAG_SPLIT) {
        const fa_long prow = (p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) : fa_long(b) * p.seqlen_q + i;
        const fa_long slab = (fa_long(split) * p.nheads_q + hq) * p.partial_rows + prow;
        device float* orow = o_partial + slab * p.headdim;
        for (int d = 0; d < NDF; ++d) {
            for (int e = 0; e < 2; ++e) {
                const int col = d * 8 + pos.col + e;
                if (col < p.headdim) orow[col] = of[d].thread_elements()[e] * inv_l;
            }
        }
        if (lse_lane) lse_partial[slab] = has_key ? (m_run + log2(l_run)) * FA_LN2 : FA_MASKED;
        return;
    }
    const fa_long orow_off = ((p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) * p.o_row_stride
                                                           : fa_long(b) * p.o_batch_stride + fa_long(i) * p.o_row_stride) +
                             fa_long(hq) * p.o_head_stride;
    for (int d = 0; d < NDF; ++d) {
        for (int e = 0; e < 2; ++e) {
            const int col = d * 8 + pos.col + e;
            if (col < p.headdim) out[orow_off + col] = T(of[d].thread_elements()[e] * inv_l);
        }
    }
    if ((p.flags & FA_FLAG_LSE) && lse_lane) {
        const fa_long loff = ((p.flags & FA_FLAG_VARLEN_Q) ? fa_long(s.q_start + i) * p.lse_row_stride
                                                           : fa_long(b) * p.lse_batch_stride + fa_long(i) * p.lse_row_stride) +
                             fa_long(hq) * p.lse_head_stride;
        lse[loff] = has_key ? (m_run + log2(l_run)) * FA_LN2 : as_type<float>(uint(FA_INF_BITS));
    }
}

#endif  // FA_FORWARD_H
