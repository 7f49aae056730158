// workspace.h - per-thread scratch of the CPU forward and decode, grown on demand and reused across calls.
//
// One per thread (thread_local at the use site): pool workers live across calls, so in steady state no call
// allocates. The block only grows (to the largest request the thread has seen); its size is bounded by the per-item
// tiles (O(BLOCK_M * headdim)) or, for decode's partial results, by O(batch * splits * heads * headdim).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "fa_alloc.h"

namespace fa_cpu {

struct Workspace {
    std::unique_ptr<char[]> raw;
    size_t size = 0;
    // At least `bytes` bytes, 64-byte aligned; the contents are unspecified (and lost when it grows).
    char *get(size_t bytes) {
        if (bytes + 64 > size) {
            try {
                raw.reset(new char[bytes + 64]);
            } catch (const std::bad_alloc &) {
                fa_alloc::note_failure(bytes + 64);  // so the error can name the size (fa_alloc.h)
                throw;
            }
            size = bytes + 64;
        }
        return reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(raw.get()) + 63) & ~uintptr_t(63));
    }
};

}  // namespace fa_cpu
