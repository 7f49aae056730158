// scheduler.cpp - the fiber side of the simulator: what barriers, SIMD collectives and threadgroup declarations do
// on the simulated thread (see scheduler.h for the Worker that resumes the fibers).
#include "scheduler.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace fasim {

thread_local ThreadCtx *tl_ctx = nullptr;

namespace detail {

thread_local Worker *tl_worker = nullptr;

void Worker::fiber_main(Fiber *fb) {
    SimFiber *f = reinterpret_cast<SimFiber *>(reinterpret_cast<char *>(fb) - offsetof(SimFiber, fiber));
    FASIM_PROF(prof::on_kernel_entry(f->w, f));
    f->w->L->kernel->entry(f->ctx);
    f->w->thread_exit(f);
}

// A stack overflow: the fault hit the fiber's guard page, or the stack pointer itself left the fiber's stack (a frame
// larger than the guard; kernel modules are built with -fstack-clash-protection so that such frames probe the guard).
static bool is_stack_overflow(const Fiber &fb, const void *addr, const void *sp) {
    const FiberStack &s = fb.stack;
    if (!s.map) return false;
    if (s.in_guard(addr)) return true;
    return sp && (const char *)sp < s.guard_end && (const char *)sp + (64u << 20) > s.map;
}

const char *Worker::classify_signal(const SimFiber *f) {
    if (sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == kWatchdogSignal || sig_addr == nullptr) return "error";
    if (is_stack_overflow(f->fiber, sig_addr, sig_sp)) return "error";
    for (const Region &r : L->regions)
        if (r.g.contains_mapping(sig_addr)) return "out-of-bounds";
    for (const TgArray &a : arrays)
        if (a.g.contains_mapping(sig_addr)) return "out-of-bounds";
    return "error";
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
    if (sig == SIGFPE) return who + ": SIGFPE, arithmetic exception (integer division by zero or overflow)" + after;
    if (sig == SIGILL)
        return who + ": SIGILL, illegal instruction (a trap the compiler put where the code has undefined behaviour, "
                     "e.g. an integer division by a value known to be zero, or a call to a trap builtin)" + after;
    if (sig == SIGTRAP) return who + ": SIGTRAP, trap instruction" + after;
    if (is_stack_overflow(f->fiber, sig_addr, sig_sp)) {
        snprintf(b, sizeof b, ": stack overflow (the simulated thread's stack holds %zu KiB: thread-private arrays too "
                 "large?)", (size_t)(f->fiber.stack.map_len - (size_t)(f->fiber.stack.guard_end - f->fiber.stack.map)) >> 10);
        return who + b + after;
    }
    const char *signame = sig == SIGBUS ? "SIGBUS, " : "SIGSEGV, ";
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
    snprintf(b, sizeof b, ": %sinvalid memory %s at address %p (wild, non-canonical or misaligned pointer)", signame,
             acc, sig_addr);
    return who + b + after;
}

}  // namespace detail

using namespace detail;

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
    if (w->hz) w->hz->on_tg_alloc(w->arrays.size() - 1);
    memset(a.g.data, w->L->run->poison, bytes);
    size_t total = 0;
    for (const TgArray &x : w->arrays)
        if (x.epoch == w->epoch) total += x.bytes;
    FASIM_PROF(prof::on_tg_alloc(w, total));
    if (total > 32768)
        w->fail(f, "error", w->thread_desc(f) + ": threadgroup memory exceeds Apple's 32 KiB limit (" +
                                std::to_string(total) + " bytes after '" + site->name + "' at " +
                                where(site->file, site->line) + ")");
    return a.g.data;
}

void simd_sync(ThreadCtx &c, const char *file, unsigned line, const char *what, int kind, int mem) {
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
        w->sg_site[s] = SiteRec{file, line, what, kind, mem};
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

void tg_barrier(ThreadCtx &c, const char *file, unsigned line, const char *what, int mem) {
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
        w->bar_site = SiteRec{file, line, what, 0, mem};
    } else if (!same_site(w->bar_site, file, line, what)) {
        w->fail(f, "divergent-barrier",
                w->thread_desc(f) + ": reached threadgroup_barrier at " + where(file, line) +
                    " while other threads wait at the threadgroup_barrier at " + where(w->bar_site.file, w->bar_site.line));
    }
    w->bar_site.mem &= mem;  // memory is ordered for what every thread's barrier names
    f->state = kWaitBarrier;
    if (++w->bar_arrived == w->n) {
        FASIM_PROF(prof::on_tg_barrier(w));
        w->bar_arrived = 0;
        if (w->hz) w->hz->on_barrier(w->bar_site.mem, file, line);
        for (uint32_t i = 0; i < w->n; i++) w->fibers[i]->state = kReady;
        if (w->L->hash_barriers) w->hash_arrays(file, line);
    }
    fiber_yield(&f->fiber);  // always switch, so that the schedule orders every phase exactly
}

void kernel_error(const char *kind, const char *file, unsigned line, const char *msg) {
    SimFiber *f = static_cast<SimFiber *>(ctx().runtime);
    f->w->fail(f, kind, f->w->thread_desc(f) + ": " + msg + " (" + where(file, line) + ")");
}

void misaligned_cast(const char *file, unsigned line, const void *addr, size_t align) {
    char msg[160];
    snprintf(msg, sizeof msg, "misaligned pointer: reinterpret_cast to a type aligned to %zu bytes at address %p", align,
             addr);
    kernel_error("error", file, line, msg);
}

// Metal's fast math model (include/fasim_fast_math.h).
int g_fast_math = 0;

void refresh_fast_math() {
    const char *e = getenv("FLASH_ATTN_CY_SIM_FAST_MATH");
    g_fast_math = (e && *e && strcmp(e, "0") != 0) ? 1 : 0;
}

void fast_math_hazard(const char *file, unsigned line, const char *fn, float x, const char *why) {
    char msg[320];
    snprintf(msg, sizeof msg, "%s(%.9g): %s (Metal compiles with fast math: MSL specification, section 8, Table 8.2)",
             fn, double(x), why);
    kernel_error("fast-math-hazard", file, line, msg);
}
}  // namespace fasim
