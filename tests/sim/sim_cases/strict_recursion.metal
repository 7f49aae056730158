// Planted error for the strict check: recursion (MSL has none), through an overload-free helper pair.
#include <metal_stdlib>
using namespace metal;

uint fib(uint n);
inline uint fib_step(uint n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
uint fib(uint n) { return fib_step(n); }

kernel void strict_recursion(device uint* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    y[tid] = fib(tid);  // BUG: recursion
}
