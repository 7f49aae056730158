// scheduler.h - internal state of the simulator runtime: one launch (Launch: regions, runs, faults) and the
// per-host-thread Worker that runs threadgroups as fibers with real barriers and SIMD collectives.
// Used by scheduler.cpp (fiber-side hooks), launch.cpp (runs and comparisons) and signals.cpp.
#pragma once

#undef _FORTIFY_SOURCE  // we _longjmp out of signal handlers and across fiber stacks (see fiber.cpp)
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "counters.h"
#include "fiber.h"
#include "guarded.h"
#include "hazard.h"
#include "include/fasim_fast_math.h"
#include "include/fasim_rt.h"
#include "sim_api.h"
#include <chrono>
#include <stdlib.h>

namespace fasim {
namespace detail {

constexpr size_t kFiberStack = 256 * 1024;  // virtual; only touched pages cost memory
constexpr int kMaxThreads = 1024;
constexpr unsigned char kPoisonA = 0x5a;    // float 1.5e16, half 203.25: finite, so results differ, not NaN==NaN
constexpr unsigned char kPoisonB = 0xa5;    // float -2.9e-16, half -0.0224
constexpr unsigned char kSlackA = 0x6b;
constexpr unsigned char kSlackB = 0x94;
constexpr size_t kMaxFaults = 16;
// The watchdog interrupts a threadgroup that runs longer than this without finishing (infinite loop, or a spin-wait
// on memory another thread writes: cooperative fibers cannot preempt it). FLASH_ATTN_CY_SIM_TIMEOUT overrides.
constexpr double kDefaultTimeoutSeconds = 300.0;
constexpr int kWatchdogSignal = SIGUSR2;

inline int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

inline double timeout_seconds() {
    const char *e = getenv("FLASH_ATTN_CY_SIM_TIMEOUT");
    double v = e ? atof(e) : 0.0;
    return v > 0.0 ? v : kDefaultTimeoutSeconds;
}

enum Order { kForward, kReverse, kRandom };

// How a run orders the threads of a threadgroup between synchronisation points (LaunchConfig::schedule_mode):
// interleaved: each pass resumes every ready thread once, in the run's thread order (a SIMD-group function moves
// all lanes of a SIMD group forward together, and in practice the whole threadgroup);
// run-ahead: one SIMD group at a time runs as far as it can - through its own SIMD-group functions, up to its next
// threadgroup barrier (or its end) - before the next one starts, the SIMD groups taken in the run's order.
enum Pace { kInterleaved, kRunAhead };

enum RunPurpose { kOrderRun, kBoundsRun, kPoisonRun };  // what a difference from the forward run means

struct RunSpec {
    Order order;
    uint64_t seed;
    unsigned char poison;
    unsigned char slack;
    bool end_aligned;
    const char *label;
    RunPurpose purpose = kOrderRun;
    Pace pace = kInterleaved;
    bool hazards = false;  // the hazard detector checks this run (hazard.h)
};

struct Region {                // one guarded copy of caller memory (overlapping bindings share one)
    char *orig;
    const char *src = nullptr; // initial contents when not at orig (BufferArg::src): orig then receives results
    size_t len;
    bool writable;
    std::vector<int> indices;  // buffer indices bound into it, for messages
    bool is_bytes;
    Guarded g;
};

struct Binding {
    int region;
    size_t offset;
    size_t bytes;
};

struct BarrierHash {
    uint64_t hash;
    const TgSite *site;
    const char *file;
    unsigned line;
};

struct Launch {
    const KernelInfo *kernel;
    LaunchConfig cfg;
    uint32_t nthreads, ngroups_total;
    std::vector<Region> regions;
    Binding bind[kMaxBuffers];
    bool bound[kMaxBuffers];
    const RunSpec *run;
    bool hash_barriers;
    // Diagnosis of a differing output word: which thread last wrote it (set by the diagnosis rerun only).
    int watch_region = -1;
    size_t watch_off = 0;
    const char *watch_ptr = nullptr;
    uint32_t watch_last = 0;
    std::string watch_writer;
    std::vector<std::vector<BarrierHash>> hashes;  // per threadgroup
    std::mutex mu;
    std::vector<Fault> faults;
    std::atomic<bool> stop{false};
    std::atomic<bool> cancelled{false};  // cfg.cancel was requested: abandon the run, report nothing
    std::atomic<uint32_t> next_group{0};
    std::vector<uint32_t> group_order;  // threadgroup launch order of this run (empty: 0, 1, 2, ...)
    std::vector<FcValue> fc_values;     // the launch's function constants (constants.cpp), for LaunchValues
    LaunchValues values{};              // what every thread's ThreadCtx::launch points to
    size_t suppressed = 0;
    Hazards *hz = nullptr;  // the hazard detector's dispatch state, while a run with hazards is in progress

    void add_fault(const std::string &kind, const std::string &msg) {
        std::lock_guard<std::mutex> lk(mu);
        if (faults.size() < kMaxFaults) faults.push_back({kind, msg});
        else suppressed++;
        stop = true;
    }
};

enum FState { kReady, kWaitBarrier, kWaitSimd, kDone };

struct Worker;

struct SimFiber {
    Fiber fiber;
    ThreadCtx ctx;
    Worker *w = nullptr;
    FState state = kReady;
    const char *wfile = nullptr;  // where it waits / last synchronised
    unsigned wline = 0;
    const char *what = nullptr;
};

struct TgArray {
    const TgSite *site;
    size_t bytes;
    Guarded g;
    uint64_t epoch;  // the threadgroup run (Worker::epoch) that last declared it
};

struct SiteRec {
    const char *file = nullptr;
    unsigned line = 0;
    const char *what = nullptr;
    int kind = 0;
    int mem = 0;  // mem_flags of a barrier, or kMemCollective (what it orders: hazard.h)
};

inline bool same_site(const SiteRec &s, const char *file, unsigned line, const char *what) {
    return s.line == line && (s.what == what || strcmp(s.what, what) == 0) &&
           (s.file == file || strcmp(s.file, file) == 0);
}

extern thread_local Worker *tl_worker;  // the worker running on this host thread

inline std::string where(const char *file, unsigned line) {
    if (!file) return "?";
    return std::string(file) + ":" + std::to_string(line);
}


struct Worker {
    Launch *L;
    jmp_buf sched;
    std::vector<std::unique_ptr<SimFiber>> fibers;
    std::vector<TgArray> arrays;
    SimdGroup sgs[kMaxThreads / kSimdWidth];
    void *bufptr[kMaxBuffers];
    // per-threadgroup scheduler state
    uint32_t group = 0, tgid[3] = {0, 0, 0};
    uint32_t n = 0, nsg = 0;
    uint32_t sg_arrived[kMaxThreads / kSimdWidth], sg_live[kMaxThreads / kSimdWidth], sg_mask[kMaxThreads / kSimdWidth];
    SiteRec sg_site[kMaxThreads / kSimdWidth];
    uint32_t bar_arrived = 0, done = 0;
    int first_done = -1;
    SiteRec bar_site;  // bar_site.mem: the mem_flags every thread arriving so far passed (their intersection)
    bool abort = false;
    volatile bool in_fiber = false;
    std::atomic<int64_t> tg_started_ns{0};  // 0 while not running a threadgroup (read by the watchdog)
    std::atomic<bool> thread_known{false};
    pthread_t thread;
    SimFiber *cur = nullptr;
    uint64_t rng = 0;
    uint64_t epoch = 0;  // counts threadgroups run by this worker
    std::vector<uint32_t> order;
    uint32_t sg_order[kMaxThreads / kSimdWidth], lane_order[kSimdWidth];  // run-ahead pace
    std::unique_ptr<HzWorker> hz;  // hazard detector, during a run that has it on
    // signal capture
    volatile int sig = 0;
    void *sig_addr = nullptr;
    void *sig_pc = nullptr;  // faulting instruction, for "[pc: module+offset]" (flash_attn_cy.sim maps it to a line)
    void *sig_sp = nullptr;  // stack pointer at the fault: below the fiber's stack means a stack overflow
    int sig_write = -1;  // 1 write, 0 read, -1 unknown
    std::vector<char> altstack;
    prof::WorkerCounts *prof_counts = nullptr;  // work counters of the counted run (profile builds only, counters.h)

    std::string thread_desc(const SimFiber *f) const {
        char b[200];
        snprintf(b, sizeof b, "kernel '%s', threadgroup (%u,%u,%u), thread (%u,%u,%u) [simdgroup %u, lane %u]",
                 L->kernel->name, tgid[0], tgid[1], tgid[2], f->ctx.tid[0], f->ctx.tid[1], f->ctx.tid[2], f->ctx.sid,
                 f->ctx.lane);
        return b;
    }
    std::string group_desc() const {
        char b[160];
        snprintf(b, sizeof b, "kernel '%s', threadgroup (%u,%u,%u)", L->kernel->name, tgid[0], tgid[1], tgid[2]);
        return b;
    }

    // A fault detected on a fiber: record it and never come back (the scheduler abandons the threadgroup).
    [[noreturn]] void fail(SimFiber *f, const std::string &kind, const std::string &msg) {
        if (!abort) L->add_fault(kind, msg);
        abort = true;
        f->state = kDone;
        for (;;) fiber_yield(&f->fiber);
    }

    void release_simd(uint32_t s, uint32_t par) {
        FASIM_PROF(prof::on_simd_release(this, sg_site[s]));
        sgs[s].mask[par] = sg_mask[s];
        sg_arrived[s] = 0;
        if (hz) hz->on_simd_release(s, sg_site[s].mem);
        uint32_t lo = s * kSimdWidth, hi = std::min(n, lo + kSimdWidth);
        for (uint32_t i = lo; i < hi; i++)
            if (fibers[i]->state == kWaitSimd) fibers[i]->state = kReady;
    }

    // Arrays this threadgroup declared, in a worker-independent order (by site), so that runs that spread the
    // threadgroups differently over workers compare like with like.
    void hash_arrays(const char *file, unsigned line) {
        std::vector<BarrierHash> &h = L->hashes[group];
        std::vector<const TgArray *> mine;
        for (const TgArray &a : arrays)
            if (a.epoch == epoch) mine.push_back(&a);
        std::sort(mine.begin(), mine.end(), [](const TgArray *x, const TgArray *y) {
            return std::less<const TgSite *>()(x->site, y->site);
        });
        for (const TgArray *ap : mine) {
            const TgArray &a = *ap;
            uint64_t x = 1469598103934665603ull;
            const unsigned char *p = (const unsigned char *)a.g.data;
            for (size_t i = 0; i < a.bytes; i++) x = (x ^ p[i]) * 1099511628211ull;
            h.push_back({x, a.site, file, line});
        }
    }

    void thread_exit(SimFiber *f) {
        f->state = kDone;
        done++;
        if (first_done < 0) first_done = (int)f->ctx.tindex;
        uint32_t s = f->ctx.sid;
        sg_live[s]--;
        sg_mask[s] &= ~(1u << f->ctx.lane);
        if (bar_arrived > 0) {
            SimFiber *w0 = nullptr;
            for (auto &g : fibers)
                if (g->state == kWaitBarrier) { w0 = g.get(); break; }
            fail(f, "divergent-barrier",
                 thread_desc(f) + ": returned without reaching the threadgroup_barrier at " +
                     where(bar_site.file, bar_site.line) + " where " + std::to_string(bar_arrived) +
                     " thread(s) wait" + (w0 ? " (e.g. " + thread_desc(w0) + ")" : std::string()));
        }
        if (sg_arrived[s] > 0) {
            if (sg_site[s].kind == kSyncSimdFull)
                fail(f, "divergent-barrier",
                     thread_desc(f) + ": returned while its SIMD group waits at " + sg_site[s].what + " (" +
                         where(sg_site[s].file, sg_site[s].line) + "), which needs all 32 lanes");
            if (sg_arrived[s] == sg_live[s]) {
                uint32_t par = 0;
                for (uint32_t i = s * kSimdWidth; i < std::min(n, (s + 1) * kSimdWidth); i++)
                    if (fibers[i]->state == kWaitSimd) { par = (fibers[i]->ctx.coll - 1) & 1u; break; }
                release_simd(s, par);
            }
        }
    }

    static void fiber_main(Fiber *fb);

    bool ensure_fibers() {
        while (fibers.size() < n) {
            fibers.emplace_back(new SimFiber());
            SimFiber *f = fibers.back().get();
            f->w = this;
            f->ctx.runtime = f;
            if (!fiber_init(&f->fiber, &Worker::fiber_main, kFiberStack)) return false;
        }
        return true;
    }

    // Random schedules shuffle the thread order before every pass (forward and reverse keep theirs).
    void shuffle_order() {
        if (L->run->order != kRandom) return;
        shuffle(order.data(), n);
    }
    void shuffle(uint32_t *v, uint32_t count) {
        for (uint32_t i = count > 0 ? count - 1 : 0; i > 0; i--) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            uint32_t j = (uint32_t)(rng % (i + 1));
            std::swap(v[i], v[j]);
        }
    }

    std::string deadlock_message() {
        // Mixed waits: some threads at a barrier, some of their SIMD group at a SIMD function.
        SimFiber *a = nullptr, *b = nullptr;
        for (auto &g : fibers) {
            if (g->ctx.tindex >= n) break;
            if (g->state == kWaitSimd && !a) a = g.get();
            if (g->state == kWaitBarrier && !b) b = g.get();
        }
        std::string m = group_desc() + ": threads wait at different synchronisation points:";
        if (a) m += " " + thread_desc(a) + " waits at " + a->what + " (" + where(a->wfile, a->wline) + ")";
        if (b) m += (a ? ", while " : " ") + thread_desc(b) + " waits at threadgroup_barrier (" + where(b->wfile, b->wline) + ")";
        return m;
    }

    std::string signal_message(SimFiber *f);

    // Runs one threadgroup to completion; returns false when it faulted.
    bool run_group(uint32_t g) {
        const LaunchConfig &cfg = L->cfg;
        group = g;
        epoch++;
        tgid[0] = g % cfg.grid[0];
        tgid[1] = (g / cfg.grid[0]) % cfg.grid[1];
        tgid[2] = g / (cfg.grid[0] * cfg.grid[1]);
        for (uint32_t s = 0; s < nsg; s++) {
            uint32_t cnt = std::min<uint32_t>(kSimdWidth, n - s * kSimdWidth);
            sg_arrived[s] = 0;
            sg_live[s] = cnt;
            sg_mask[s] = cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1);
            sg_site[s] = SiteRec();
            sgs[s].mask[0] = sgs[s].mask[1] = sg_mask[s];
        }
        bar_arrived = 0;
        done = 0;
        first_done = -1;
        abort = false;
        for (uint32_t i = 0; i < n; i++) {
            SimFiber *f = fibers[i].get();
            if (!f->fiber.started && !fiber_init(&f->fiber, &Worker::fiber_main, kFiberStack)) {
                L->add_fault("error", "cannot allocate a fiber stack");
                return false;
            }
            ThreadCtx &c = f->ctx;
            c.tindex = i;
            c.tid[0] = i % cfg.threads[0];
            c.tid[1] = (i / cfg.threads[0]) % cfg.threads[1];
            c.tid[2] = i / (cfg.threads[0] * cfg.threads[1]);
            for (int d = 0; d < 3; d++) {
                c.tgid[d] = tgid[d];
                c.tptg[d] = cfg.threads[d];
                c.ngroups[d] = cfg.grid[d];
            }
            c.sid = i / kSimdWidth;
            c.lane = i % kSimdWidth;
            c.nsimd = nsg;
            c.coll = 0;
            c.sg = &sgs[c.sid];
            c.buf = bufptr;
            c.launch = &L->values;
            f->state = kReady;
            f->wfile = nullptr;
            f->wline = 0;
            f->what = "kernel start";
        }
        for (TgArray &a : arrays) memset(a.g.data, L->run->poison, a.bytes);
        rng = L->run->seed ^ (0x9e3779b97f4a7c15ull * (g + 1));
        if (!rng) rng = 1;
        order.resize(n);
        for (uint32_t i = 0; i < n; i++) order[i] = L->run->order == kReverse ? n - 1 - i : i;

        for (uint32_t s = 0; s < nsg; s++) sg_order[s] = L->run->order == kReverse ? nsg - 1 - s : s;
        for (uint32_t l = 0; l < (uint32_t)kSimdWidth; l++)
            lane_order[l] = L->run->order == kReverse ? kSimdWidth - 1 - l : l;
        if (hz) hz->begin_group();

        for (;;) {
            if (L->cancelled.load(std::memory_order_relaxed)) {  // between fiber steps (fa_cancel.h)
                for (uint32_t i = 0; i < n; i++) fibers[i]->fiber.started = false;
                return false;
            }
            bool ran = false;
            if (L->run->pace == kRunAhead) {
                if (L->run->order == kRandom) shuffle(sg_order, nsg);
                for (uint32_t si = 0; si < nsg; si++) {  // one SIMD group as far as it gets, then the next
                    const uint32_t lo = sg_order[si] * kSimdWidth;
                    for (bool progress = true; progress;) {
                        progress = false;
                        if (L->run->order == kRandom) shuffle(lane_order, kSimdWidth);
                        for (uint32_t k = 0; k < (uint32_t)kSimdWidth; k++) {
                            const uint32_t i = lo + lane_order[k];
                            if (i >= n || fibers[i]->state != kReady) continue;
                            progress = ran = true;
                            if (!step(fibers[i].get())) return false;
                        }
                    }
                }
            } else {
                shuffle_order();
                for (uint32_t k = 0; k < n; k++) {
                    SimFiber *f = fibers[order[k]].get();
                    if (f->state != kReady) continue;
                    ran = true;
                    if (!step(f)) return false;
                }
            }
            if (done == n) {
                if (L->hash_barriers) hash_arrays(L->kernel->file, 0);  // final contents, "end of the kernel"
                return true;
            }
            if (!ran) {
                L->add_fault("divergent-barrier", deadlock_message());
                for (uint32_t i = 0; i < n; i++) fibers[i]->fiber.started = false;
                return false;
            }
        }
    }

    // Resumes one ready fiber until its next synchronisation point (or its end); false when the threadgroup is
    // abandoned (a fault, or cancellation).
    bool step(SimFiber *volatile f) {
        cur = f;
        tl_ctx = &f->ctx;
        in_fiber = true;
        const char *from_file = f->wfile, *from_what = f->what;
        unsigned from_line = f->wline;
        int r = fiber_resume(&f->fiber, &sched);
        if (L->watch_ptr) note_watch(f, from_what, from_file, from_line);
        in_fiber = false;
        tl_ctx = nullptr;
        cur = nullptr;
        if (r == 2) {  // signal: the fiber's stack is abandoned mid-kernel
            f->fiber.started = false;
            if (hz) hz->let_go();  // it may have been inside the hazard detector
            if (L->cancelled.load(std::memory_order_relaxed)) abort = true;  // the cancel's interrupt, no fault
            if (!abort) L->add_fault(classify_signal(f), signal_message(f));
            abort = true;
        }
        if (abort) {
            // Abandoned fibers are parked mid-kernel (or inside fail()): fresh contexts before reuse.
            for (uint32_t i = 0; i < n; i++) fibers[i]->fiber.started = false;
            return false;
        }
        return true;
    }

    const char *classify_signal(const SimFiber *f);

    // Diagnosis rerun: did the fiber that just ran change the watched word?
    void note_watch(SimFiber *f, const char *from_what, const char *from_file, unsigned from_line) {
        uint32_t v;
        memcpy(&v, L->watch_ptr, 4);
        if (v == L->watch_last) return;
        L->watch_last = v;
        std::string from = from_file ? std::string(from_what) + " at " + where(from_file, from_line)
                                     : std::string("kernel start");
        std::string to = f->state == kDone ? std::string("its return")
                                           : std::string(f->what) + " at " + where(f->wfile, f->wline);
        L->watch_writer = thread_desc(f) + ", between " + from + " and " + to;
    }

    void run_all() {
        tl_worker = this;
        thread = pthread_self();
        thread_known = true;
        // Our own signal stack: a stack overflow in a fiber must still be able to run the handler.
        altstack.resize(64 * 1024);
        stack_t ss, old_ss;
        ss.ss_sp = altstack.data();
        ss.ss_size = altstack.size();
        ss.ss_flags = 0;
        sigaltstack(&ss, &old_ss);
        n = L->nthreads;
        nsg = (n + kSimdWidth - 1) / kSimdWidth;
        if (L->hz && L->run->hazards) {
            hz.reset(new HzWorker());
            hz->hz = L->hz;
            hz->w = this;
            tl_hz = hz.get();
        }
        if (!ensure_fibers()) {
            L->add_fault("error", "cannot allocate fiber stacks");
        } else {
            for (;;) {
                if (L->stop) break;
                uint32_t gi = L->next_group.fetch_add(1);
                if (gi >= L->ngroups_total) break;
                uint32_t g = L->group_order.empty() ? gi : L->group_order[gi];
                tg_started_ns = now_ns();
                bool ok = run_group(g);
                tg_started_ns = 0;
                if (!ok) break;
            }
        }
        thread_known = false;
        sigaltstack(&old_ss, nullptr);
        tl_worker = nullptr;
        tl_hz = nullptr;
        for (auto &f : fibers) f->fiber.stack.release();
        for (auto &a : arrays) a.g.destroy();
    }
};

// Signal plumbing (signals.cpp).
void install_signal_handlers();
void *fault_pc(void *uctx);
void *fault_sp(void *uctx);
std::string pc_text(void *pc);

}  // namespace detail
}  // namespace fasim
