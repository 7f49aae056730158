// fa_forward.metal - prefill / general forward specializations: fa_fwd_<dtype>_d<head dim>.
// Body: fa_forward.h. Tiles: fa_tiles.h (BQ = 32 rows on 4 simdgroups, BK from the table).
#include <metal_stdlib>
using namespace metal;

#include "fa_forward.h"

#define FA_FWD_KERNEL(T, BD) fa_attention<T, BD, FA_FWD_BQ, fa_fwd_bk(BD, sizeof(T)), FA_FWD_SIMDGROUPS>
#define FA_INSTANTIATE_FWD(tname, T, BD) \
    template [[host_name("fa_fwd_" #tname "_d" #BD)]] [[kernel]] decltype(FA_FWD_KERNEL(T, BD)) FA_FWD_KERNEL(T, BD);

#define FA_INSTANTIATE_FWD_DIMS(tname, T) \
    FA_INSTANTIATE_FWD(tname, T, 64)      \
    FA_INSTANTIATE_FWD(tname, T, 80)      \
    FA_INSTANTIATE_FWD(tname, T, 96)      \
    FA_INSTANTIATE_FWD(tname, T, 128)     \
    FA_INSTANTIATE_FWD(tname, T, 256)

FA_INSTANTIATE_FWD_DIMS(f16, half)
FA_INSTANTIATE_FWD_DIMS(bf16, bfloat)
FA_INSTANTIATE_FWD_DIMS(f32, float)
