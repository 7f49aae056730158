// Planted bug: the tile load reads one element too many (<= instead of <), past the end of the input buffer
// on the last threadgroup. Expected fault: out-of-bounds.
// Run: grid 2, threadgroup 32, buffer(0) float32[64], buffer(1) float32[2].
#include <metal_stdlib>
using namespace metal;

constant constexpr uint TILE = 32;

kernel void off_by_one_tile(device const float* x [[buffer(0)]],
                            device float* sums [[buffer(1)]],
                            ushort tid [[thread_index_in_threadgroup]],
                            uint3 tg [[threadgroup_position_in_grid]]) {
    threadgroup float tile[TILE + 1];
    uint base = tg.x * TILE;
    tile[tid] = x[base + tid];
    if (tid == 0) tile[TILE] = x[base + TILE];  // BUG: reads element TILE of this tile = first of the next
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        float s = 0.0f;
        for (uint i = 0; i <= TILE; i++) s += tile[i];
        sums[tg.x] = s;
    }
}
