// Planted kernels, one per synchronous signal a simulated kernel can raise on x86-64 Linux. Each must come back as a
// fault naming the kernel (and the source line where the line table knows it) while the process goes on.
#include <metal_stdlib>
using namespace metal;

// SIGILL: GCC compiles a division by a value known to be zero into a trap instruction (ud2).
kernel void sig_ill(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    int zero = 0;
    y[tid] = int(tid) / zero;  // BUG
}

// SIGFPE: INT_MIN / -1 overflows; x86's idiv raises #DE.
kernel void sig_fpe(device int* y [[buffer(0)]], constant int& d [[buffer(1)]],
                    uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = y[tid] / d;  // BUG when y[tid] == INT_MIN and d == -1
}

// SIGSEGV: a write far outside every mapping.
kernel void sig_segv(device float* y [[buffer(0)]], constant ulong& far [[buffer(1)]],
                     uint tid [[thread_index_in_threadgroup]]) {
    y[far + tid] = 1.0f;  // BUG
}

// SIGBUS: a thread-private array indexed so far that the stack-relative address is not canonical (#SS).
kernel void sig_bus(device int* y [[buffer(0)]], constant ulong& far [[buffer(1)]],
                    uint tid [[thread_index_in_threadgroup]]) {
    int priv[8];
    for (int i = 0; i < 8; i++) priv[i] = int(tid) + i;
    y[tid] = priv[far + tid % 2];  // BUG
}

// Stack overflow: thread-private arrays larger than the simulated thread's stack.
kernel void stack_overflow(device int* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    int big[200000];  // BUG: 800 KB
    for (int i = 0; i < 200000; i++) big[i] = i ^ int(tid);
    y[tid] = big[(tid * 7919u) % 200000u];
}
