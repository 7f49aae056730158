// fa_tiles.h - THE tile table: which specialization serves a head dim and with which tile sizes.
// Read by the kernels (template arguments of the instantiations) and by the dispatch plan (csrc/plan), so the grid
// the plan computes always matches the tiles the kernel was compiled with. Valid MSL and C++; no includes.
//
// Where the numbers come from (public sources, studied not copied):
// - MLX steel attention (mlx/backend/metal/kernels/steel/attn/kernels/steel_attention.metal) instantiates
//   BQ=32 query rows x BK=32 keys for head dims 64 and 80, BK=16 for head dim 128, with 4 simdgroups (WM=4, WN=1),
//   i.e. each simdgroup owns 8 query rows; its decode path (sdpa_vector) is a separate kernel for q length <= 8.
// - metal-flash-attention keeps BQ=32 (M1/M2) or 16 (M3/M4) with long key blocks (128) for fp16 forward; we keep
//   MLX's shorter key tiles because our K and V tiles both sit in threadgroup memory at once (2 * BK * LD elements).
// Our rules: BQ = 8 * simdgroups; BK = 32 up to head dim 96, 16 above (MLX); halve BK until the K+V tiles fit in
// 32 KiB of threadgroup memory (fp32 at head dim 256). Tile rows are padded by FA_TILE_PAD elements so the 8 rows a
// simdgroup reads for one 8x8 fragment start in different memory banks.
#ifndef FA_TILES_H
#define FA_TILES_H

#define FA_SIMD_WIDTH 32
// Bytes of threadgroup memory per threadgroup on Apple GPUs (maxThreadgroupMemoryLength).
#define FA_TG_MEMORY_LIMIT 32768
#define FA_TILE_PAD 8             // elements of padding per K/V tile row

// The head dims with a compiled specialization; any head dim 1..256 runs on the next larger one (zero padding in the
// kernel, no host copies).
#define FA_NUM_BUCKETS 5
constexpr int fa_bucket_headdim(int d) { return d <= 64 ? 64 : d <= 80 ? 80 : d <= 96 ? 96 : d <= 128 ? 128 : 256; }

constexpr int fa_tile_ld(int bd) { return bd + FA_TILE_PAD; }
constexpr int fa_kv_tile_bytes(int bk, int bd, int elem_bytes) { return 2 * bk * fa_tile_ld(bd) * elem_bytes; }
// Largest of pref, pref/2, pref/4 whose K+V tiles fit in threadgroup memory.
constexpr int fa_fit_bk(int pref, int bd, int elem_bytes) {
    return fa_kv_tile_bytes(pref, bd, elem_bytes) <= FA_TG_MEMORY_LIMIT       ? pref
           : fa_kv_tile_bytes(pref / 2, bd, elem_bytes) <= FA_TG_MEMORY_LIMIT ? pref / 2
                                                                              : pref / 4;
}

// Prefill / general forward: 4 simdgroups x 8 query rows.
#define FA_FWD_SIMDGROUPS 4
#define FA_FWD_BQ (8 * FA_FWD_SIMDGROUPS)
constexpr int fa_fwd_bk(int bd, int elem_bytes) { return fa_fit_bk(bd <= 96 ? 32 : 16, bd, elem_bytes); }

// Fragment decode (5..8 packed rows: short queries x GQA groups; split-KV): one simdgroup, 8 rows, 32-key tiles.
#define FA_DEC_SIMDGROUPS 1
#define FA_DEC_BQ (8 * FA_DEC_SIMDGROUPS)
constexpr int fa_dec_bk(int bd, int elem_bytes) { return fa_fit_bk(32, bd, elem_bytes); }

// Vector decode (fa_decode_vec.h): one threadgroup serves at most FA_VEC_ROWS packed rows (query, head of one KV
// group) against the keys of its split; each of its FA_VEC_SIMDGROUPS simdgroups walks every FA_VEC_SIMDGROUPS-th
// key. Each lane holds fa_vec_span(BD) / 32 columns of every row's q and O in registers; a key's row of K (and of V)
// is read once per simdgroup, as fa_vec_chunks(BD) vector loads of fa_vec_width(BD) elements per lane, and serves
// all the rows. FA_VEC_BK only sets the granularity of the split-KV partition (splits take runs of 32-key blocks,
// as the fragment kernel's splits take runs of key tiles); the vector kernel has no key tile in memory.
#define FA_VEC_SIMDGROUPS 8
#define FA_VEC_ROWS 4  // most rows of the vector kernel
#define FA_VEC_BK 32
// Two variants, because a lane's q and O registers are sized for the compiled row count whatever the call uses:
// fa_vec1_* for one row (plain decode without GQA: the commonest call keeps the smallest register footprint, hence
// the best occupancy) and fa_vec4_* for 2..4 rows (GQA groups of 2-4 heads, or 2-4 query tokens).
constexpr int fa_vec_rows(int rows) { return rows <= 1 ? 1 : FA_VEC_ROWS; }
// Elements per vector load: 4 when 128 | BD (one half4/bfloat4/float4 per lane per chunk), 2 for 64, 1 for 80 / 96
// (96 = 3 x 32: no vector width tiles it; d80 runs with the d96 layout, its last 16 columns zero).
constexpr int fa_vec_width(int bd) { return bd % 128 == 0 ? 4 : bd % 64 == 0 ? 2 : 1; }
constexpr int fa_vec_chunks(int bd) { return (bd + 32 * fa_vec_width(bd) - 1) / (32 * fa_vec_width(bd)); }
constexpr int fa_vec_span(int bd) { return 32 * fa_vec_width(bd) * fa_vec_chunks(bd); }  // columns a simdgroup holds
// Threadgroup memory: each simdgroup's partial O row (fp32) and its running max and sum, combined at the end.
constexpr int fa_vec_tg_bytes(int bd) { return (FA_VEC_SIMDGROUPS * fa_vec_span(bd) + 2 * FA_VEC_SIMDGROUPS) * 4; }

// Which kernel serves a launch (csrc/plan/fa_plan_forward.cpp applies this; `rows` = seqlen_q x pack, the packed rows
// of one head block):
//   rows <= FA_VEC_ROWS  -> vector decode (fa_vec1_* for 1 row, fa_vec4_* for 2..4)
//   rows <= FA_DEC_BQ    -> 8-row fragment decode (fa_dec_*)
//   otherwise            -> prefill (fa_fwd_*)
// Why 4: decode streams K/V once per KV head and does little arithmetic per byte, so the kernel that issues the fewest
// load instructions per key wins while the ALU keeps up. The fragment kernel stages each 32-key tile through
// threadgroup memory with scalar loads and fills rows / 8 of its 8x8 products: at rows = 1 (plain decode, the
// commonest call) 7/8 of its multiply work and all its loads serve nothing else. The vector kernel reads each K and V
// row with BD / (32 x width) vector loads per lane and spends per key and row BD/32 FMAs, one simd_sum and an exp2,
// plus BD/32 FMAs for O; its registers grow with the rows (q and O: 2 x rows x BD/32 floats per lane, 64 at d256
// with 4 rows). Up to 4 rows that stays well below the memory time of a key (2 x BD x element bytes) on M-series
// GPUs; from 5 rows the fragment kernel's products are at least 5/8 used and its register use does not grow.
// GQA: the rows of a threadgroup are the heads of one KV group (packed as in the fragment kernel), so a group of up
// to 4 heads (Llama-3-8B, Mistral: 32 query / 8 KV heads) reads each K/V row once for all its heads.

// Merge of split-KV partials, KV-cache append and the attn_probs debug kernel: threads per threadgroup.
#define FA_MERGE_THREADS 64
#define FA_APPEND_THREADS 64
#define FA_PROBS_THREADS 64  // debug attn_probs kernel

#endif  // FA_TILES_H
