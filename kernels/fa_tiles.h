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

// Decode (short queries, packed GQA rows <= 8, split-KV): one simdgroup, 8 query rows, 32-key tiles.
#define FA_DEC_SIMDGROUPS 1
#define FA_DEC_BQ (8 * FA_DEC_SIMDGROUPS)
constexpr int fa_dec_bk(int bd, int elem_bytes) { return fa_fit_bk(32, bd, elem_bytes); }

// Merge of split-KV partials, KV-cache append and the attn_probs debug kernel: threads per threadgroup.
#define FA_MERGE_THREADS 64
#define FA_APPEND_THREADS 64
#define FA_PROBS_THREADS 64  // debug attn_probs kernel

#endif  // FA_TILES_H
