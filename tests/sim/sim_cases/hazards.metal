// Planted memory hazards for the simulator's hazard detector (tests/test_sim_hazards.py), each with a clean twin.
// Markers `// @name` tag the lines a race report must name. Threadgroups of 64 threads (two SIMD groups) unless
// noted; buffer(0) float32 input, buffer(1) float32 output, 64 elements per threadgroup.
#include <metal_stdlib>
using namespace metal;

// The issue's row softmax: one row per threadgroup, the two SIMD groups' maxima and then sums exchanged through
// part[]. Without the second barrier, SIMD group 1 may overwrite part[1] with its sum while SIMD group 0 still reads
// it as a maximum (on a GPU the SIMD groups run independently; the simd_sum does not order them). buffer(3): the
// lane that publishes its SIMD group's values.
kernel void row_softmax(device const float* x [[buffer(0)]],
                        device float* y [[buffer(1)]],
                        constant uint& fixed [[buffer(2)]],
                        constant uint& publisher [[buffer(3)]],
                        uint tid [[thread_index_in_threadgroup]],
                        uint sid [[simdgroup_index_in_threadgroup]],
                        uint lane [[thread_index_in_simdgroup]],
                        uint row [[threadgroup_position_in_grid]]) {
    threadgroup float part[2];
    const float v = x[row * 64 + tid];
    float m = simd_max(v);
    if (lane == publisher) part[sid] = m;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    m = max(part[0], part[1]);  // @softmax-read
    const float e = exp(v - m);
    float s = simd_sum(e);
    if (fixed != 0) threadgroup_barrier(mem_flags::mem_threadgroup);  // BUG when fixed == 0: the second barrier
    if (lane == publisher) part[sid] = s;  // @softmax-write
    threadgroup_barrier(mem_flags::mem_threadgroup);
    s = part[0] + part[1];
    y[row * 64 + tid] = e / s;
}

// Two SIMD groups write one threadgroup word in the same barrier interval (write/write).
kernel void write_write(device const float* x [[buffer(0)]],
                        device float* y [[buffer(1)]],
                        constant uint& fixed [[buffer(2)]],
                        uint tid [[thread_index_in_threadgroup]],
                        uint sid [[simdgroup_index_in_threadgroup]],
                        uint lane [[thread_index_in_simdgroup]]) {
    threadgroup float slot[2];
    if (lane == 0) slot[fixed != 0 ? sid : 0] = x[sid];  // @ww-write (BUG when fixed == 0: both write slot[0])
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[tid] = slot[0];
}

// Every threadgroup writes the same device words (write/write across threadgroups); fixed: each its own.
kernel void device_write_write(device const float* x [[buffer(0)]],
                               device float* y [[buffer(1)]],
                               constant uint& fixed [[buffer(2)]],
                               uint tid [[thread_index_in_threadgroup]],
                               uint tg [[threadgroup_position_in_grid]]) {
    y[(fixed != 0 ? tg * 64 : 0) + tid] = x[tid] + float(tg);  // @dev-write
}

// Within one SIMD group (a 32-thread threadgroup): each lane reads its neighbour's staged value. fixed: 0 nothing
// orders the write and the read, 1 simdgroup_barrier(mem_threadgroup), 2 a SIMD-group function (simd_sum),
// 3 simdgroup_barrier(mem_none), which is an execution barrier only (MSL 6.9.1) and does not order memory.
kernel void simd_neighbour(device const float* x [[buffer(0)]],
                           device float* y [[buffer(1)]],
                           constant uint& fixed [[buffer(2)]],
                           uint lane [[thread_index_in_simdgroup]]) {
    threadgroup float t[32];
    t[lane] = x[lane];  // @simd-write
    float bias = 0.0f;
    if (fixed == 1) simdgroup_barrier(mem_flags::mem_threadgroup);
    if (fixed == 2) bias = simd_sum(0.0f);
    if (fixed == 3) simdgroup_barrier(mem_flags::mem_none);
    y[lane] = t[lane ^ 1] + bias;  // @simd-read
}

// Threadgroup memory handed between SIMD groups across a barrier whose flags name only device memory (a race by
// the MSL specification); fixed: mem_threadgroup.
kernel void device_flag_barrier(device const float* x [[buffer(0)]],
                                device float* y [[buffer(1)]],
                                constant uint& fixed [[buffer(2)]],
                                uint tid [[thread_index_in_threadgroup]]) {
    threadgroup float t[64];
    t[tid] = x[tid];  // @flag-write
    if (fixed != 0) threadgroup_barrier(mem_flags::mem_threadgroup);
    else threadgroup_barrier(mem_flags::mem_device);  // @flag-barrier
    y[tid] = t[(tid + 32) % 64];  // @flag-read
}

// Device memory handed between SIMD groups across a barrier whose flags name only threadgroup memory; fixed:
// mem_device. buffer(1): 64 floats written, then read back by the other SIMD group into buffer(3).
kernel void threadgroup_flag_barrier(device const float* x [[buffer(0)]],
                                     device float* y [[buffer(1)]],
                                     constant uint& fixed [[buffer(2)]],
                                     device float* z [[buffer(3)]],
                                     uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = x[tid] * 2.0f;  // @dflag-write
    if (fixed != 0) threadgroup_barrier(mem_flags::mem_device);
    else threadgroup_barrier(mem_flags::mem_threadgroup);
    z[tid] = y[(tid + 32) % 64];  // @dflag-read
}

// Atomics: every thread of every threadgroup adds into one device counter (never a race); with fixed == 0 thread 0
// of each threadgroup also reads it plainly (an atomic and a plain access do race).
kernel void atomic_counter(device const float* x [[buffer(0)]],
                           device atomic_uint* counter [[buffer(1)]],
                           constant uint& fixed [[buffer(2)]],
                           device uint* seen [[buffer(3)]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint tg [[threadgroup_position_in_grid]]) {
    atomic_fetch_add_explicit(counter, 1u, memory_order_relaxed);  // @atomic-add
    if (fixed == 0 && tid == 0) seen[tg] = *((device uint*)counter);  // @plain-read
}
