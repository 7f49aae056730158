// counters.cpp - the work counters of profile builds (counters.h says what is counted; include/fasim_counters.h
// holds the kernel-side hooks): per-worker counts, the memory-access entry points the compiler's ThreadSanitizer
// instrumentation calls, and the JSON that flash_attn_cy.sim reads through fasim_profile_counters().
//
// Only compiled into profile modules (flash_attn_cy/sim/_compile.py adds it to the runtime sources of variant
// "profile"); never into the package's core library.
#include <string.h>

#include <string>

#include "scheduler.h"

#if defined(_WIN32)
#define FASIM_EXPORT __declspec(dllexport)
#else
#define FASIM_EXPORT __attribute__((visibility("default")))
#endif

namespace fasim {
namespace detail {
namespace prof {

struct Access {
    uint64_t bytes_read = 0, bytes_written = 0, loads = 0, stores = 0, atomics = 0;
    void add(const Access &o) {
        bytes_read += o.bytes_read;
        bytes_written += o.bytes_written;
        loads += o.loads;
        stores += o.stores;
        atomics += o.atomics;
    }
};

struct Counts {
    Access buffer[kMaxBuffers];  // by [[buffer(n)]] index (buffers and setBytes data alike)
    Access threadgroup;
    uint64_t mma[kFlopKinds] = {};    // 8x8x8 multiply-accumulates by operand type (fp32, fp16, bf16 entries)
    uint64_t flops[kFlopKinds] = {};  // elementwise, fasim_counters.h
    uint64_t tg_barriers = 0, simd_barriers = 0, simd_collectives = 0;
    uint64_t tg_memory_bytes = 0, private_bytes = 0;  // largest over threadgroups / threads
    void add(const Counts &o) {
        for (int i = 0; i < kMaxBuffers; i++) buffer[i].add(o.buffer[i]);
        threadgroup.add(o.threadgroup);
        for (int k = 0; k < kFlopKinds; k++) {
            mma[k] += o.mma[k];
            flops[k] += o.flops[k];
        }
        tg_barriers += o.tg_barriers;
        simd_barriers += o.simd_barriers;
        simd_collectives += o.simd_collectives;
        tg_memory_bytes = std::max(tg_memory_bytes, o.tg_memory_bytes);
        private_bytes = std::max(private_bytes, o.private_bytes);
    }
};

constexpr int kThreadgroupSpace = -1;

struct Range {
    const char *lo, *hi;
    int index;  // [[buffer(index)]], or kThreadgroupSpace
};

struct WorkerCounts {
    Counts c;
    std::vector<Range> ranges;  // the launch's bindings (lowest index first: aliased bindings count once, there),
                                // then this worker's threadgroup arrays
    size_t nbindings = 0;
    size_t arrays_seen = 0;   // threadgroup arrays of the worker already in `ranges`
    size_t last = 0;          // the range of the previous access (accesses come in runs)
    const char *entry_sp[kMaxThreads] = {};  // per simulated thread: its stack at the kernel's entry
};

// The launch being counted on this (the launching) thread.
struct LaunchCounts {
    bool done = false;  // the forward run has been counted; later runs (other schedules, checks) are not
    Counts total;
    bool is_bytes[kMaxBuffers] = {};
    bool bound[kMaxBuffers] = {};
    std::vector<std::unique_ptr<WorkerCounts>> workers;
};

thread_local std::unique_ptr<LaunchCounts> tl_launch;
thread_local std::string tl_result;  // JSON of the last counted launch on this thread, until read

void begin_launch(Launch &L) {
    tl_result.clear();
    tl_launch.reset(new LaunchCounts());
    for (int i = 0; i < kMaxBuffers; i++) {
        tl_launch->bound[i] = L.bound[i];
        if (L.bound[i]) tl_launch->is_bytes[i] = L.regions[L.bind[i].region].is_bytes;
    }
}

void begin_run(Launch &L, std::vector<std::unique_ptr<Worker>> &workers) {
    LaunchCounts *lc = tl_launch.get();
    if (!lc || lc->done) return;
    std::vector<Range> bindings;
    for (int i = 0; i < kMaxBuffers; i++) {
        if (!L.bound[i]) continue;
        const char *lo = L.regions[L.bind[i].region].g.data + L.bind[i].offset;
        bindings.push_back({lo, lo + L.bind[i].bytes, i});
    }
    lc->workers.clear();
    for (auto &w : workers) {
        lc->workers.emplace_back(new WorkerCounts());
        WorkerCounts *wc = lc->workers.back().get();
        wc->ranges = bindings;
        wc->nbindings = bindings.size();
        w->prof_counts = wc;
    }
}

void end_run(Launch &L, std::vector<std::unique_ptr<Worker>> &workers) {
    (void)L;
    LaunchCounts *lc = tl_launch.get();
    if (!lc || lc->done) return;
    for (auto &w : workers) {
        if (w->prof_counts) lc->total.add(w->prof_counts->c);
        w->prof_counts = nullptr;
    }
    lc->workers.clear();
    lc->done = true;
}

namespace {

void add_json(std::string &s, const char *key, uint64_t v, bool comma = true) {
    s += (comma ? ",\"" : "\"") + std::string(key) + "\":" + std::to_string(v);
}

void access_json(std::string &s, const Access &a) {
    add_json(s, "bytes_read", a.bytes_read, false);
    add_json(s, "bytes_written", a.bytes_written);
    add_json(s, "loads", a.loads);
    add_json(s, "stores", a.stores);
    add_json(s, "atomics", a.atomics);
}

}  // namespace

void end_launch(Launch &L) {
    LaunchCounts *lc = tl_launch.get();
    if (!lc || !lc->done) {  // no run was counted (refused or cancelled launch)
        tl_launch.reset();
        return;
    }
    const Counts &c = lc->total;
    Access dev, con;
    std::string s = "{\"buffers\":{";
    bool first = true;
    for (int i = 0; i < kMaxBuffers; i++) {
        if (!lc->bound[i]) continue;
        (lc->is_bytes[i] ? con : dev).add(c.buffer[i]);
        s += (first ? "\"" : ",\"") + std::to_string(i) + "\":{\"kind\":\"" + (lc->is_bytes[i] ? "bytes" : "buffer") +
             "\",";
        access_json(s, c.buffer[i]);
        s += "}";
        first = false;
    }
    s += "}";
    add_json(s, "device_bytes_read", dev.bytes_read);
    add_json(s, "device_bytes_written", dev.bytes_written);
    add_json(s, "device_load_ops", dev.loads);
    add_json(s, "device_store_ops", dev.stores);
    add_json(s, "device_atomic_ops", dev.atomics);
    add_json(s, "constant_bytes_read", con.bytes_read);
    add_json(s, "constant_load_ops", con.loads);
    add_json(s, "threadgroup_bytes_read", c.threadgroup.bytes_read);
    add_json(s, "threadgroup_bytes_written", c.threadgroup.bytes_written);
    add_json(s, "threadgroup_load_ops", c.threadgroup.loads);
    add_json(s, "threadgroup_store_ops", c.threadgroup.stores);
    add_json(s, "threadgroup_atomic_ops", c.threadgroup.atomics);
    add_json(s, "simdgroup_mma", c.mma[kFlopFp32] + c.mma[kFlopFp16] + c.mma[kFlopBf16]);
    add_json(s, "threadgroup_barriers", c.tg_barriers);
    add_json(s, "simdgroup_barriers", c.simd_barriers);
    add_json(s, "simdgroup_collectives", c.simd_collectives);
    add_json(s, "threadgroup_memory_bytes", c.tg_memory_bytes);
    add_json(s, "thread_private_bytes", c.private_bytes);
    const uint64_t per_mma = 2 * 8 * 8 * 8;
    s += ",\"flops\":{";
    add_json(s, "mma_fp32", c.mma[kFlopFp32] * per_mma, false);
    add_json(s, "mma_fp16", c.mma[kFlopFp16] * per_mma);
    add_json(s, "mma_bf16", c.mma[kFlopBf16] * per_mma);
    add_json(s, "fp32", c.flops[kFlopFp32]);
    add_json(s, "fp16", c.flops[kFlopFp16]);
    add_json(s, "bf16", c.flops[kFlopBf16]);
    add_json(s, "transcendental", c.flops[kFlopTranscendental]);
    s += "}";
    add_json(s, "threadgroups", L.ngroups_total);
    add_json(s, "threads_per_threadgroup", L.nthreads);
    s += "}";
    tl_result = s;
    tl_launch.reset();
}

void on_kernel_entry(Worker *w, SimFiber *f) {
    if (w->prof_counts) w->prof_counts->entry_sp[f->ctx.tindex] = static_cast<const char *>(__builtin_frame_address(0));
}

void on_tg_barrier(Worker *w) {
    if (w->prof_counts) w->prof_counts->c.tg_barriers++;
}

void on_simd_release(Worker *w, const SiteRec &site) {
    if (!w->prof_counts) return;
    if (site.what && strcmp(site.what, "simdgroup_barrier") == 0) w->prof_counts->c.simd_barriers++;
    else if (site.kind != kSyncSimdFull) w->prof_counts->c.simd_collectives++;  // simdgroup_matrix: counted as MMAs
}

void on_tg_alloc(Worker *w, size_t threadgroup_bytes) {
    if (w->prof_counts && threadgroup_bytes > w->prof_counts->c.tg_memory_bytes) w->prof_counts->c.tg_memory_bytes = threadgroup_bytes;
}

namespace {

enum AccessKind { kLoad, kStore, kAtomicLoad, kAtomicStore, kAtomicRmw };

// One memory access of the kernel's compiled code; `frame` is the frame address of the instrumentation entry point
// the kernel called (so its caller's stack pointer lies just above it).
inline void count_access(const void *addr, size_t n, AccessKind kind, const void *frame) {
    Worker *w = tl_worker;
    if (!w || !w->prof_counts) return;
    WorkerCounts *wc = w->prof_counts;
    const char *p = static_cast<const char *>(addr);
    const ThreadCtx *t = tl_ctx;
    if (t) {  // stack depth below the kernel's entry: the thread-private bytes
        const char *entry = wc->entry_sp[t->tindex], *sp = static_cast<const char *>(frame);
        if (entry && entry > sp && uint64_t(entry - sp) > wc->c.private_bytes) wc->c.private_bytes = uint64_t(entry - sp);
    }
    if (w->arrays.size() != wc->arrays_seen) {  // a threadgroup array was declared since the last access
        wc->ranges.resize(wc->nbindings);
        for (const TgArray &a : w->arrays) wc->ranges.push_back({a.g.data, a.g.data + a.bytes, kThreadgroupSpace});
        wc->arrays_seen = w->arrays.size();
        wc->last = 0;
    }
    Access *acc = nullptr;
    const size_t nr = wc->ranges.size();
    if (wc->last < nr && p >= wc->ranges[wc->last].lo && p < wc->ranges[wc->last].hi) {
        const Range &r = wc->ranges[wc->last];
        acc = r.index >= 0 ? &wc->c.buffer[r.index] : &wc->c.threadgroup;
    } else {
        for (size_t i = 0; i < nr; i++) {
            const Range &r = wc->ranges[i];
            if (p >= r.lo && p < r.hi) {
                acc = r.index >= 0 ? &wc->c.buffer[r.index] : &wc->c.threadgroup;
                wc->last = i;
                break;
            }
        }
    }
    if (!acc) return;  // the thread's own stack, or the runtime's memory (SIMD exchange slots, thread ids)
    // Each kind is one operation (a load, a store, or an atomic of any sort) and reads and / or writes its bytes.
    const bool atomic = kind == kAtomicLoad || kind == kAtomicStore || kind == kAtomicRmw;
    const bool reads = kind == kLoad || kind == kAtomicLoad || kind == kAtomicRmw;
    const bool writes = kind == kStore || kind == kAtomicStore || kind == kAtomicRmw;
    if (atomic) acc->atomics++;
    else if (reads) acc->loads++;
    else acc->stores++;
    if (reads) acc->bytes_read += n;
    if (writes) acc->bytes_written += n;
}

}  // namespace
}  // namespace prof
}  // namespace detail

void prof_flops(int kind, unsigned n) {
    detail::Worker *w = detail::tl_worker;
    if (w && w->prof_counts && kind >= 0 && kind < kFlopKinds) w->prof_counts->c.flops[kind] += n;
}

void prof_atomic(const volatile void *addr, unsigned bytes, int op) {
    using namespace detail::prof;
    count_access(const_cast<const void *>(addr), bytes,
                 op == kAtomicLoadOp ? kAtomicLoad : op == kAtomicStoreOp ? kAtomicStore : kAtomicRmw,
                 __builtin_frame_address(0));
}

void prof_mma(int kind) {
    detail::Worker *w = detail::tl_worker;
    if (w && w->prof_counts && kind >= 0 && kind < kFlopKinds) w->prof_counts->c.mma[kind]++;
}

}  // namespace fasim

// ---- entry points of the compiler's ThreadSanitizer instrumentation (GCC and Clang, -fsanitize=thread) ----------
// Declared as in compiler-rt's sanitizer/tsan_interface.h and tsan_interface_atomic.h; hidden in the module, so a
// real sanitizer runtime elsewhere in the process is never called and never interposes.
using fasim::detail::prof::count_access;
using fasim::detail::prof::kAtomicLoad;
using fasim::detail::prof::kAtomicRmw;
using fasim::detail::prof::kAtomicStore;
using fasim::detail::prof::kLoad;
using fasim::detail::prof::kStore;

#define FASIM_FRAME __builtin_frame_address(0)

extern "C" {

void __tsan_init() {}
void __tsan_func_entry(void *) {}
void __tsan_func_exit() {}

#define FASIM_TSAN_ACCESS(N)                                                                        \
    void __tsan_read##N(void *a) { count_access(a, N, kLoad, FASIM_FRAME); }                               \
    void __tsan_write##N(void *a) { count_access(a, N, kStore, FASIM_FRAME); }                             \
    void __tsan_unaligned_read##N(const void *a) { count_access(a, N, kLoad, FASIM_FRAME); }               \
    void __tsan_unaligned_write##N(void *a) { count_access(a, N, kStore, FASIM_FRAME); }                   \
    void __tsan_volatile_read##N(void *a) { count_access(a, N, kLoad, FASIM_FRAME); }                      \
    void __tsan_volatile_write##N(void *a) { count_access(a, N, kStore, FASIM_FRAME); }                    \
    void __tsan_unaligned_volatile_read##N(void *a) { count_access(a, N, kLoad, FASIM_FRAME); }            \
    void __tsan_unaligned_volatile_write##N(void *a) { count_access(a, N, kStore, FASIM_FRAME); }          \
    void __tsan_read##N##_pc(void *a, void *) { count_access(a, N, kLoad, FASIM_FRAME); }                  \
    void __tsan_write##N##_pc(void *a, void *) { count_access(a, N, kStore, FASIM_FRAME); }
FASIM_TSAN_ACCESS(1)
FASIM_TSAN_ACCESS(2)
FASIM_TSAN_ACCESS(4)
FASIM_TSAN_ACCESS(8)
FASIM_TSAN_ACCESS(16)
#undef FASIM_TSAN_ACCESS

void __tsan_read_range(void *a, unsigned long n) { count_access(a, n, kLoad, FASIM_FRAME); }
void __tsan_write_range(void *a, unsigned long n) { count_access(a, n, kStore, FASIM_FRAME); }
void __tsan_read_range_pc(void *a, unsigned long n, void *) { count_access(a, n, kLoad, FASIM_FRAME); }
void __tsan_write_range_pc(void *a, unsigned long n, void *) { count_access(a, n, kStore, FASIM_FRAME); }
void __tsan_vptr_update(void **, void *) {}
void __tsan_vptr_read(void **) {}

// Clang turns memcpy/memset/memmove into these (copies of structs and arrays).
void *__tsan_memcpy(void *dst, const void *src, unsigned long n) {
    if (n) {
        count_access(src, n, kLoad, FASIM_FRAME);
        count_access(dst, n, kStore, FASIM_FRAME);
    }
    return memcpy(dst, src, n);
}
void *__tsan_memmove(void *dst, const void *src, unsigned long n) {
    if (n) {
        count_access(src, n, kLoad, FASIM_FRAME);
        count_access(dst, n, kStore, FASIM_FRAME);
    }
    return memmove(dst, src, n);
}
void *__tsan_memset(void *dst, int c, unsigned long n) {
    if (n) count_access(dst, n, kStore, FASIM_FRAME);
    return memset(dst, c, n);
}

// Atomics: performed sequentially consistent (what fasim_atomic.h asks for anyway). Not counted here: the MSL atomic
// functions count themselves once each (fasim_atomic.h, prof_atomic), however many builtins they take.
#define FASIM_TSAN_ATOMIC_NOTE(a, bytes, writes) ((void)0)
#include "tsan_atomics.h"
#undef FASIM_TSAN_ATOMIC_NOTE

// The counts of the last launch this thread made, as JSON (counters.h, flash_attn_cy/sim/profile.py), or "" when
// that launch counted nothing (refused before it ran, or cancelled). Reading them clears them. Returns the length
// the whole text needs (with its terminating zero); writes as much as fits.
FASIM_EXPORT size_t fasim_profile_counters(char *out, size_t outlen) {
    const std::string &s = fasim::detail::prof::tl_result;
    if (out && outlen) {
        size_t n = s.size() < outlen - 1 ? s.size() : outlen - 1;
        memcpy(out, s.data(), n);
        out[n] = 0;
        if (s.size() < outlen) fasim::detail::prof::tl_result.clear();
    }
    return s.size() + 1;
}

}  // extern "C"
