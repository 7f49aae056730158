// hazard.h - the simulator's hazard detector: shadow state for every word of threadgroup memory and of the writable
// device buffers a dispatch touches, checked at every load and store of the kernel (CUDA compute-sanitizer's
// racecheck, for Metal). Deterministic: a race is found on the first run, whatever the thread schedule.
//
// How accesses are seen: kernel modules built for hazard detection are compiled with the compiler's ThreadSanitizer
// instrumentation (-fsanitize=thread), which puts a call before every load and store (and turns atomics into calls);
// hazard_hooks.cpp defines those entry points (__tsan_read4, __tsan_atomic32_fetch_add, ...) itself - the sanitizer's
// own runtime is never linked. Modules built without it contain no call at all: detection off costs nothing.
//
// What orders two accesses of one threadgroup (the happens-before model; MSL specification, section 6.9.1
// "Threadgroup and SIMD-group synchronization functions": threadgroup_barrier and simdgroup_barrier are execution
// barriers that also order memory in the address spaces their mem_flags name; mem_none is an execution barrier only):
//   - a threadgroup_barrier between them whose mem_flags name the memory (mem_threadgroup for threadgroup memory,
//     mem_device for device memory);
//   - for two lanes of one SIMD group, also a simdgroup_barrier whose mem_flags name the memory, or a SIMD-group
//     function (simd_sum, simd_shuffle*, simd_ballot, simdgroup_matrix multiply, ...). MSL does not call SIMD-group
//     functions fences (section 6.9.2 presents them as a way to share values between lanes without threadgroup
//     memory); we accept them as ordering points of their own SIMD group because each one is a convergence point
//     whose result depends on every lane's argument, and Apple GPUs run a SIMD group as one instruction stream, so
//     every lane's memory operations before it have issued before any lane's after it. They never order other SIMD
//     groups.
// Nothing orders two threadgroups of one dispatch: a device word written by one threadgroup and read or written by
// another is a race unless both accesses are atomic. Two atomic accesses never race; an atomic and a plain access do.
//
// Shadow cells: one per 2 bytes (half, bfloat and every wider type are exact; a 1-byte access marks its byte), each
// keeping the last write and up to two reads not yet ordered before it (HzCell, 60 bytes). Threadgroup memory: per
// host thread, per threadgroup array. Device memory: one array per writable buffer for the whole dispatch, shared by
// the host threads (lock-striped), mapped lazily (only the pages of cells accessed cost memory).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <array>
#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace fasim {
namespace detail {

struct Launch;
struct Worker;

// mem_flags bits as fasim_simd.h passes them (the MSL enum's values); fasim::kMemCollective (fasim_rt.h) marks a
// SIMD-group function, which orders both address spaces within its SIMD group (see above).
constexpr int kMemDevice = 1;
constexpr int kMemThreadgroup = 2;

enum HzSpace { kHzThreadgroup = 0, kHzDevice = 1 };

// One access as the shadow keeps it (20 bytes).
struct HzAcc {
    uint32_t group1 = 0;     // 1 + linear threadgroup index (0: no access recorded)
    uint32_t bar = 0;        // threadgroup barriers its threadgroup had passed whose mem_flags name this memory
    uint32_t simd = 0;       // ordering points its SIMD group had passed for this memory (see above)
    uint16_t site = 0;       // code location: index into Hazards::sites
    uint16_t bits = 0;       // thread_index_in_threadgroup (10 bits) | byte mask << 10 | kHzWrite | kHzAtomic
    uint16_t bar_all = 0;    // all threadgroup barriers passed, low 16 bits (only for the message)
    uint16_t simd_all = 0;   // all SIMD-group synchronisations passed, low 16 bits (only for the message)

    uint32_t tindex() const { return bits & 0x3ffu; }
    uint32_t mask() const { return (bits >> 10) & 3u; }
    bool writes() const { return bits & kWrite; }
    bool atomic() const { return bits & kAtomic; }
    static constexpr uint16_t kWrite = 1u << 12, kAtomic = 1u << 13;
};
constexpr uint16_t kHzWrite = HzAcc::kWrite, kHzAtomic = HzAcc::kAtomic;

struct HzCell {
    HzAcc w, r[2];
};

struct HzRange {
    uintptr_t lo = 0;
    size_t len = 0;
    int id = 0;               // region index (device) or index into Worker::arrays (threadgroup)
    HzCell *cells = nullptr;  // its shadow
};

// Per dispatch run (one per launch with hazard detection on).
struct Hazards {
    Launch *L = nullptr;
    std::vector<HzRange> device;  // writable regions of the current run (read-only ones cannot race)
    std::vector<std::pair<void *, size_t>> maps;  // their shadow mappings
    static constexpr int kStripes = 4096;
    // Device cells are shared by the host threads: a cell is updated under the lock of its stripe, whose owner is the
    // HzWorker holding it (so that a worker whose fiber is abandoned mid-access - watchdog, cancellation - can let go).
    std::atomic<uintptr_t> stripes[kStripes];
    std::mutex mu;                       // guards `sites` and `reported`
    std::vector<uintptr_t> sites;        // code locations (return addresses of the instrumentation calls)
    std::unordered_map<uintptr_t, uint16_t> site_ids;
    std::set<std::array<uint32_t, 3>> reported;  // (kind, site, site) of the races reported
    static constexpr size_t kMaxReports = 8;
    static constexpr uint16_t kUnknownSite = 0xffff;  // past 65535 distinct locations

    Hazards();
    ~Hazards();
    bool begin_run(std::string *why);  // shadow for the regions' current mappings (they move between runs)
    void end_run();
    uint16_t intern(uintptr_t pc);
    bool first_report(uint32_t kind, uint16_t a, uint16_t b);  // not reported yet (and room for more)
};

// Per worker (host thread): the threadgroup it runs.
struct HzWorker {
    Hazards *hz = nullptr;
    Worker *w = nullptr;
    uint32_t group1 = 0;                           // 1 + the threadgroup running
    uint32_t bar[2] = {0, 0}, bar_all = 0;         // threadgroup barriers passed: [space] with its mem_flag, any
    uint32_t simd[2][32] = {}, simd_all[32] = {};  // per SIMD group
    const char *unfenced_file[2] = {nullptr, nullptr};  // last threadgroup barrier without that space's flag
    unsigned unfenced_line[2] = {0, 0};
    std::vector<HzRange> tg;                     // threadgroup arrays of this worker (index: Worker::arrays)
    std::vector<std::vector<HzCell>> tg_shadow;  // their cells
    uintptr_t site_key[256] = {};                // cache of Hazards::intern
    uint16_t site_val[256] = {};
    std::atomic<int> held{-1};                   // the device stripe this worker is taking or holds, or -1

    void begin_group();
    void on_tg_alloc(size_t array_index);
    void on_barrier(int mem, const char *file, unsigned line);
    void on_simd_release(uint32_t sid, int mem);
    void access(uintptr_t p, size_t n, uint16_t flags, uintptr_t pc);
    void let_go();  // its fiber was abandoned (a signal): release the stripe it may hold

  private:
    uint16_t site_of(uintptr_t pc);
    void cell_access(HzCell &c, const HzRange &r, HzSpace sp, size_t off, const HzAcc &x);
    void report(HzSpace sp, const HzRange &r, size_t off, const HzAcc &prev, const HzAcc &cur, int kind);
    std::string memory_text(HzSpace sp, int id, size_t off) const;
};

// The worker running on this host thread while a hazard run is in progress (else null: the entry points return).
extern thread_local HzWorker *tl_hz;

// The one call of the access path (hazard_hooks.cpp's instrumentation entry points make it for every load and store):
// another observer of the same instrumentation (e.g. work counters) calls it from its own entry points.
inline void hazard_note(const volatile void *addr, size_t bytes, uint16_t flags, uintptr_t pc) {
    if (HzWorker *h = tl_hz) h->access((uintptr_t)addr, bytes, flags, pc);
}

}  // namespace detail
}  // namespace fasim
