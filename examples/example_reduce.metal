// example_reduce.metal - a small reduction showing the simulator-checked MSL dialect (kernels/README.md):
// threadgroup memory, SIMD-group functions and simdgroup_matrix with Apple's lane layout. The kernel of the README's
// `flash_attn_cy.sim run` example; an example, so not part of the kernel library the package ships (kernels/).
//
// Threadgroup g reduces elements [g * chunk, min(n, (g + 1) * chunk)) of x, chunk = ceil(n / groups), and writes
// out[2 g] = their sum and out[2 g + 1] = their maximum (-FLT_MAX for an empty chunk).
// Threads per threadgroup: a multiple of 32, at most 1024.
#include <metal_stdlib>
using namespace metal;

constant constexpr uint kMaxThreads = 1024;
constant constexpr uint kBlock = 8;  // the partial sums are folded into one 8x8 simdgroup_matrix

kernel void example_reduce(device const float* x [[buffer(0)]],
                           device float* out [[buffer(1)]],
                           constant uint& n [[buffer(2)]],
                           uint3 tgid [[threadgroup_position_in_grid]],
                           uint3 groups [[threadgroups_per_grid]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint3 threads [[threads_per_threadgroup]],
                           ushort sid [[simdgroup_index_in_threadgroup]],
                           ushort lane [[thread_index_in_simdgroup]]) {
    threadgroup float partial[kMaxThreads];
    threadgroup float block[kBlock * kBlock];
    threadgroup float simd_max_of[kMaxThreads / 32];

    const uint chunk = (n + groups.x - 1) / groups.x;
    const uint begin = min(n, tgid.x * chunk);
    const uint end = min(n, begin + chunk);

    // 1. Each thread: strided sum and max of its share.
    float acc = 0.0f;
    float mx = -FLT_MAX;
    for (uint i = begin + tid; i < end; i += threads.x) {
        acc += x[i];
        mx = max(mx, x[i]);
    }
    partial[tid] = acc;
    mx = simd_max(mx);  // 2. max within each SIMD group
    if (lane == 0) simd_max_of[sid] = mx;
    threadgroup_barrier(mem_flags::mem_threadgroup);

    if (sid != 0) return;  // the rest is SIMD group 0's job (no barrier follows)

    // 3. Fold the per-thread sums into an 8x8 block: block[i] = sum of partial[j] for j = i (mod 64).
    for (uint i = lane; i < kBlock * kBlock; i += 32) {
        float s = 0.0f;
        for (uint j = i; j < threads.x; j += kBlock * kBlock) s += partial[j];
        block[i] = s;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);

    // 4. Row sums with one simdgroup_matrix product: (block x ones)[r][c] = sum of row r.
    simdgroup_float8x8 b, ones = make_filled_simdgroup_matrix<float, 8, 8>(1.0f), rows;
    simdgroup_load(b, block, kBlock);
    simdgroup_multiply(rows, b, ones);

    // 5. thread_elements()[0] of lane l is row (l/4 & 4) + (l/2) % 4: rows differ in lane bits 1, 2 and 4,
    //    so xor-shuffles over those bits add up the 8 row sums.
    float total = rows.thread_elements()[0];
    total += simd_shuffle_xor(total, 2);
    total += simd_shuffle_xor(total, 4);
    total += simd_shuffle_xor(total, 16);

    float m = lane < threads.x / 32 ? simd_max_of[lane] : -FLT_MAX;
    m = simd_max(m);
    if (lane == 0) {
        out[2 * tgid.x] = total;
        out[2 * tgid.x + 1] = m;
    }
}
