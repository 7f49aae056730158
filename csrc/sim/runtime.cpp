// runtime.cpp - the Metal simulator's execution engine: kernel registry, per-threadgroup fiber scheduler with real
// barriers and SIMD collectives, guarded buffers, fault capture (signals, divergence), and the multi-schedule launch
// that compares results to find races and reads of uninitialised threadgroup memory.
#undef _FORTIFY_SOURCE  // we _longjmp out of signal handlers and across fiber stacks (see fiber.cpp)
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fiber.h"
#include "guarded.h"
#include "include/fasim_rt.h"
#include "sim_api.h"

namespace fasim {

thread_local ThreadCtx *tl_ctx = nullptr;

// ------------------------------------------------------------------------------------------------ registry
static const KernelInfo *g_registry = nullptr;  // constant-initialised, so registrars may run in any order

KernelRegistrar::KernelRegistrar(KernelInfo *k) {
    k->next = g_registry;
    g_registry = k;
}

const KernelInfo *find_kernel(const char *name) {
    if (!name) return nullptr;
    for (const KernelInfo *k = g_registry; k; k = k->next)
        if (strcmp(k->name, name) == 0) return k;
    return nullptr;
}

std::vector<std::string> kernel_names() {
    std::vector<std::string> v;
    for (const KernelInfo *k = g_registry; k; k = k->next) v.push_back(k->name);
    std::sort(v.begin(), v.end());
    return v;
}

// ------------------------------------------------------------------------------------------------ launch state
namespace {

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

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

double timeout_seconds() {
    const char *e = getenv("FLASH_ATTN_CY_SIM_TIMEOUT");
    double v = e ? atof(e) : 0.0;
    return v > 0.0 ? v : kDefaultTimeoutSeconds;
}

enum Order { kForward, kReverse, kRandom };

struct RunSpec {
    Order order;
    uint64_t seed;
    unsigned char poison;
    unsigned char slack;
    bool end_aligned;
    const char *label;
};

struct Region {                // one guarded copy of caller memory (overlapping bindings share one)
    char *orig;
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
    std::atomic<uint32_t> next_group{0};
    std::vector<uint32_t> group_order;  // threadgroup launch order of this run (empty: 0, 1, 2, ...)
    size_t suppressed = 0;

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
};

bool same_site(const SiteRec &s, const char *file, unsigned line, const char *what) {
    return s.line == line && (s.what == what || strcmp(s.what, what) == 0) &&
           (s.file == file || strcmp(s.file, file) == 0);
}

thread_local Worker *tl_worker = nullptr;

std::string where(const char *file, unsigned line) {
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
    SiteRec bar_site;
    bool abort = false;
    volatile bool in_fiber = false;
    std::atomic<int64_t> tg_started_ns{0};  // 0 while not running a threadgroup (read by the watchdog)
    std::atomic<bool> thread_known{false};
    pthread_t thread;
    SimFiber *cur = nullptr;
    uint64_t rng = 0;
    uint64_t epoch = 0;  // counts threadgroups run by this worker
    std::vector<uint32_t> order;
    // signal capture
    volatile int sig = 0;
    void *sig_addr = nullptr;
    void *sig_pc = nullptr;  // faulting instruction, for "[pc: module+offset]" (flash_attn_cy.sim maps it to a line)
    int sig_write = -1;  // 1 write, 0 read, -1 unknown
    std::vector<char> altstack;

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
        sgs[s].mask[par] = sg_mask[s];
        sg_arrived[s] = 0;
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
        for (uint32_t i = n - 1; i > 0; i--) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            uint32_t j = (uint32_t)(rng % (i + 1));
            std::swap(order[i], order[j]);
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

        for (;;) {
            bool ran = false;
            shuffle_order();
            for (uint32_t k = 0; k < n; k++) {
                SimFiber *volatile f = fibers[order[k]].get();
                if (f->state != kReady) continue;
                ran = true;
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
                    if (!abort)
                        L->add_fault(sig == SIGFPE || sig == kWatchdogSignal || sig_addr == nullptr ? "error"
                                                                                                    : classify_signal(),
                                     signal_message(f));
                    abort = true;
                }
                if (abort) {
                    // Abandoned fibers are parked mid-kernel (or inside fail()): fresh contexts before reuse.
                    for (uint32_t i = 0; i < n; i++) fibers[i]->fiber.started = false;
                    return false;
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

    const char *classify_signal();

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
        for (auto &f : fibers) f->fiber.stack.release();
        for (auto &a : arrays) a.g.destroy();
    }
};

void Worker::fiber_main(Fiber *fb) {
    SimFiber *f = reinterpret_cast<SimFiber *>(reinterpret_cast<char *>(fb) - offsetof(SimFiber, fiber));
    f->w->L->kernel->entry(f->ctx);
    f->w->thread_exit(f);
}

const char *Worker::classify_signal() {
    for (const Region &r : L->regions)
        if (r.g.contains_mapping(sig_addr)) return "out-of-bounds";
    for (const TgArray &a : arrays)
        if (a.g.contains_mapping(sig_addr)) return "out-of-bounds";
    return "error";
}

// " [pc: /path/module.so+0x1234]": the run-time compiled modules carry line tables that map it to the .metal line.
std::string pc_text(void *pc) {
    Dl_info info;
    if (!pc || !dladdr(pc, &info) || !info.dli_fname || !info.dli_fbase) return "";
    char b[64];
    snprintf(b, sizeof b, "+0x%lx]", (unsigned long)((char *)pc - (char *)info.dli_fbase));
    return std::string(" [pc: ") + info.dli_fname + b;
}

std::string Worker::signal_message(SimFiber *f) {
    std::string who = thread_desc(f);
    if (sig == kWatchdogSignal) {
        char t[512];
        snprintf(t, sizeof t, ": still running after %.0f s without finishing the threadgroup (an infinite loop, or a "
                 "spin-wait on memory another thread writes, which the simulator's cooperative threads cannot "
                 "preempt); FLASH_ATTN_CY_SIM_TIMEOUT sets the limit", timeout_seconds());
        return who + t + "; last synchronisation point: " +
               (f->wfile ? std::string(f->what) + " at " + where(f->wfile, f->wline) : std::string("kernel start"));
    }
    std::string after = pc_text(sig_pc) + "; last synchronisation point: " +
                        (f->wfile ? std::string(f->what) + " at " + where(f->wfile, f->wline) : std::string("kernel start"));
    const char *acc = sig_write == 1 ? "write" : (sig_write == 0 ? "read" : "access");
    char b[1024];
    if (sig == SIGFPE) return who + ": arithmetic exception (integer division by zero?)" + after;
    if (f->fiber.stack.in_guard(sig_addr)) return who + ": stack overflow (thread-private arrays too large?)" + after;
    for (const Region &r : L->regions) {
        if (!r.g.contains_mapping(sig_addr)) continue;
        std::string names;
        for (int i : r.indices) names += (names.empty() ? "" : "/") + std::string(r.is_bytes ? "bytes(" : "buffer(") + std::to_string(i) + ")";
        long off = (long)((const char *)sig_addr - r.g.data);
        int side = r.g.guard_side(sig_addr);
        if (side == 0 && !r.writable) {
            snprintf(b, sizeof b, ": write into read-only %s at byte offset %ld", names.c_str(), off);
            return who + b + after;
        }
        snprintf(b, sizeof b, ": %s %s %s (%zu bytes) at byte offset %ld", acc,
                 side < 0 ? "before the start of" : "past the end of", names.c_str(), r.len, off);
        return who + b + after;
    }
    for (const TgArray &a : arrays) {
        if (!a.g.contains_mapping(sig_addr)) continue;
        long off = (long)((const char *)sig_addr - a.g.data);
        snprintf(b, sizeof b, ": %s %s threadgroup array '%s' (%zu bytes, declared at %s:%u) at byte offset %ld", acc,
                 a.g.guard_side(sig_addr) < 0 ? "before the start of" : "past the end of", a.site->name, a.bytes,
                 a.site->file, a.site->line, off);
        return who + b + after;
    }
    snprintf(b, sizeof b, ": invalid memory %s at address %p (wild or misaligned pointer)", acc, sig_addr);
    return who + b + after;
}

// ------------------------------------------------------------------------------------------------ signals
void *fault_pc(void *uctx) {
    ucontext_t *uc = (ucontext_t *)uctx;
    (void)uc;
#if defined(__linux__) && defined(__x86_64__)
    return (void *)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__linux__) && defined(__aarch64__)
    return (void *)uc->uc_mcontext.pc;
#elif defined(__APPLE__) && defined(__aarch64__)
    return (void *)uc->uc_mcontext->__ss.__pc;
#elif defined(__APPLE__) && defined(__x86_64__)
    return (void *)uc->uc_mcontext->__ss.__rip;
#else
    return nullptr;
#endif
}

constexpr int kNumSignals = 4;
struct sigaction g_old[kNumSignals];
std::mutex g_sig_mu;
const int kSignals[kNumSignals] = {SIGSEGV, SIGBUS, SIGFPE, kWatchdogSignal};

void on_signal(int sig, siginfo_t *si, void *uctx) {
    Worker *w = tl_worker;
    if (w && w->in_fiber) {
        w->sig = sig;
        w->sig_addr = si->si_addr;
        w->sig_pc = fault_pc(uctx);
        w->sig_write = -1;
#if defined(__linux__) && defined(__x86_64__)
        if (sig == SIGSEGV) w->sig_write = (((ucontext_t *)uctx)->uc_mcontext.gregs[REG_ERR] & 2) ? 1 : 0;
#endif
        _longjmp(w->sched, 2);
    }
    if (w && sig == kWatchdogSignal) return;  // arrived between fibers: the watchdog asks again shortly
    // Not ours: chain to the previous handler. Each run-time compiled module has its own copy of this runtime, and
    // handlers may chain to each other; a second entry on this thread means a loop: fall back to the default.
    static thread_local int chain_depth = 0;
    if (chain_depth > 0) {
        signal(sig, SIG_DFL);
        return;
    }
    struct DepthGuard {
        DepthGuard() { chain_depth++; }
        ~DepthGuard() { chain_depth--; }
    } guard;
    for (int i = 0; i < kNumSignals; i++) {
        if (kSignals[i] != sig) continue;
        struct sigaction &o = g_old[i];
        if (o.sa_flags & SA_SIGINFO) {
            if (o.sa_sigaction) { o.sa_sigaction(sig, si, uctx); return; }
        } else if (o.sa_handler == SIG_IGN) {
            return;
        } else if (o.sa_handler != SIG_DFL && o.sa_handler) {
            o.sa_handler(sig);
            return;
        }
        sigaction(sig, &o, nullptr);  // default action: re-executing the faulting instruction now terminates
        return;
    }
}

// (Re)install our handler if someone (e.g. Python's faulthandler) replaced it; foreign faults chain to theirs.
void install_signal_handlers() {
    std::lock_guard<std::mutex> lk(g_sig_mu);
    for (int i = 0; i < kNumSignals; i++) {
        struct sigaction cur;
        sigaction(kSignals[i], nullptr, &cur);
        if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_signal) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        sigaction(kSignals[i], &sa, &g_old[i]);
    }
}

// ------------------------------------------------------------------------------------------------ orchestration
std::string describe_diff(const Region &r, const char *a, const char *b, size_t off, const char *a_label,
                          const char *b_label) {
    std::string names;
    for (int i : r.indices) names += (names.empty() ? "" : "/") + std::string("buffer(") + std::to_string(i) + ")";
    size_t w = off & ~(size_t)3;
    uint32_t va = 0, vb = 0;
    size_t n = std::min<size_t>(4, r.len - w);
    memcpy(&va, a + w, n);
    memcpy(&vb, b + w, n);
    float fa, fb;
    memcpy(&fa, &va, 4);
    memcpy(&fb, &vb, 4);
    char m[512];
    snprintf(m, sizeof m, "%s bytes %zu..%zu hold 0x%08x (%g as float32) under the %s run but 0x%08x (%g) under the "
             "%s run", names.c_str(), w, w + n - 1, va, (double)fa, a_label, vb, (double)fb, b_label);
    return m;
}

bool execute_run(Launch &L, const RunSpec &spec) {
    L.run = &spec;
    L.stop = false;
    L.next_group = 0;
    // Threadgroups start in the schedule's order too, so that races between threadgroups (through device memory)
    // also change results.
    L.group_order.clear();
    if (spec.order != kForward) {
        L.group_order.resize(L.ngroups_total);
        for (uint32_t i = 0; i < L.ngroups_total; i++)
            L.group_order[i] = spec.order == kReverse ? L.ngroups_total - 1 - i : i;
        if (spec.order == kRandom) {
            uint64_t x = spec.seed | 1;
            for (uint32_t i = L.ngroups_total - 1; i > 0; i--) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                std::swap(L.group_order[i], L.group_order[(uint32_t)(x % (i + 1))]);
            }
        }
    }
    for (Region &r : L.regions) {
        if (!r.g.create(r.len, spec.end_aligned, spec.slack)) {
            L.add_fault("error", "cannot map memory for a buffer copy");
            return false;
        }
        if (r.len) memcpy(r.g.data, r.orig, r.len);
        if (!r.writable) r.g.protect_readonly();
    }
    if (L.hash_barriers) {
        L.hashes.assign(L.ngroups_total, {});
    }
    int nworkers = L.cfg.host_threads > 0 ? L.cfg.host_threads : (int)std::max(1u, std::thread::hardware_concurrency());
    if (L.watch_region >= 0) {  // diagnosis: one worker, so "last writer" is well defined
        nworkers = 1;
        L.watch_ptr = L.regions[L.watch_region].g.data + L.watch_off;
        memcpy(&L.watch_last, L.watch_ptr, 4);
        L.watch_writer.clear();
    }
    nworkers = (int)std::min<uint32_t>((uint32_t)nworkers, L.ngroups_total);
    std::vector<std::unique_ptr<Worker>> workers;
    for (int i = 0; i < nworkers; i++) {
        workers.emplace_back(new Worker());
        Worker &w = *workers.back();
        w.L = &L;
        for (int b = 0; b < kMaxBuffers; b++)
            w.bufptr[b] = L.bound[b] ? L.regions[L.bind[b].region].g.data + L.bind[b].offset : nullptr;
    }
    // Watchdog: interrupts a worker whose current threadgroup exceeds the time limit (see kDefaultTimeoutSeconds).
    std::mutex wd_mu;
    std::condition_variable wd_cv;
    bool wd_done = false;
    const int64_t limit_ns = (int64_t)(timeout_seconds() * 1e9);
    std::thread watchdog([&] {
        std::unique_lock<std::mutex> lk(wd_mu);
        while (!wd_cv.wait_for(lk, std::chrono::milliseconds(200), [&] { return wd_done; })) {
            int64_t now = now_ns();
            for (auto &w : workers) {
                int64_t t0 = w->tg_started_ns.load();
                if (t0 && now - t0 > limit_ns && w->thread_known) pthread_kill(w->thread, kWatchdogSignal);
            }
        }
    });
    std::vector<std::thread> threads;
    for (int i = 1; i < nworkers; i++) threads.emplace_back([&workers, i] { workers[i]->run_all(); });
    workers[0]->run_all();
    for (auto &t : threads) t.join();
    {
        std::lock_guard<std::mutex> lk(wd_mu);
        wd_done = true;
    }
    wd_cv.notify_all();
    watchdog.join();
    bool ok = L.faults.empty();
    for (Region &r : L.regions) {
        long d = r.g.slack_damage(spec.slack);
        if (d >= 0 && ok) {
            std::string names;
            for (int i : r.indices) names += (names.empty() ? "" : "/") + std::string("buffer(") + std::to_string(i) + ")";
            char b[256];
            snprintf(b, sizeof b, "kernel '%s': write %s %s (%zu bytes) at byte offset %ld (caught by the poisoned "
                     "alignment slack; threadgroup and thread unknown)",
                     L.kernel->name, d < 0 ? "before the start of" : "past the end of", names.c_str(), r.len, d);
            L.add_fault("out-of-bounds", b);
        }
    }
    return L.faults.empty();
}

void free_run(Launch &L);

// Reruns the forward run and the given one serially, watching one output word, to name the thread that last wrote
// it in each (a fault-path diagnosis: it costs two extra runs).
std::string last_writers(Launch &L, int region, size_t off, const RunSpec &a, const RunSpec &b) {
    if (L.regions[region].len < off + 4) return "";
    std::vector<Fault> saved = L.faults;
    auto hashes = std::move(L.hashes);
    bool hb = L.hash_barriers;
    L.hash_barriers = false;
    std::string who[2];
    int n = 0;
    for (const RunSpec *spec : {&a, &b}) {
        L.faults.clear();
        free_run(L);
        L.watch_region = region;
        L.watch_off = off;
        execute_run(L, *spec);
        who[n++] = L.watch_writer.empty() ? std::string("no thread (never written)") : L.watch_writer;
        L.watch_region = -1;
        L.watch_ptr = nullptr;
    }
    L.faults = saved;
    L.hashes = std::move(hashes);
    L.hash_barriers = hb;
    if (who[0] == who[1]) return "; that word is last written by " + who[0] + " in both runs";
    return std::string("; that word is last written by ") + who[0] + " under the " + a.label + " run and by " +
           who[1] + " under the " + b.label + " run";
}

void free_run(Launch &L) {
    for (Region &r : L.regions) r.g.destroy();
}

void compare_hashes(Launch &L, const std::vector<std::vector<BarrierHash>> &base_hashes, const RunSpec &spec) {
    const LaunchConfig &cfg = L.cfg;
    const KernelInfo *kernel = L.kernel;
    if (L.faults.empty() && spec.poison == kPoisonA && L.hash_barriers) {
                for (size_t g = 0; g < L.hashes.size() && L.faults.empty(); g++) {
                    const auto &a = base_hashes[g], &b = L.hashes[g];
                    for (size_t j = 0; j < std::min(a.size(), b.size()); j++) {
                        if (a[j].hash == b[j].hash) continue;
                        uint32_t t0 = (uint32_t)(g % cfg.grid[0]), t1 = (uint32_t)((g / cfg.grid[0]) % cfg.grid[1]),
                                 t2 = (uint32_t)(g / ((uint64_t)cfg.grid[0] * cfg.grid[1]));
                        char m[1024];
                        char at[512];
                        if (a[j].line)
                            snprintf(at, sizeof at, "at the threadgroup_barrier at %s:%u", a[j].file, a[j].line);
                        else
                            snprintf(at, sizeof at, "at the end of the kernel");
                        snprintf(m, sizeof m,
                                 "kernel '%s', threadgroup (%u,%u,%u): threadgroup array '%s' (declared at %s:%u) holds "
                                 "different values %s under the forward and %s schedules: threads of the phase "
                                 "before that point race on it (a missing threadgroup_barrier?)",
                                 kernel->name, t0, t1, t2, a[j].site->name, a[j].site->file, a[j].site->line, at,
                                 spec.label);
                        L.add_fault("race", m);
                        break;
                    }
                }
            }
        }

}  // namespace

// Tg arrays are per worker and per run; called on a fiber.
void *tg_alloc(const TgSite *site, size_t bytes, size_t align) {
    (void)align;  // guarded data is 16-byte aligned (end-aligned data is rounded down to 16)
    SimFiber *f = static_cast<SimFiber *>(ctx().runtime);
    Worker *w = f->w;
    for (TgArray &a : w->arrays)
        if (a.site == site) {
            a.epoch = w->epoch;
            return a.g.data;
        }
    w->arrays.push_back(TgArray{site, bytes, Guarded(), w->epoch});
    TgArray &a = w->arrays.back();
    if (!a.g.create(bytes, w->L->run->end_aligned, w->L->run->slack)) w->fail(f, "error", "cannot map threadgroup memory");
    memset(a.g.data, w->L->run->poison, bytes);
    size_t total = 0;
    for (const TgArray &x : w->arrays)
        if (x.epoch == w->epoch) total += x.bytes;
    if (total > 32768)
        w->fail(f, "error", w->thread_desc(f) + ": threadgroup memory exceeds Apple's 32 KiB limit (" +
                                std::to_string(total) + " bytes after '" + site->name + "' at " +
                                where(site->file, site->line) + ")");
    return a.g.data;
}

void simd_sync(ThreadCtx &c, const char *file, unsigned line, const char *what, int kind) {
    SimFiber *f = static_cast<SimFiber *>(c.runtime);
    Worker *w = f->w;
    uint32_t s = c.sid;
    f->wfile = file;
    f->wline = line;
    f->what = what;
    if (kind == kSyncSimdFull && w->sg_live[s] != (uint32_t)kSimdWidth)
        w->fail(f, "divergent-barrier",
                w->thread_desc(f) + ": " + what + " at " + where(file, line) +
                    " needs all 32 lanes of the SIMD group, but " +
                    std::to_string(kSimdWidth - (int)w->sg_live[s]) + " have returned or do not exist");
    if (w->sg_arrived[s] == 0) {
        w->sg_site[s] = SiteRec{file, line, what, kind};
    } else if (!same_site(w->sg_site[s], file, line, what)) {
        w->fail(f, "divergent-barrier",
                w->thread_desc(f) + ": reached " + what + " at " + where(file, line) +
                    " while other lanes of its SIMD group wait at " + w->sg_site[s].what + " at " +
                    where(w->sg_site[s].file, w->sg_site[s].line));
    }
    if (++w->sg_arrived[s] == w->sg_live[s]) {
        w->release_simd(s, (c.coll - 1) & 1u);
        return;  // the last lane to arrive goes on without a switch
    }
    f->state = kWaitSimd;
    fiber_yield(&f->fiber);
}

void tg_barrier(ThreadCtx &c, const char *file, unsigned line, const char *what) {
    SimFiber *f = static_cast<SimFiber *>(c.runtime);
    Worker *w = f->w;
    f->wfile = file;
    f->wline = line;
    f->what = what;
    if (w->done > 0) {
        const SimFiber *g = w->fibers[w->first_done].get();
        w->fail(f, "divergent-barrier",
                w->thread_desc(f) + ": reached threadgroup_barrier at " + where(file, line) + " but " +
                    w->thread_desc(g) + " already returned without reaching it");
    }
    if (w->bar_arrived == 0) {
        w->bar_site = SiteRec{file, line, what, 0};
    } else if (!same_site(w->bar_site, file, line, what)) {
        w->fail(f, "divergent-barrier",
                w->thread_desc(f) + ": reached threadgroup_barrier at " + where(file, line) +
                    " while other threads wait at the threadgroup_barrier at " + where(w->bar_site.file, w->bar_site.line));
    }
    f->state = kWaitBarrier;
    if (++w->bar_arrived == w->n) {
        w->bar_arrived = 0;
        for (uint32_t i = 0; i < w->n; i++) w->fibers[i]->state = kReady;
        if (w->L->hash_barriers) w->hash_arrays(file, line);
    }
    fiber_yield(&f->fiber);  // always switch, so that the schedule orders every phase exactly
}

void kernel_error(const char *kind, const char *file, unsigned line, const char *msg) {
    SimFiber *f = static_cast<SimFiber *>(ctx().runtime);
    f->w->fail(f, kind, f->w->thread_desc(f) + ": " + msg + " (" + where(file, line) + ")");
}

std::vector<Fault> launch(const KernelInfo *kernel, const LaunchConfig &cfg, const std::vector<BufferArg> &buffers,
                          const std::vector<BytesArg> &bytes) {
    if (!kernel) return {{"error", "launch: no kernel (find_kernel returned null?)"}};
    Launch L;
    L.kernel = kernel;
    L.cfg = cfg;
    uint64_t nthreads = 1, ngroups = 1;
    for (int d = 0; d < 3; d++) {
        if (cfg.grid[d] == 0 || cfg.threads[d] == 0)
            return {{"error", std::string("launch of '") + kernel->name + "': grid and threadgroup sizes must be >= 1"}};
        nthreads *= cfg.threads[d];
        ngroups *= cfg.grid[d];
    }
    if (nthreads > (uint64_t)kMaxThreads)
        return {{"error", std::string("launch of '") + kernel->name + "': " + std::to_string(nthreads) +
                              " threads per threadgroup exceed Metal's limit of 1024"}};
    if (ngroups > 0xffffffffull)
        return {{"error", std::string("launch of '") + kernel->name + "': too many threadgroups"}};
    L.nthreads = (uint32_t)nthreads;
    L.ngroups_total = (uint32_t)ngroups;
    for (int i = 0; i < kMaxBuffers; i++) L.bound[i] = false;

    // Regions: overlapping buffer bindings share one copy so that aliasing behaves as on the GPU.
    struct Item { char *p; size_t n; bool w; int idx; bool is_bytes; };
    std::vector<Item> items;
    for (const BufferArg &b : buffers) {
        if (b.index < 0 || b.index >= kMaxBuffers || L.bound[b.index])
            return {{"error", std::string("launch of '") + kernel->name + "': buffer index " + std::to_string(b.index) +
                                  " is out of range [0, 31) or bound twice"}};
        if (!b.data && b.bytes)
            return {{"error", std::string("launch of '") + kernel->name + "': buffer(" + std::to_string(b.index) + ") is null"}};
        L.bound[b.index] = true;
        items.push_back({(char *)b.data, b.bytes, b.writable, b.index, false});
    }
    for (const BytesArg &b : bytes) {
        if (b.index < 0 || b.index >= kMaxBuffers || L.bound[b.index])
            return {{"error", std::string("launch of '") + kernel->name + "': bytes index " + std::to_string(b.index) +
                                  " is out of range [0, 31) or bound twice"}};
        if (!b.data && b.bytes)
            return {{"error", std::string("launch of '") + kernel->name + "': bytes(" + std::to_string(b.index) + ") is null"}};
        L.bound[b.index] = true;
        items.push_back({(char *)b.data, b.bytes, false, b.index, true});
    }
    for (int i = 0; i < kMaxBuffers; i++)
        if ((kernel->buffer_mask >> i & 1u) && !L.bound[i])
            return {{"error", std::string("launch of '") + kernel->name + "': [[buffer(" + std::to_string(i) +
                                  ")]] is not bound (kernel declared at " + where(kernel->file, kernel->line) + ")"}};
    std::sort(items.begin(), items.end(), [](const Item &a, const Item &b) { return a.p < b.p; });
    std::vector<int> item_region(items.size());
    for (size_t i = 0; i < items.size(); i++) {
        const Item &it = items[i];
        if (!it.is_bytes && !L.regions.empty() && !L.regions.back().is_bytes && it.n && L.regions.back().len &&
            it.p < L.regions.back().orig + L.regions.back().len) {
            Region &r = L.regions.back();
            size_t end = std::max((size_t)(r.orig + r.len - r.orig), (size_t)(it.p + it.n - r.orig));
            r.len = end;
            r.writable = r.writable || it.w;
            r.indices.push_back(it.idx);
        } else {
            Region r;
            r.orig = it.p;
            r.len = it.n;
            r.writable = it.w;
            r.indices = {it.idx};
            r.is_bytes = it.is_bytes;
            L.regions.push_back(std::move(r));
        }
        item_region[i] = (int)L.regions.size() - 1;
        L.bind[it.idx] = Binding{item_region[i], (size_t)(it.p - L.regions.back().orig), it.n};
    }

    install_signal_handlers();

    // Runs: forward first (its results are returned); with schedules > 1 also a run with other poison/slack
    // patterns and start-aligned guards, then reverse and seeded random orders.
    std::vector<RunSpec> runs;
    runs.push_back({kForward, cfg.seed, kPoisonA, kSlackA, true, "forward"});
    if (cfg.schedules > 1) {
        // Order comparisons first: a missing barrier also makes some order read unwritten memory, and "race" is
        // the better diagnosis for it; the poison run then only flags reads no order ever writes first.
        runs.push_back({kReverse, cfg.seed, kPoisonA, kSlackA, true, "reverse"});
        for (int i = 2; i < cfg.schedules; i++)
            runs.push_back({kRandom, cfg.seed + 0x1000193ull * (uint64_t)i, kPoisonA, kSlackA, true, "random"});
        runs.push_back({kForward, cfg.seed, kPoisonB, kSlackB, false, "forward with other poison"});
    }
    L.hash_barriers = cfg.schedules > 1 && cfg.checks;

    std::vector<std::vector<char>> base;  // writable results of the forward run
    std::vector<std::vector<BarrierHash>> base_hashes;
    for (size_t ri = 0; ri < runs.size(); ri++) {
        const RunSpec &spec = runs[ri];
        bool ok = execute_run(L, spec);
        if (ri == 0) {
            for (Region &r : L.regions) base.emplace_back(r.writable ? std::vector<char>(r.g.data, r.g.data + r.len) : std::vector<char>());
            base_hashes.swap(L.hashes);
        } else if (ok) {
            // Compare with the forward run: threadgroup memory first (names the array), then the outputs.
            compare_hashes(L, base_hashes, spec);
            for (size_t k = 0; k < L.regions.size() && L.faults.empty(); k++) {
                Region &r = L.regions[k];
                if (!r.writable || !r.len) continue;
                if (memcmp(base[k].data(), r.g.data, r.len) == 0) continue;
                size_t off = 0;
                while (base[k][off] == r.g.data[off]) off++;
                std::string d = describe_diff(r, base[k].data(), r.g.data, off, "forward", spec.label);
                d += last_writers(L, (int)k, off & ~(size_t)3, runs[0], spec);
                if (spec.poison != kPoisonA)
                    L.add_fault("uninitialized-read",
                                std::string("kernel '") + kernel->name + "': results depend on threadgroup memory never "
                                "written in this launch (or on bytes past the end of a buffer): " + d);
                else
                    L.add_fault("race", std::string("kernel '") + kernel->name +
                                            "': results depend on the order of threads between synchronisation points: " + d);
            }
        }
        free_run(L);
        if (!L.faults.empty()) break;
    }
    // Results of the forward run go back to the caller.
    for (size_t k = 0; k < L.regions.size() && k < base.size(); k++)
        if (L.regions[k].writable && L.regions[k].len) memcpy(L.regions[k].orig, base[k].data(), L.regions[k].len);
    std::vector<Fault> out = L.faults;
    if (L.suppressed) out.push_back({"note", std::to_string(L.suppressed) + " more fault(s) not shown"});
    return out;
}

}  // namespace fasim
