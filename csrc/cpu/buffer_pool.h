// buffer_pool.h - large per-call buffers reused across calls (process-wide pool with a byte cap).
//
// Why: a buffer of tens of MiB freshly allocated on every call comes from mmap, and the kernel then faults in and
// zeroes every page on first touch; at small shapes with many heads that was about a third of the CPU backward's
// non-product time. A PooledBuffer taken from the pool keeps its pages mapped when it is given back, so the next
// call of a similar shape reuses warm memory.
//
// Guarantees:
// - Safe for concurrent callers: a buffer belongs to exactly one PooledBuffer between acquire and release (the free
//   list is behind a mutex), so two calls from different Python threads never share memory.
// - Bounded: the pool keeps at most kPoolCacheBytes of idle buffers; a larger buffer is freed when released, and the
//   oldest idle buffers are freed first when the total would exceed the cap. One huge call therefore does not pin
//   gigabytes for the rest of the process.
// - Contents are unspecified on acquire (like malloc): callers that need zeros must clear what they read.
#pragma once

#include <cstddef>

namespace fa_cpu {

// Idle bytes the pool may keep for reuse (the working set of, e.g., a fp32 backward at batch 4 x 32 heads x 2k rows
// x d 128 with two threads is ~130 MiB).
constexpr size_t kPoolCacheBytes = size_t(256) << 20;

class PooledBuffer {
public:
    PooledBuffer() = default;
    // At least `bytes` bytes, 64-byte aligned. Throws std::bad_alloc when memory is exhausted.
    explicit PooledBuffer(size_t bytes);
    ~PooledBuffer() { release(); }
    PooledBuffer(PooledBuffer &&o) noexcept : ptr_(o.ptr_), cap_(o.cap_) { o.ptr_ = nullptr; o.cap_ = 0; }
    PooledBuffer &operator=(PooledBuffer &&o) noexcept {
        if (this != &o) {
            release();
            ptr_ = o.ptr_;
            cap_ = o.cap_;
            o.ptr_ = nullptr;
            o.cap_ = 0;
        }
        return *this;
    }
    PooledBuffer(const PooledBuffer &) = delete;
    PooledBuffer &operator=(const PooledBuffer &) = delete;

    template <typename T> T *as() const { return static_cast<T *>(ptr_); }
    size_t capacity() const { return cap_; }
    // Gives the memory back to the pool (or frees it, see above); the buffer is empty afterwards.
    void release();

private:
    void *ptr_ = nullptr;
    size_t cap_ = 0;
};

}  // namespace fa_cpu
