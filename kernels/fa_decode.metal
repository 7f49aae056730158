// fa_decode.metal - short-query specializations fa_dec_<dtype>_d<head dim> (one simdgroup, 8 packed query rows,
// split-KV partials when the plan splits) and the merge kernels fa_merge_<dtype> that combine the splits.
// Bodies: fa_forward.h, fa_merge.h. Tiles: fa_tiles.h.
#include <metal_stdlib>
using namespace metal;

#include "fa_forward.h"
#include "fa_merge.h"

#define FA_DEC_KERNEL(T, BD) fa_attention<T, BD, FA_DEC_BQ, fa_dec_bk(BD, sizeof(T)), FA_DEC_SIMDGROUPS>
#define FA_INSTANTIATE_DEC(tname, T, BD) \
    template [[host_name("fa_dec_" #tname "_d" #BD)]] [[kernel]] decltype(FA_DEC_KERNEL(T, BD)) FA_DEC_KERNEL(T, BD);

#define FA_INSTANTIATE_DEC_DIMS(tname, T) \
    FA_INSTANTIATE_DEC(tname, T, 64)      \
    FA_INSTANTIATE_DEC(tname, T, 80)      \
    FA_INSTANTIATE_DEC(tname, T, 96)      \
    FA_INSTANTIATE_DEC(tname, T, 128)     \
    FA_INSTANTIATE_DEC(tname, T, 256)

FA_INSTANTIATE_DEC_DIMS(f16, half)
FA_INSTANTIATE_DEC_DIMS(bf16, bfloat)
FA_INSTANTIATE_DEC_DIMS(f32, float)

#define FA_INSTANTIATE_MERGE(tname, T) \
    template [[host_name("fa_merge_" #tname)]] [[kernel]] decltype(fa_merge_splits<T>) fa_merge_splits<T>;

FA_INSTANTIATE_MERGE(f16, half)
FA_INSTANTIATE_MERGE(bf16, bfloat)
FA_INSTANTIATE_MERGE(f32, float)
