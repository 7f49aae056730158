// hazard.h - the simulator's hazard detector: shadow state for every word of threadgroup memory and of the writable
// device buffers a dispatch touches, checked at every load and store of the kernel (CUDA compute-sanitizer's
// racecheck, for Metal). Deterministic: a race is found on the first run, whatever the thread schedule.
//
// How accesses are seen: kernel modules built for hazard detection are compiled with the compiler's ThreadSanitizer
// instrumentation (-fsanitize=thread), which puts a call before every load and store (and turns atomics into calls);
// hazard.cpp defines those entry points (__tsan_read4, __tsan_atomic32_fetch_add, ...) itself - the sanitizer's
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
// Granularity: 2-byte cells (half, bfloat and every wider type are exact); a 1-byte access marks its byte of the
// cell, so byte-sized accesses of different threads to the two bytes of one cell are not confused, but the cell
// keeps one writer, so such a pair can hide a third access's conflict with the byte overwritten first.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <array>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace fasim {
struct TgSite;
namespace detail {

struct Launch;
struct Worker;
struct TgArray;

// mem_flags bits as fasim_simd.h passes them (the MSL enum's values); fasim::kMemCollective (fasim_rt.h) marks a
// SIMD-group function, which orders both address spaces within its SIMD group (see above).
constexpr int kMemDevice = 1;
constexpr int kMemThreadgroup = 2;

enum HzSpace { kHzThreadgroup = 0, kHzDevice = 1 };

// One access as the shadow keeps it.
struct HzAcc {
    uintptr_t pc = 0;      // return address into the kernel code of the instrumentation call (0: no access)
    uint32_t gen = 0;      // the worker's threadgroup run it belongs to (older runs: as if empty)
    uint32_t group = 0;    // linear threadgroup index (device memory)
    uint32_t bar = 0;      // threadgroup barriers passed whose mem_flags name this memory
    uint32_t bar_all = 0;  // all threadgroup barriers passed (only for the message)
    uint32_t simd = 0;     // ordering points of its SIMD group for this memory (see above)
    uint32_t simd_all = 0; // SIMD-group synchronisations of any kind (only for the message)
    uint16_t tindex = 0;   // thread_index_in_threadgroup
    uint8_t mask = 0;      // bytes of the 2-byte cell it touched (1, 2 or 3)
    uint8_t flags = 0;     // kHzWrite | kHzAtomic
};
constexpr uint8_t kHzWrite = 1, kHzAtomic = 2;

// Shadow of one 2-byte cell: the last write and up to two reads not yet ordered before it.
struct HzCell {
    HzAcc w, r[2];
};

// Device memory: per threadgroup the happens-before shadow, plus what the threadgroup did to the cell (first plain
// write, first plain read, first atomic access), which is merged into the dispatch-wide map when it ends.
struct HzDevCell {
    HzCell cell;
    HzAcc wrote, read, atomic;
};

struct HzRange {
    uintptr_t lo = 0;
    size_t len = 0;
    int id = 0;  // region index (device) or index into Worker::arrays (threadgroup)
};

// Per dispatch (one per launch with hazard detection on).
struct Hazards {
    Launch *L = nullptr;
    std::vector<HzRange> device;  // writable regions of the current run (read-only ones cannot race)
    std::mutex mu;                // guards `global` and `reported`
    std::unordered_map<uint64_t, HzDevCell> global;  // key: region << 40 | cell; other threadgroups' summaries
    std::set<std::array<uint64_t, 3>> reported;       // (kind, pc, pc) of the races reported
    static constexpr size_t kMaxReports = 8;

    void begin_run();  // the regions' current mappings (they move between runs)
    void end_run();
    bool first_report(int kind, uintptr_t pc_a, uintptr_t pc_b);  // not reported yet (and room for more)
};

// Per worker (host thread): the threadgroup it runs.
struct HzWorker {
    Hazards *hz = nullptr;
    Worker *w = nullptr;
    uint32_t gen = 0;
    uint32_t bar[2] = {0, 0}, bar_all = 0;  // threadgroup barriers passed: [space] with its mem_flag, any
    uint32_t simd[2][32] = {}, simd_all[32] = {};  // per SIMD group
    const char *unfenced_file[2] = {nullptr, nullptr};  // last threadgroup barrier without that space's flag
    unsigned unfenced_line[2] = {0, 0};
    std::vector<HzRange> tg;                          // threadgroup arrays of this worker
    std::vector<std::vector<HzCell>> tg_shadow;       // parallel to Worker::arrays
    std::unordered_map<uint64_t, HzDevCell> dev;      // this threadgroup's device cells

    void begin_group();
    void end_group();  // merge this threadgroup's device accesses into Hazards::global (may report a race)
    void on_tg_alloc(size_t array_index);
    void on_barrier(int mem, const char *file, unsigned line);
    void on_simd_release(uint32_t sid, int mem);
    void access(uintptr_t p, size_t n, uint8_t flags, uintptr_t pc);

  private:
    void cell_access(HzCell &c, const HzRange &r, HzSpace sp, size_t off, const HzAcc &x);
    void report(HzSpace sp, const HzRange &r, size_t off, const HzAcc &prev, const HzAcc &cur, bool same_simd);
    bool first_report_locked(int kind, uintptr_t pc_a, uintptr_t pc_b);  // with Hazards::mu held
    std::string dev_name(int region, size_t off, size_t *boff) const;
    std::string memory_text(HzSpace sp, int id, size_t off) const;
};

// The worker running on this host thread while a hazard run is in progress (else null: the entry points return).
extern thread_local HzWorker *tl_hz;

}  // namespace detail
}  // namespace fasim
