// fa_alloc.h - the size of the last large allocation that failed, so an out-of-memory error can name it.
//
// std::bad_alloc carries no size, and a worker thread's failure reaches the caller only as "a work item failed". The
// large allocations (pooled per-call buffers, per-thread workspaces) note their size here before rethrowing; the ABI
// (fa_abi.cpp) turns a call that failed while a failure was noted into FA_ERR_MEMORY (Python: MemoryError) with the
// size in the message. Process-wide: with concurrent calls the size may be another call's (both are out of memory).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace fa_alloc {

struct Record {
    std::atomic<uint64_t> failures{0};
    std::atomic<uint64_t> last_bytes{0};
};

inline Record &record() {
    static Record r;
    return r;
}

inline void note_failure(size_t bytes) {
    record().last_bytes.store(bytes, std::memory_order_relaxed);
    record().failures.fetch_add(1, std::memory_order_release);
}

inline uint64_t failures() { return record().failures.load(std::memory_order_acquire); }
inline uint64_t last_failed_bytes() { return record().last_bytes.load(std::memory_order_relaxed); }

}  // namespace fa_alloc
