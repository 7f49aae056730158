// thread_pool.h - the CPU backend's persistent worker pool (also used by the CPU backward in csrc/cpu/backward).
//
// parallel_for(n, fn) calls fn(i) once for every i in [0, n) using the pool's workers plus the calling thread, and
// returns when all calls finished. Items are handed out one at a time from an atomic counter, so uneven items (causal
// tiles) balance themselves.
//
// Guarantees:
// - Workers live across calls; an idle worker polls for a new job for at most 200 us (back-to-back calls skip the
//   wake-up latency), then sleeps on a condition variable; after IDLE_RELEASE (10 s) without a job it exits, and
//   the next job starts it again (an idle process keeps no threads). At exit, sleeping workers are released too.
// - Cancellation (fa_cancel.h): with a token, items not yet started are skipped once it is requested, and the call
//   returns false after every started item returned; the calling thread polls the token while it waits (for
//   call_mutex_ or for the workers), so a signal is noticed even when only workers compute.
// - Safe for concurrent callers from many threads (e.g. Python threads with the GIL released): jobs from different
//   callers are serialized on one mutex; each caller still gets its own complete result.
// - A parallel_for issued from inside a pool worker runs serially on that worker (no nested-pool deadlock).
// - fn must not throw; if it does, the exception is swallowed and parallel_for returns false.
#pragma once

#include <cstdint>
#include <functional>

#include "sim/fa_cancel.h"

namespace fa_cpu {

// Returns true when every fn(i) returned normally. max_threads > 0 caps the threads used by this call
// (the fa_params.num_threads knob); 0 means the pool size (fa_set_num_threads, default: hardware concurrency).
// false also when `cancel` was requested (items may then have been skipped).
bool parallel_for(int64_t n, const std::function<void(int64_t)> &fn, int max_threads = 0,
                  const fa_cancel *cancel = nullptr);

// Worker threads alive now (tests: idle workers are released).
int pool_live_workers();

// Current pool size including the calling thread (>= 1).
int pool_num_threads();
// 0 resets to the hardware concurrency. Takes effect on the next parallel_for.
void pool_set_num_threads(int n);

}  // namespace fa_cpu
