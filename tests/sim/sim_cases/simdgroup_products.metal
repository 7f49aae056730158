// Kernels for tests/sim/test_sim_matrix.py (simdgroup_matrix, conversions, SIMD functions, atomics, swizzles).
// simdgroup_matrix: D = A x B + C for 16x16 matrices (K = 16), one 8x8 output
// block per SIMD group (4 SIMD groups, 128 threads), A staged through threadgroup memory, B read from device memory
// (stored transposed when transpose_b != 0), C and D in float. Instantiated for float, half and bfloat.
#include <metal_stdlib>
using namespace metal;

constant constexpr uint N = 16;

template <typename T>
kernel void mma16(device const T* a [[buffer(0)]],
                  device const T* b [[buffer(1)]],
                  device const float* c [[buffer(2)]],
                  device float* d [[buffer(3)]],
                  constant uint& transpose_b [[buffer(4)]],
                  uint tid [[thread_index_in_threadgroup]],
                  ushort sid [[simdgroup_index_in_threadgroup]]) {
    threadgroup T a_tile[N * N];
    for (uint i = tid; i < N * N; i += 128) a_tile[i] = a[i];
    threadgroup_barrier(mem_flags::mem_threadgroup);

    const uint row0 = (sid / 2) * 8, col0 = (sid % 2) * 8;
    simdgroup_float8x8 acc;
    simdgroup_load(acc, c, N, ulong2(col0, row0));
    for (uint k = 0; k < N; k += 8) {
        simdgroup_matrix<T, 8, 8> am, bm;
        simdgroup_load(am, a_tile, N, ulong2(k, row0));
        if (transpose_b != 0) {
            simdgroup_load(bm, b, N, ulong2(k, col0), true);  // b holds B^T: block (col0.., k..) transposed
        } else {
            simdgroup_load(bm, b, N, ulong2(col0, k));
        }
        simdgroup_multiply_accumulate(acc, am, bm, acc);
    }
    simdgroup_store(acc, d, N, ulong2(col0, row0));
}

template [[host_name("mma16_float")]] [[kernel]] decltype(mma16<float>) mma16<float>;
template [[host_name("mma16_half")]] [[kernel]] decltype(mma16<half>) mma16<half>;
template [[host_name("mma16_bfloat")]] [[kernel]] decltype(mma16<bfloat>) mma16<bfloat>;

// Lane layout: loads m[r][c] = 8 r + c, writes each lane's thread_elements() to where[2 lane + j]; then fills
// thread_elements() with 1000 lane + j and stores the matrix to stored[64].
kernel void matrix_layout(device const float* m [[buffer(0)]],
                          device float* where [[buffer(1)]],
                          device float* stored [[buffer(2)]],
                          ushort lane [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 x;
    simdgroup_load(x, m);
    where[2 * lane] = x.thread_elements()[0];
    where[2 * lane + 1] = x.thread_elements()[1];
    x.thread_elements()[0] = 1000.0f * lane;
    x.thread_elements()[1] = 1000.0f * lane + 1.0f;
    simdgroup_store(x, stored);
}

// Conversions and SIMD functions: y[i] = half(x[i]) and bfloat(x[i]) bits; sums[lane] = simd_sum etc.
kernel void conversions(device const float* x [[buffer(0)]],
                        device half* h [[buffer(1)]],
                        device bfloat* bf [[buffer(2)]],
                        device float* simd_out [[buffer(3)]],
                        uint gid [[thread_position_in_grid]],
                        ushort lane [[thread_index_in_simdgroup]]) {
    h[gid] = half(x[gid]);
    bf[gid] = bfloat(x[gid]);
    if (gid < 32) {
        float v = x[gid];
        simd_out[gid] = simd_sum(v);
        simd_out[32 + gid] = simd_max(v);
        simd_out[64 + gid] = simd_shuffle_xor(v, 5);
        simd_out[96 + gid] = simd_shuffle_down(v, 3);
        simd_out[128 + gid] = simd_prefix_exclusive_sum(v);
        simd_out[160 + gid] = simd_broadcast(v, 7);
    }
    (void)lane;
}

// Atomics: every thread of every threadgroup adds 1 to counter[0] and its value to the float sum[0]; the maximum of
// the thread positions goes to counter[1] (threadgroup atomics first, then one device update per threadgroup).
kernel void atomics(device atomic_uint* counter [[buffer(0)]],
                    device atomic_float* sum [[buffer(1)]],
                    uint gid [[thread_position_in_grid]],
                    uint tid [[thread_index_in_threadgroup]]) {
    threadgroup atomic_uint local_max;
    if (tid == 0) atomic_store_explicit(&local_max, 0, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    atomic_fetch_add_explicit(&counter[0], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sum[0], 1.0f, memory_order_relaxed);
    atomic_fetch_max_explicit(&local_max, gid, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) atomic_fetch_max_explicit(&counter[1], atomic_load_explicit(&local_max, memory_order_relaxed),
                                            memory_order_relaxed);
}

// Swizzles (read, write, compound assignment) and vector constructors.
kernel void swizzles(device float4* v [[buffer(0)]], device float2* o [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
    float4 a = v[i];
    float2 b = a.xy + a.zw * 2.0f;
    a.xy = b;
    a.zw += float2(1.0f, 2.0f);
    float3 c = a.xyz;
    o[i] = float2(c.z, dot(a.rgb, float3(1.0f))) + b.yx;
    v[i] = a.wzyx;
}

// Diagonal constructor: identity x m == m.
kernel void diagonal(device const float* m [[buffer(0)]], device float* out [[buffer(1)]],
                     ushort lane [[thread_index_in_simdgroup]]) {
    simdgroup_float8x8 eye(2.0f), x, y;
    simdgroup_load(x, m);
    simdgroup_multiply(y, eye, x);
    simdgroup_store(y, out);
    (void)lane;
}

// Threadgroup memory declared in a templated helper (one allocation per threadgroup and instantiation): reverse
// the threadgroup's values through it.
template <typename T, uint N>
inline T reverse_through_tile(T v, uint tid) {
    threadgroup T tile[N];
    tile[tid] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    T r = tile[N - 1 - tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return r;
}

kernel void helper_tile(device float* x [[buffer(0)]], uint tid [[thread_index_in_threadgroup]],
                        uint3 tg [[threadgroup_position_in_grid]]) {
    uint i = tg.x * 64 + tid;
    x[i] = reverse_through_tile<float, 64>(x[i], tid) + float(reverse_through_tile<int, 64>(int(tid), tid));
}
