// buffer_pool.cpp - the process-wide free list behind PooledBuffer (see buffer_pool.h).
#include "buffer_pool.h"
#include "fork_renewed.h"

#include <deque>
#include <mutex>
#include <new>

#include "fa_alloc.h"
#include <utility>

namespace fa_cpu {
namespace {

constexpr std::align_val_t kAlign{64};

struct Pool {
    std::mutex mu;
    std::deque<std::pair<void *, size_t>> idle;  // (memory, capacity), oldest first
    size_t idle_bytes = 0;
    // A fork()ed child starts empty: the mutex may be held by a parent thread that does not exist there.
    static Pool *renewed_after_fork(const Pool &) { return new Pool; }
};

// Never destroyed: buffers may be released by threads that outlive static destruction at interpreter exit.
Pool &pool() { return ForkRenewed<Pool>::get(); }

}  // namespace

PooledBuffer::PooledBuffer(size_t bytes) {
    bytes = (bytes + 63) & ~size_t(63);
    if (bytes == 0) bytes = 64;
    Pool &p = pool();
    {
        // The smallest idle buffer that fits, unless it is more than twice the request (a small call must not take
        // the big buffer a big call will want again).
        std::lock_guard<std::mutex> lock(p.mu);
        size_t best = p.idle.size();
        for (size_t i = 0; i < p.idle.size(); ++i) {
            const size_t c = p.idle[i].second;
            if (c >= bytes && c / 2 <= bytes && (best == p.idle.size() || c < p.idle[best].second)) best = i;
        }
        if (best < p.idle.size()) {
            ptr_ = p.idle[best].first;
            cap_ = p.idle[best].second;
            p.idle_bytes -= cap_;
            p.idle.erase(p.idle.begin() + std::ptrdiff_t(best));
            return;
        }
    }
    try {
        ptr_ = ::operator new(bytes, kAlign);
    } catch (const std::bad_alloc &) {
        fa_alloc::note_failure(bytes);  // so the error can name the size (fa_alloc.h)
        throw;
    }
    cap_ = bytes;
}

void PooledBuffer::release() {
    if (!ptr_) return;
    void *ptr = ptr_;
    const size_t cap = cap_;
    ptr_ = nullptr;
    cap_ = 0;
    if (cap > kPoolCacheBytes) {
        ::operator delete(ptr, kAlign);
        return;
    }
    std::deque<std::pair<void *, size_t>> evicted;
    {
        Pool &p = pool();
        std::lock_guard<std::mutex> lock(p.mu);
        p.idle.emplace_back(ptr, cap);
        p.idle_bytes += cap;
        while (p.idle_bytes > kPoolCacheBytes) {  // never the buffer just added: cap <= kPoolCacheBytes
            evicted.push_back(p.idle.front());
            p.idle_bytes -= p.idle.front().second;
            p.idle.pop_front();
        }
    }
    for (const auto &e : evicted) ::operator delete(e.first, kAlign);  // outside the lock
}

}  // namespace fa_cpu
