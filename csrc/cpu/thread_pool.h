// thread_pool.h - the CPU backend's persistent worker pool (also used by the CPU backward in csrc/cpu/backward).
//
// parallel_for(n, fn) calls fn(i) once for every i in [0, n) using the pool's workers plus the calling thread, and
// returns when all calls finished. Items are handed out one at a time from an atomic counter, so uneven items (causal
// tiles) balance themselves.
//
// Guarantees:
// - A job of T threads hands work to T - 1 workers (each has its own wake-up flag; no other worker is woken), where
//   T <= n, <= the pool size (or max_threads) and <= the CPUs this process may run on (available_cpus(): threads
//   beyond them only time-slice the same cores). Callers also cap T by their work (threads_for_work) so that a
//   small call does not pay for waking threads it cannot keep busy. Workers that had not started when the caller
//   ran out of items are taken back instead of waited for.
// - Workers live across calls; an idle worker polls its own flag for 200 us (back-to-back calls skip the futex
//   wake-up), then sleeps on its own condition variable; after IDLE_RELEASE (10 s) without a job it exits, and the
//   next job starts it again (an idle process keeps no threads). At exit, sleeping workers are released too.
// - No lock is shared by the workers of a job: a job's start and end are atomics (per-worker state, a pending
//   count), so T threads do not queue on one mutex twice per job.
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
// (the fa_params.num_threads knob, or threads_for_work's answer); 0 means the pool size (fa_set_num_threads,
// default: the CPUs available). false also when `cancel` was requested (items may then have been skipped).
bool parallel_for(int64_t n, const std::function<void(int64_t)> &fn, int max_threads = 0,
                  const fa_cancel *cancel = nullptr);

// The threads a job of `items` items and `work` units of work should use: one per `min_work_per_thread` units
// (at least 1), at most `items`, at most max_threads (0: the pool size) and at most available_cpus(). Each path
// states its own unit and minimum (forward: multiply-adds, decode: K/V bytes, backward: multiply-adds). With
// FLASH_ATTN_CY_THREAD_CAPS=0 (read on every call; tests) only `items` and max_threads / the pool size cap it.
int threads_for_work(int64_t items, double work, double min_work_per_thread, int max_threads);

// CPUs this process may run on: the affinity mask and a cgroup CPU quota (Linux), else the hardware threads.
int available_cpus();

// Worker threads alive now (tests: idle workers are released).
int pool_live_workers();

// Current pool size setting, including the calling thread (>= 1).
int pool_num_threads();
// 0 resets to the CPUs available. Takes effect on the next parallel_for.
void pool_set_num_threads(int n);

// What the calling thread's parallel_for calls did since its previous pool_take_activity() (tests, benchmarks):
// calls, the most threads one call used (1 = ran serially), workers handed a job, how many of them had to be woken
// from sleep, and how many were taken back before they started.
struct PoolActivity {
    int64_t calls = 0;
    int32_t max_threads = 0;
    int64_t workers_posted = 0;
    int64_t workers_woken = 0;
    int64_t workers_taken_back = 0;
};
PoolActivity pool_take_activity();

}  // namespace fa_cpu
