// bwd_parallel.h - the parallel loop the CPU backward runs its passes on.
//
// Work items are independent and each writes its own disjoint slice of the outputs, so the result never depends on
// which worker runs which item or in what order: the backward is deterministic whatever the schedule.
// Items are handed out dynamically (one atomic counter) because causal/window masks make their costs uneven.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace fa_bwd {

// Number of workers for a call: `requested` (> 0) or the hardware concurrency, never more than the item count.
inline int worker_count(int requested, int64_t items) {
    int n = requested > 0 ? requested : (int)std::thread::hardware_concurrency();
    if (n < 1) n = 1;
    if ((int64_t)n > items) n = (int)(items > 0 ? items : 1);
    return n;
}

// Calls body(item, worker) for every item in [0, n) on `workers` threads (worker 0 is the calling thread).
// `body` must not throw.
template <typename Body>
void parallel_items(int64_t n, int workers, const Body &body) {
    if (n <= 0) return;
    if (workers <= 1) {
        for (int64_t i = 0; i < n; ++i) body(i, 0);
        return;
    }
    std::atomic<int64_t> next{0};
    auto run = [&](int worker) {
        for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
             i = next.fetch_add(1, std::memory_order_relaxed))
            body(i, worker);
    };
    std::vector<std::thread> threads;
    threads.reserve((size_t)workers - 1);
    for (int w = 1; w < workers; ++w) {
        try {
            threads.emplace_back(run, w);
        } catch (...) {
            break;  // could not start another thread: the running workers take the remaining items
        }
    }
    run(0);
    for (auto &t : threads) t.join();
}

}  // namespace fa_bwd
