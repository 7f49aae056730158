// fa_decode_vec.h - vector decode: a few query rows per head against a long key cache (token-by-token generation).
//
// Instantiated as fa_vec1_<dtype>_d<BD> (R = 1 row, fa_decode_vec1.metal) and fa_vec4_<dtype>_d<BD> (R = 4 rows,
// fa_decode_vec.metal); the plan picks them when a head block has 1, resp. 2..4, packed rows (fa_tiles.h explains the
// rule). Same buffers, constants and grid layout as fa_attention (fa_forward.h), with BQ = R: grid (row blocks, head
// blocks, batch * num_splits), so the plan, the split partials and the merge kernel (fa_merge.h) are shared with the
// fragment kernels.
//
// Work split. One threadgroup = FA_VEC_SIMDGROUPS simdgroups serving up to R rows (query i, head g of one KV
// group; packed as in fa_attention). Simdgroup sg takes keys key_begin + sg, + NSG, ... of its split, one key per
// step: its 32 lanes each load fa_vec_span(BD) / 32 columns of that key's K row (vector loads when the plan sets
// FA_FLAG_KV_ALIGNED), form the partial dot products with the rows' q (kept in registers, scaled), and one simd_sum per
// row gives the score on every lane. The score being uniform across the simdgroup, the online softmax (base 2) is
// scalar per row and its branches are uniform: O (registers, same columns as q) is rescaled only when a row's max
// grows, then O += p * v. The key's V row is loaded together with its K row, and both for the simdgroup's next key
// before this key's math (a GPU waits for a load only at its first use), so one memory latency overlaps one step.
// No threadgroup memory or barrier in the key loop.
// At the end the simdgroups' (max, sum, O) are combined through threadgroup memory, row by row, one column per
// thread: O = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s.
//
// Masks, ALiBi, softcap, dropout, seqused_k / leftpad / cache_batch_idx / paged caches / varlen: as fa_attention, per
// (row, key), using its helpers. The key range of the threadgroup is the union of its rows' windows, computed up
// front; keys outside a row's own window are skipped for that row (uniform branch, no score is written).
// No inf/NaN arithmetic (fast math): the running max starts at the finite FA_MASKED and "row saw no key" is that
// value, tested explicitly; a row without keys writes zeros and LSE +inf as a bit pattern (FA_MASKED in a partial).
#ifndef FA_DECODE_VEC_H
#define FA_DECODE_VEC_H

#include "fa_forward.h"
#include "fa_kernel_params.h"
#include "fa_philox.h"
#include "fa_tiles.h"

// V consecutive elements (V = fa_vec_width) as floats, from an address aligned to V elements: one vector load.
template <typename T, int V>
struct fa_vec_io {
    static inline void load(device const T* src, thread float* dst) {
        const vec<T, V> x = *reinterpret_cast<device const vec<T, V>*>(src);
        for (int e = 0; e < V; ++e) dst[e] = float(x[e]);
    }
};

// Width 1 is a scalar (MSL has no 1-element vector).
template <typename T>
struct fa_vec_io<T, 1> {
    static inline void load(device const T* src, thread float* dst) { dst[0] = float(src[0]); }
};

// This lane's columns of one K or V row (row starts at element `off` of `base`): chunk c holds columns
// c * 32 * V + lane * V .. + V - 1, so each chunk is one contiguous 32 x V run across the simdgroup. Columns at or past
// headdim read as zero. `aligned` (FA_FLAG_KV_ALIGNED) guarantees headdim % V == 0 and a V-aligned address, so a
// chunk is wholly inside or wholly past the row and loads as one vector.
template <typename T, int C, int V>
inline void fa_vec_load_row(device const T* base, fa_long off, int headdim, bool aligned, ushort lane,
                            thread float* dst) {
    for (int c = 0; c < C; ++c) {
        const int d0 = c * 32 * V + int(lane) * V;
        if (aligned && d0 < headdim) {
            fa_vec_io<T, V>::load(base + off + d0, dst + c * V);
        } else {
            for (int e = 0; e < V; ++e) dst[c * V + e] = (d0 + e < headdim) ? float(base[off + d0 + e]) : 0.0f;
        }
    }
}

// Column of element e of this lane (inverse of the chunk layout above).
template <int V>
inline int fa_vec_col(int e, ushort lane) {
    return (e / V) * 32 * V + int(lane) * V + e % V;
}

// K and V rows of key `key` of the sequence (page / batch / varlen lookup once for both).
template <typename T, int C, int V>
inline void fa_vec_load_kv(device const T* k, device const T* v, constant fa_fwd_params& p, thread const fa_seq& s,
                           device const int* block_table, int b, int key, fa_long k_head, fa_long v_head,
                           bool aligned, ushort lane, thread float* kx, thread float* vx) {
    const fa_key_loc loc = fa_locate_key(p, s, block_table, b, key);
    fa_vec_load_row<T, C, V>(k, loc.outer * p.k_batch_stride + loc.row * p.k_row_stride + k_head, p.headdim, aligned,
                             lane, kx);
    fa_vec_load_row<T, C, V>(v, loc.outer * p.v_batch_stride + loc.row * p.v_row_stride + v_head, p.headdim, aligned,
                             lane, vx);
}

template <typename T, int BD, int R>
[[kernel]] void fa_decode_vec(device const T* q [[buffer(0)]], device const T* k [[buffer(1)]],
                              device const T* v [[buffer(2)]], device T* out [[buffer(3)]],
                              device float* lse [[buffer(4)]], device const float* alibi [[buffer(5)]],
                              device const int* cu_seqlens_q [[buffer(6)]],
                              device const int* cu_seqlens_k [[buffer(7)]], device const int* seqused_k [[buffer(8)]],
                              device const int* leftpad_k [[buffer(9)]],
                              device const int* cache_batch_idx [[buffer(10)]],
                              device const int* block_table [[buffer(11)]], device float* o_partial [[buffer(12)]],
                              device float* lse_partial [[buffer(13)]], constant fa_fwd_params& p [[buffer(15)]],
                              uint3 tgid [[threadgroup_position_in_grid]],
                              ushort sg [[simdgroup_index_in_threadgroup]],
                              ushort lane [[thread_index_in_simdgroup]],
                              ushort tid [[thread_index_in_threadgroup]]) {
    constexpr int NSG = FA_VEC_SIMDGROUPS;
    constexpr int NT = NSG * FA_SIMD_WIDTH;
    constexpr int V = fa_vec_width(BD);
    constexpr int C = fa_vec_chunks(BD);
    constexpr int E = C * V;                // columns per lane
    constexpr int SPAN = fa_vec_span(BD);   // = 32 * E >= BD
    constexpr int BK = FA_VEC_BK;
    static_assert(SPAN == 32 * E && SPAN >= BD, "the lanes cover every column");
    static_assert(R >= 1 && R <= FA_VEC_ROWS, "rows per threadgroup");

    threadgroup float part_o[NSG * SPAN];  // one row's partial O per simdgroup (combine step)
    threadgroup float part_m[NSG];
    threadgroup float part_l[NSG];

    // ---- rows and keys of this threadgroup (uniform) ----
    const fa_tg_rows tg = fa_tg_rows_of(p, tgid, R, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, cache_batch_idx);
    if (tg.m0 >= tg.rows) return;  // varlen grids are sized for the longest sequence: the whole threadgroup leaves
    const fa_tg_keys tk = fa_tg_keys_of<BK>(p, tg);
    const int b = tg.batch, split = tg.split, hblock = tg.hblock, m0 = tg.m0, nrows = tg.nrows;
    const fa_seq s = tg.seq;
    const int off = tk.off, k_lo = tk.k_lo, k_hi = tk.k_hi, n_begin = tk.n_begin, n_end = tk.n_end;
    const int key_begin = max(k_lo, n_begin * BK);
    const int key_end = min(k_hi, n_end * BK);
    const int hkv = (hblock * p.pack) / p.group;

    // ---- the rows: q (scaled) and O in registers ----
    const bool varlen_q = (p.flags & FA_FLAG_VARLEN_Q) != 0;
    const bool has_alibi = (p.flags & FA_FLAG_ALIBI) != 0;
    const bool has_softcap = p.softcap_inv > 0.0f;
    const bool has_dropout = (p.flags & FA_FLAG_DROPOUT) != 0;
    int row_i[R];
    int row_hq[R];
    float slope_log2[R];
    float qr[R][E];
    float o[R][E];
    float m_run[R];
    float l_run[R];
    for (int r = 0; r < R; ++r) {
        const int m = m0 + min(r, nrows - 1);  // rows past nrows repeat the last one and are never used
        row_i[r] = m / p.pack;
        row_hq[r] = hblock * p.pack + m % p.pack;
        slope_log2[r] = has_alibi ? alibi[fa_long(b) * p.alibi_batch_stride + row_hq[r]] * FA_LOG2E : 0.0f;
        const fa_long qoff = (varlen_q ? fa_long(s.q_start + row_i[r]) * p.q_row_stride
                                       : fa_long(b) * p.q_batch_stride + fa_long(row_i[r]) * p.q_row_stride) +
                             fa_long(row_hq[r]) * p.q_head_stride;
        for (int e = 0; e < E; ++e) {
            const int col = fa_vec_col<V>(e, lane);
            qr[r][e] = col < p.headdim ? float(q[qoff + col]) * p.q_scale : 0.0f;
            o[r][e] = 0.0f;
        }
        m_run[r] = FA_MASKED;
        l_run[r] = 0.0f;
    }

    // ---- key loop: one key per simdgroup step, the next key's K and V loads issued before this key's math ----
    const bool aligned = (p.flags & FA_FLAG_KV_ALIGNED) != 0;
    const fa_long k_head = fa_long(hkv) * p.k_head_stride;
    const fa_long v_head = fa_long(hkv) * p.v_head_stride;
    float kx[E];  // K and V rows of the key being loaded (the next one while a key is scored)
    float vx[E];
    int key = key_begin + int(sg);
    if (key < key_end) fa_vec_load_kv<T, C, V>(k, v, p, s, block_table, b, key, k_head, v_head, aligned, lane, kx, vx);
    for (; key < key_end; key += NSG) {
        float kc[E];
        float vc[E];
        for (int e = 0; e < E; ++e) {
            kc[e] = kx[e];
            vc[e] = vx[e];
        }
        if (key + NSG < key_end)  // uniform; a GPU stalls on a load only at its first use, so these fly meanwhile
            fa_vec_load_kv<T, C, V>(k, v, p, s, block_table, b, key + NSG, k_head, v_head, aligned, lane, kx, vx);
        for (int r = 0; r < R; ++r) {
            if (r >= nrows) continue;  // uniform
            float part = 0.0f;
            for (int e = 0; e < E; ++e) part = fma(qr[r][e], kc[e], part);
            float x = simd_sum(part);
            if (!fa_visible(p, s, row_i[r], key)) continue;  // uniform: same key and row on every lane
            if (has_softcap) x = p.softcap_log2 * fa_tanh(x * p.softcap_inv);
            if (has_alibi) x -= slope_log2[r] * abs(float(row_i[r] + off - key));
            if (x > m_run[r]) {  // the max grows: rescale (a row's first key has nothing to rescale)
                const float factor = (m_run[r] == FA_MASKED) ? 0.0f : exp2(m_run[r] - x);
                l_run[r] *= factor;
                for (int e = 0; e < E; ++e) o[r][e] *= factor;
                m_run[r] = x;
            }
            float pe = exp2(x - m_run[r]);
            l_run[r] += pe;  // the normaliser counts dropped probabilities too
            if (has_dropout) {
                const bool keep = fa_dropout_keep(p.dropout_seed, p.dropout_offset,
                                                  uint(b * p.nheads_q + row_hq[r]), uint(row_i[r]), uint(key),
                                                  p.dropout_threshold);
                pe = keep ? pe * p.dropout_scale : 0.0f;
            }
            for (int e = 0; e < E; ++e) o[r][e] = fma(pe, vc[e], o[r][e]);
        }
    }

    // ---- combine the simdgroups, row by row; one column per thread ----
    const bool split_out = (p.flags & FA_FLAG_SPLIT) != 0;
    for (int r = 0; r < R; ++r) {
        if (r >= nrows) break;  // uniform across the threadgroup
        if (lane == 0) {
            part_m[sg] = m_run[r];
            part_l[sg] = l_run[r];
        }
        for (int e = 0; e < E; ++e) part_o[int(sg) * SPAN + fa_vec_col<V>(e, lane)] = o[r][e];
        threadgroup_barrier(mem_flags::mem_threadgroup);

        float mx = FA_MASKED;
        for (int g = 0; g < NSG; ++g) mx = max(mx, part_m[g]);
        const bool has_key = mx != FA_MASKED;
        float w[NSG];
        float lsum = 0.0f;
        for (int g = 0; g < NSG; ++g) {
            w[g] = (part_m[g] == FA_MASKED) ? 0.0f : exp2(part_m[g] - mx);
            lsum += w[g] * part_l[g];
        }
        const float inv_l = (has_key && lsum > 0.0f) ? 1.0f / lsum : 0.0f;
        const int i = row_i[r];
        const int hq = row_hq[r];
        if (split_out) {
            const fa_long prow = varlen_q ? fa_long(s.q_start + i) : fa_long(b) * p.seqlen_q + i;
            const fa_long slab = (fa_long(split) * p.nheads_q + hq) * p.partial_rows + prow;
            for (int d = tid; d < p.headdim; d += NT) {
                float acc = 0.0f;
                for (int g = 0; g < NSG; ++g) acc = fma(w[g], part_o[g * SPAN + d], acc);
                o_partial[slab * p.headdim + d] = acc * inv_l;
            }
            if (tid == 0) lse_partial[slab] = has_key ? (mx + log2(lsum)) * FA_LN2 : FA_MASKED;
        } else {
            const fa_long orow = (varlen_q ? fa_long(s.q_start + i) * p.o_row_stride
                                           : fa_long(b) * p.o_batch_stride + fa_long(i) * p.o_row_stride) +
                                 fa_long(hq) * p.o_head_stride;
            for (int d = tid; d < p.headdim; d += NT) {
                float acc = 0.0f;
                for (int g = 0; g < NSG; ++g) acc = fma(w[g], part_o[g * SPAN + d], acc);
                out[orow + d] = T(acc * inv_l);
            }
            if ((p.flags & FA_FLAG_LSE) && tid == 0) {
                const fa_long loff = (varlen_q ? fa_long(s.q_start + i) * p.lse_row_stride
                                               : fa_long(b) * p.lse_batch_stride + fa_long(i) * p.lse_row_stride) +
                                     fa_long(hq) * p.lse_head_stride;
                lse[loff] = has_key ? (mx + log2(lsum)) * FA_LN2 : as_type<float>(uint(FA_INF_BITS));
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the next row overwrites part_*
    }
}

#endif  // FA_DECODE_VEC_H
