// counters.metal - small kernels whose work is counted by hand, for the simulator's work counters
// (python -m flash_attn_cy.sim profile, flash_attn_cy.sim.profile(); tests/test_sim_counters.py). The expected count
// of each kernel is written above it; the test checks the counters equal it exactly.
#include <metal_stdlib>
using namespace metal;

// ---- copy_scale: device memory and setBytes constants.
// Every thread i < n: one 4-byte load of x[i], one of the setBytes constant `scale`, one 4-byte store of y[i].
// Threads at or past n do nothing but read n. No threadgroup memory, barriers or matrix work.
kernel void copy_scale(device const float* x [[buffer(0)]],
                       device float* y [[buffer(1)]],
                       constant uint& n [[buffer(2)]],
                       constant float& scale [[buffer(3)]],
                       uint gid [[thread_position_in_grid]]) {
    if (gid >= n) return;
    y[gid] = x[gid] * scale;
}

// ---- tg_exchange: threadgroup memory and barriers.
// Threadgroups of 64 threads (2 SIMD groups) over x of 64 * groups floats. Per threadgroup:
//   threadgroup memory: a (64 floats, 256 bytes) + h (32 halves, 64 bytes) = 320 bytes
//   threadgroup stores: 64 x 4 bytes (a) + 32 x 2 bytes (h, SIMD group 0) = 96 stores, 320 bytes
//   threadgroup loads:  64 x 4 bytes (a) + 32 x 2 bytes (h, SIMD group 0) = 96 loads, 320 bytes
//   barriers: 2 threadgroup_barrier, 1 simdgroup_barrier per SIMD group = 2
//   device: 64 loads of x and 64 stores of y, 4 bytes each
kernel void tg_exchange(device const float* x [[buffer(0)]],
                        device float* y [[buffer(1)]],
                        uint tid [[thread_index_in_threadgroup]],
                        uint group [[threadgroup_position_in_grid]]) {
    threadgroup float a[64];
    threadgroup half h[32];
    a[tid] = x[group * 64 + tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    const float v = a[63 - tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid < 32) h[tid] = half(v);
    simdgroup_barrier(mem_flags::mem_threadgroup);
    const float w = tid < 32 ? float(h[31 - tid]) : 0.0f;
    y[group * 64 + tid] = v + w;
}

// ---- mma_f32, mma_f16: simdgroup_matrix products.
// One SIMD group per threadgroup computes C (8x8) = A (8x16) B (16x8): K = 16 is two 8x8x8 multiply-accumulates.
// Per threadgroup: 4 simdgroup_loads of 64 elements from device memory (2 per lane each: 256 loads), one
// simdgroup_store (64 stores of 4 bytes): A and B of type T (float: 4 bytes, half: 2 bytes per element).
template <typename T>
kernel void mma_8x16x8(device const T* a [[buffer(0)]],   // [groups][8][16]
                       device const T* b [[buffer(1)]],   // [groups][16][8]
                       device float* c [[buffer(2)]],     // [groups][8][8]
                       uint group [[threadgroup_position_in_grid]]) {
    simdgroup_matrix<T, 8, 8> ma, mb;
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (uint k = 0; k < 16; k += 8) {
        simdgroup_load(ma, a + group * 128, 16, ulong2(k, 0));
        simdgroup_load(mb, b + group * 128, 8, ulong2(0, k));
        simdgroup_multiply_accumulate(acc, ma, mb, acc);
    }
    simdgroup_store(acc, c + group * 64, 8);
}

template [[host_name("mma_f32")]] kernel void mma_8x16x8<float>(device const float*, device const float*,
                                                                 device float*, uint);
template [[host_name("mma_f16")]] kernel void mma_8x16x8<half>(device const half*, device const half*,
                                                                device float*, uint);

// ---- flops: floating-point operations by type.
// Per thread: fp16 2 (x * x + x), fp32 18 (v * v + v on a float4: 8; dot of two float4: 8; fma: 2),
// transcendental 1 (exp). The final `+ s` is scalar float arithmetic, which the counters do not see.
// Device: one 2-byte load (a), one 16-byte float4 load (f), one 4-byte store (o).
kernel void flops(device const half* a [[buffer(0)]],
                  device const float4* f [[buffer(1)]],
                  device float* o [[buffer(2)]],
                  uint i [[thread_position_in_grid]]) {
    const half x = a[i];
    const half y = x * x + x;
    const float4 v = f[i];
    const float4 w = v * v + v;
    const float s = dot(w, v);
    o[i] = exp(float(y)) + fma(s, s, s) + s;
}

// ---- count_threads: atomics, once per MSL atomic operation.
// Thread 0 zeroes a threadgroup counter, every thread adds 1 to it, then thread 0 adds it to a device counter. Per
// threadgroup of N threads: N + 2 threadgroup atomics (a store, N fetch_adds, a load: 4 bytes each; N + 1 read and
// N + 1 written), 1 device atomic (4 bytes read and written). An atomic counts once however the simulator does it.
kernel void count_threads(device atomic_uint* total [[buffer(0)]],
                          uint tid [[thread_index_in_threadgroup]]) {
    threadgroup atomic_uint count;
    if (tid == 0) atomic_store_explicit(&count, 0u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    atomic_fetch_add_explicit(&count, 1u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) atomic_fetch_add_explicit(total, atomic_load_explicit(&count, memory_order_relaxed),
                                            memory_order_relaxed);
}

// ---- private_64, private_512: thread-private memory. Each thread
// fills a private array of N floats (N = 64 or 512) and reads it back at data-dependent places, so the host compiler
// must keep it in stack memory. The counter (stack depth below the kernel's entry) must grow by about (512 - 64) * 4.
template <int N>
kernel void private_sum(device const uint* idx [[buffer(0)]],
                        device float* out [[buffer(1)]],
                        uint i [[thread_position_in_grid]]) {
    float priv[N];
    for (int j = 0; j < N; ++j) priv[j] = float(j * (int(i) + 1));
    float s = 0.0f;
    for (int j = 0; j < 4; ++j) s += priv[idx[i * 4 + j] % N];
    out[i] = s;
}

template [[host_name("private_64")]] kernel void private_sum<64>(device const uint*, device float*, uint);
template [[host_name("private_512")]] kernel void private_sum<512>(device const uint*, device float*, uint);
