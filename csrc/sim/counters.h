// counters.h - work counters of one dispatch, for `python -m flash_attn_cy.sim profile` and
// flash_attn_cy.sim.profile() (counters.cpp; the kernel-side hooks are in include/fasim_counters.h).
//
// Counting exists only in profile builds: the runtime sources compiled with -DFASIM_PROFILE=1 together with a kernel
// module compiled with the profile flags (flash_attn_cy/sim/_compile.py, variant "profile"). Every call site below
// sits inside FASIM_PROF(...), which is empty otherwise, so the package's own simulator (the `sim` backend) and the
// modules `sim run` builds contain no counting code at all.
//
// What is counted (only during the forward run of a launch; the other schedules and checking runs are not counted):
// - memory: every load and store the kernel's compiled code performs (the profile module is compiled with the
//   compiler's ThreadSanitizer instrumentation, whose __tsan_* calls counters.cpp defines itself: no sanitizer
//   runtime is linked), classified by address: a device buffer binding (per [[buffer(n)]] index), setBytes data,
//   a threadgroup array, or the simulated thread's own stack (thread-private memory); the runtime's own memory
//   (SIMD exchange slots, thread ids) is not counted;
// - barriers: threadgroup_barrier once per threadgroup per barrier, simdgroup_barrier once per SIMD group per
//   barrier, other SIMD-group collectives (simd_sum, simd_shuffle, ...) likewise;
// - simdgroup_matrix multiplies (8x8x8 each) and floating-point operations (include/fasim_counters.h);
// - threadgroup memory: the bytes of the threadgroup arrays one threadgroup declares (the largest over threadgroups);
// - thread-private bytes: how far below the kernel's entry the stack pointer of a simulated thread reaches at its
//   instrumented memory accesses (the deepest over all threads): the kernel's locals, arrays and spills as the host
//   compiler lays them out, without the runtime's own frames. A proxy for register pressure, not a register count.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <memory>
#include <vector>

#ifdef FASIM_PROFILE
#define FASIM_PROF(...) __VA_ARGS__
#else
#define FASIM_PROF(...)
#endif

namespace fasim {
namespace detail {

struct Launch;
struct Worker;
struct SimFiber;
struct SiteRec;

namespace prof {

struct WorkerCounts;  // counters.cpp: one per worker while the counted run runs, null otherwise

// Launch side (runtime.cpp), on the thread that calls fasim::launch.
void begin_launch(Launch &L);
void begin_run(Launch &L, std::vector<std::unique_ptr<Worker>> &workers);  // after the buffers are placed
void end_run(Launch &L, std::vector<std::unique_ptr<Worker>> &workers);    // after every worker finished
void end_launch(Launch &L);  // the counts become what fasim_profile_counters() returns on this thread

// Fiber side (scheduler.h / scheduler.cpp).
void on_kernel_entry(Worker *w, SimFiber *f);           // just before the kernel's entry point runs
void on_tg_barrier(Worker *w);                          // a threadgroup barrier released its threadgroup
void on_simd_release(Worker *w, const SiteRec &site);   // a SIMD-group collective released its SIMD group
void on_tg_alloc(Worker *w, size_t threadgroup_bytes);  // the threadgroup's arrays now take this many bytes

}  // namespace prof
}  // namespace detail
}  // namespace fasim
