// sim_api.h - host-side interface of the Metal simulator runtime.
//
// Kernels written in MSL (kernels/*.metal, or any user file) are translated/compiled as C++ against the
// compatibility headers in this folder; each kernel entry point registers itself under its Metal function name.
// `launch` executes one dispatch: a grid of threadgroups, each threadgroup's threads as fibers on one host thread,
// with real barriers and SIMD-group collectives, and reports faults instead of crashing or hanging.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fa_cancel.h"

namespace fasim {

struct BufferArg {      // setBuffer:offset:atIndex:
    int index;          // [[buffer(index)]]
    void *data;         // already offset; a writable buffer gets the forward run's results here
    size_t bytes;       // bytes addressable from data (accesses past it are out-of-bounds faults)
    bool writable = true;
    const void *src = nullptr;  // initial contents, when not at data (then data is only written: no copy of the
                                // inputs is kept, and later runs compare with data); must not overlap other bindings
};

struct BytesArg {       // setBytes:length:atIndex:
    int index;
    const void *data;
    size_t bytes;
};

// A function constant's value for one launch (MSL specification §5.8.1; the host side of Metal's
// MTLFunctionConstantValues setConstantValue:type:atIndex: / setConstantValue:type:withName:). As in Metal, a value
// is looked up first by index, then by name, and values that match no constant of the kernel's file are ignored.
struct FunctionConstantValue {
    int index = -1;                    // [[function_constant(index)]]; -1: match by name only
    std::string name;                  // the constant's name in the source; empty: match by index only
    uint32_t mtl_type = 0;             // MTLDataType code; must be the declared type's (bool 53, int 29, float 3, ...)
    std::vector<unsigned char> value;  // the value's bytes: components x element size of that type
};

struct ThreadgroupMemoryArg {  // setThreadgroupMemoryLength:atIndex: for a [[threadgroup(index)]] argument
    int index;
    size_t bytes;                // a multiple of 16, as Metal requires
};

struct LaunchConfig {
    uint32_t grid[3] = {1, 1, 1};     // threadgroups per grid
    uint32_t threads[3] = {1, 1, 1};  // threads per threadgroup
    int schedules = 1;                // >1: rerun under reverse and seeded random schedules and compare results
    uint64_t seed = 0x5eed;           // for the random schedules
    bool checks = true;               // with schedules > 1: also compare threadgroup memory at every barrier
                                      // (guard pages, poison and divergence checks are always on: they are cheap)
    int host_threads = 0;             // 0 = default pool size
    bool bounds_run = false;          // with schedules == 1 too: a second run with the buffers placed against the
                                      // lower guard and other bytes past their ends, so that reads before the start
                                      // (guard page) and within the 16-byte alignment slack past the end (changed
                                      // results) are out-of-bounds faults (schedules > 1 always include this run)
    // Hazard detection (hazard.h): every load and store of the first run is checked against shadow state of
    // threadgroup memory and of the writable buffers, and a race is reported whatever the thread schedule. Needs
    // the kernel compiled with the access instrumentation (KernelInfo::instrumented; otherwise an "error" fault).
    bool hazards = false;
    // Which schedules the runs use (ScheduleMode): kInterleaved resumes every ready thread once per pass;
    // kRunAhead lets each SIMD group run ahead of the others up to its next threadgroup barrier, the SIMD groups
    // in forward, reverse or random order; kMixed alternates them (runtime.cpp lists the runs).
    int schedule_mode = 2;
    // Cancellation (fa_cancel.h), or null. Checked between fiber steps and threadgroups; a request also interrupts a
    // thread stuck inside the kernel (as the watchdog does). The calling thread polls it while the launch runs.
    const fa_cancel *cancel = nullptr;
    // Function constant values (specialisation): what the dispatch plan passes to MTLFunctionConstantValues.
    std::vector<FunctionConstantValue> constants;
    // Lengths of the kernel's [[threadgroup(n)]] arguments.
    std::vector<ThreadgroupMemoryArg> threadgroup_memory;
};

enum ScheduleMode { kScheduleInterleaved = 0, kScheduleRunAhead = 1, kScheduleMixed = 2 };

struct Fault {
    std::string kind;     // "race", "race (simdgroup)", "out-of-bounds", "uninitialized-read", "divergent-barrier", "error"
    std::string message;  // names kernel, threadgroup, thread and source line where known
};

struct KernelInfo;  // opaque: one registered kernel entry point

// Kernels compiled into the running binary (build-time translated kernels/*.metal, or a run-time compiled module).
const KernelInfo *find_kernel(const char *name);
std::vector<std::string> kernel_names();

// Run one dispatch. Returns the faults found (empty = clean). Never throws for kernel faults. Writable buffers get the
// results of the forward schedule; Fault.kind is "race", "race (simdgroup)" (hazard detector: two lanes of one SIMD
// group), "out-of-bounds", "uninitialized-read", "divergent-barrier", "fast-math-hazard", "error" (invalid launch - a
// threadgroup above the kernel's [[max_total_threads_per_threadgroup]], a function constant value of the wrong type,
// an unbound buffer -, wild pointer, timeout: FLASH_ATTN_CY_SIM_TIMEOUT seconds per threadgroup, default 300)
// or "note" (how many further faults were not listed). Safe to call from several threads at once.
// A cancelled launch returns the single fault {"cancelled", ...} and leaves the caller's buffers untouched.
std::vector<Fault> launch(const KernelInfo *kernel, const LaunchConfig &cfg, const std::vector<BufferArg> &buffers,
                          const std::vector<BytesArg> &bytes);

}  // namespace fasim
