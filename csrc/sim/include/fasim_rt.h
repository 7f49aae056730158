// fasim_rt.h - what a translated kernel sees of the simulator runtime (csrc/sim/runtime.cpp): the current thread's
// ids, its SIMD group's exchange area, the synchronisation hooks, threadgroup-memory allocation, kernel registration
// and the binders that turn launch buffers and ids into kernel arguments.
#pragma once

#include "fasim_types.h"

namespace fasim {

constexpr int kSimdWidth = 32;
constexpr int kMaxBuffers = 31;
constexpr int kExchangeBytes = 64;  // per lane and collective: enough for a 4 x 64-bit vector or an MMA operand set

// Per SIMD group exchange area for collectives. Double-buffered by collective parity: a lane that already left
// collective n can write collective n+1's slot while slower lanes still read collective n's slot; it cannot reach
// n+2 before every lane arrived at n+1, i.e. finished reading n.
struct SimdGroup {
    alignas(64) unsigned char xbuf[2][kSimdWidth][kExchangeBytes];
    uint32_t mask[2];  // lanes that took part in the collective of each parity
};

// Function constants (MSL specification §5.8.1). The translator replaces each declaration
// `constant T name [[function_constant(index)]];` of a kernel file by an FcDecl and an accessor, and lists them in
// the module's table (KernelInfo::fc); a launch gives values by index or name (sim_api.h, FunctionConstantValue),
// which the runtime matches to the table (constants.cpp) before any thread runs.
struct FcDecl {
    const char *name;
    int index;          // [[function_constant(index)]]
    uint32_t mtl_type;  // MTLDataType code of the declared type (bool 53, int 29, float 3, half 16, ...)
    uint32_t bytes;     // size of a value: components x element size
    const char *file;
    unsigned line;
};
struct FcValue {        // one launch's value of one FcDecl
    bool defined;       // is_function_constant_defined
    alignas(16) unsigned char bytes[32];
};
// [[buffer(n), function_constant(gate)]]: an argument that exists only when the bool constant `gate` is true.
struct GatedBuffer {
    int buffer;
    int fc;             // slot in KernelInfo::fc
};
// What a launch adds to the kernel's code, the same for all its threads.
struct LaunchValues {
    const FcValue *fc;               // [KernelInfo::n_fc]
    uint32_t tg_mem[kMaxBuffers];    // bytes of each [[threadgroup(n)]] argument (setThreadgroupMemoryLength:atIndex:)
};

struct ThreadCtx {
    uint32_t tid[3];        // thread_position_in_threadgroup
    uint32_t tindex;        // thread_index_in_threadgroup
    uint32_t tgid[3];       // threadgroup_position_in_grid
    uint32_t tptg[3];       // threads_per_threadgroup
    uint32_t ngroups[3];    // threadgroups_per_grid
    uint32_t sid, lane;     // simdgroup_index_in_threadgroup, thread_index_in_simdgroup
    uint32_t nsimd;         // simdgroups_per_threadgroup
    uint32_t coll;          // collectives done so far (parity selects the exchange buffer)
    SimdGroup *sg;
    void *const *buf;       // [kMaxBuffers] launch bindings
    void *runtime;          // the runtime's own per-fiber state
    const LaunchValues *launch;
};

// Code of the compatibility layer that touches only the simulator's own state (the thread's ids, SIMD-group exchange
// areas): kernels compiled for the hazard detector do not report its loads and stores (hazard.h; they would only
// cost time - a simd_sum alone reads 32 exchange slots per lane).
#define FASIM_NO_HAZARD_CHECK __attribute__((no_sanitize("thread")))

// The fiber running on this host thread (set by the scheduler before every switch).
extern thread_local ThreadCtx *tl_ctx;
FASIM_NO_HAZARD_CHECK inline ThreadCtx &ctx() { return *tl_ctx; }

enum SyncKind : int {
    kSyncSimd = 1,      // all lanes that have not returned
    kSyncSimdFull = 2,  // all 32 lanes (simdgroup_matrix operations)
};

// mem_flags of a simdgroup_barrier (the MSL enum's value), or this for a SIMD-group function: the hazard detector
// (csrc/sim/hazard.h) takes those as ordering points of their SIMD group for both address spaces.
constexpr int kMemCollective = -1;

// Blocks until the SIMD group (or threadgroup) has arrived; reports divergence instead of deadlocking. `mem`: the
// barrier's mem_flags, which say what memory it orders (read by the hazard detector).
void simd_sync(ThreadCtx &c, const char *file, unsigned line, const char *what, int kind, int mem = kMemCollective);
void tg_barrier(ThreadCtx &c, const char *file, unsigned line, const char *what, int mem);

struct TgSite {
    const char *name;
    const char *file;
    unsigned line;
};
// Storage of one threadgroup declaration for the current threadgroup (same pointer for all its threads).
void *tg_alloc(const TgSite *site, size_t bytes, size_t align);

// Unsupported use found at run time (e.g. a missing binding): fault the threadgroup.
[[noreturn]] void kernel_error(const char *kind, const char *file, unsigned line, const char *msg);

// `reinterpret_cast<To>(from)` in a kernel (the translator rewrites it to CastSite(__FILE__, __LINE__).as<To>(from)):
// a pointer cast to a type the address is not aligned for faults here. On an Apple GPU a misaligned vector load
// (e.g. a half4 read at an address that is not a multiple of 8) is not reported, and on x86 the host would silently
// do the unaligned access, so without this check the simulator could not tell an aligned vector path from a broken one.
[[noreturn]] void misaligned_cast(const char *file, unsigned line, const void *addr, size_t align);

struct CastSite {
    const char *file;
    unsigned line;
    CastSite(const char *f, unsigned l) : file(f), line(l) {}
    // `from` by reference: a reference cast (`reinterpret_cast<thread half4 &>(m.thread_elements()) = v`, MLX's
    // MMA fragments) names the caller's object, not a copy of it.
    template <class To, class FromRef>
    To as(FromRef &&from) const {
        using From = std::remove_cv_t<std::remove_reference_t<FromRef>>;
        if constexpr (std::is_reference<To>::value) {
            using Referee = std::remove_cv_t<std::remove_reference_t<To>>;
            check<To, const void *, Referee>(static_cast<const void *>(&from), std::true_type());
            return reinterpret_cast<To>(from);
        } else {
            using Pointee = std::remove_cv_t<std::remove_pointer_t<To>>;
            check<To, From, Pointee>(from, std::integral_constant<bool, std::is_pointer<To>::value &&
                                                                            std::is_pointer<From>::value &&
                                                                            !std::is_void<Pointee>::value>());
            return reinterpret_cast<To>(from);
        }
    }

  private:
    template <class To, class From, class Pointee>
    void check(From from, std::true_type) const {
        if (reinterpret_cast<uintptr_t>(from) % alignof(Pointee) != 0)
            misaligned_cast(file, line, static_cast<const void *>(from), alignof(Pointee));
    }
    template <class To, class From, class Pointee>
    void check(From, std::false_type) const {}
};

// Reading a function constant the launch gave no value (Metal cannot create such a pipeline): a fault at the use.
[[noreturn]] void fc_undefined(const FcDecl *decl, const char *file, unsigned line);

// What every use of a function constant calls (the translator rewrites `name` into an accessor that calls this with
// the use's source position).
template <class T> inline T fc_value(const FcDecl *decl, int slot, const char *file, unsigned line) {
    const FcValue &v = ctx().launch->fc[slot];
    if (__builtin_expect(!v.defined, 0)) fc_undefined(decl, file, line);
    T out{};
    __builtin_memcpy(&out, v.bytes, decl->bytes < sizeof(T) ? decl->bytes : sizeof(T));
    return out;
}
// is_function_constant_defined(name)
inline bool fc_defined(int slot) { return ctx().launch->fc[slot].defined; }

typedef void (*KernelEntry)(ThreadCtx &);

struct KernelInfo {
    const char *name;        // Metal function name (host_name)
    KernelEntry entry;
    const char *file;
    unsigned line;
    uint32_t buffer_mask;    // [[buffer(n)]] indices the kernel binds (always; gated ones are in `gates`)
    const GatedBuffer *gates;
    uint32_t n_gates;
    const FcDecl *const *fc; // the function constants of the kernel's file (the same table for all its kernels)
    uint32_t n_fc;
    uint32_t max_threads;    // [[max_total_threads_per_threadgroup(N)]], 0 if none: a larger threadgroup is refused
    uint32_t tg_mem_mask;    // [[threadgroup(n)]] indices: the launch must give each a length
    const KernelInfo *next;
    bool instrumented = false;  // compiled with the access instrumentation the hazard detector needs (hazard.h):
                                // set by the registration, from FASIM_INSTRUMENTED of the kernel's own unit
};

// Whether this translation unit is compiled with -fsanitize=thread, whose load/store calls feed the hazard
// detector (csrc/sim/hazard_hooks.cpp defines them; the sanitizer's runtime is never linked).
#if defined(__SANITIZE_THREAD__)
#define FASIM_INSTRUMENTED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FASIM_INSTRUMENTED 1
#endif
#endif
#ifndef FASIM_INSTRUMENTED
#define FASIM_INSTRUMENTED 0
#endif

struct KernelRegistrar {
    // The default argument is evaluated where the registration is (the kernel's translation unit).
    explicit KernelRegistrar(KernelInfo *k, bool instrumented = FASIM_INSTRUMENTED != 0);
};

// Kernel argument binders: a [[buffer(n)]] parameter converts to whatever pointer or reference type it has.
struct BufArg {
    int idx;
    template <class U> operator U *() const { return static_cast<U *>(ctx().buf[idx]); }
    template <class U, class = std::enable_if_t<!std::is_pointer<U>::value>> operator U &() const {
        return *static_cast<U *>(ctx().buf[idx]);
    }
};

// A [[threadgroup(n)]] argument (dynamic threadgroup memory, MSL §4.4): the launch's length for index n, allocated
// once per threadgroup like a `threadgroup` declaration (tg_alloc: poisoned, counted against the 32 KiB limit).
struct TgMemArg {
    const TgSite *site;
    int idx;
    template <class U> operator U *() const {
        return static_cast<U *>(tg_alloc(site, ctx().launch->tg_mem[idx], 16));
    }
};

enum IdKind : int {
    kIdThreadPosInGrid,
    kIdThreadPosInTg,
    kIdThreadIndexInTg,
    kIdTgPosInGrid,
    kIdThreadsPerTg,
    kIdTgsPerGrid,
    kIdThreadsPerGrid,
    kIdSimdIndexInTg,
    kIdLaneInSimd,
    kIdSimdsPerTg,
    kIdThreadsPerSimd,
};

struct IdArg {
    int kind;
    metal::vec<uint, 3> v3() const {
        const ThreadCtx &c = ctx();
        switch (kind) {
        case kIdThreadPosInGrid:
            return {c.tgid[0] * c.tptg[0] + c.tid[0], c.tgid[1] * c.tptg[1] + c.tid[1], c.tgid[2] * c.tptg[2] + c.tid[2]};
        case kIdThreadPosInTg: return {c.tid[0], c.tid[1], c.tid[2]};
        case kIdThreadIndexInTg: return {c.tindex, 0u, 0u};
        case kIdTgPosInGrid: return {c.tgid[0], c.tgid[1], c.tgid[2]};
        case kIdThreadsPerTg: return {c.tptg[0], c.tptg[1], c.tptg[2]};
        case kIdTgsPerGrid: return {c.ngroups[0], c.ngroups[1], c.ngroups[2]};
        case kIdThreadsPerGrid:
            return {c.ngroups[0] * c.tptg[0], c.ngroups[1] * c.tptg[1], c.ngroups[2] * c.tptg[2]};
        case kIdSimdIndexInTg: return {c.sid, 0u, 0u};
        case kIdLaneInSimd: return {c.lane, 0u, 0u};
        case kIdSimdsPerTg: return {c.nsimd, 0u, 0u};
        default: return {(uint)kSimdWidth, 0u, 0u};
        }
    }
    operator uint() const { return v3().x; }
    operator int() const { return (int)v3().x; }
    operator ushort() const { return (ushort)v3().x; }
    operator short() const { return (short)v3().x; }
    operator metal::vec<uint, 2>() const { auto v = v3(); return {v.x, v.y}; }
    operator metal::vec<uint, 3>() const { return v3(); }
    operator metal::vec<ushort, 2>() const { auto v = v3(); return {(ushort)v.x, (ushort)v.y}; }
    operator metal::vec<ushort, 3>() const { auto v = v3(); return {(ushort)v.x, (ushort)v.y, (ushort)v.z}; }
    operator metal::vec<int, 2>() const { auto v = v3(); return {(int)v.x, (int)v.y}; }
    operator metal::vec<int, 3>() const { auto v = v3(); return {(int)v.x, (int)v.y, (int)v.z}; }
};

}  // namespace fasim

#define FASIM_SITE_PARAMS const char *fasim_file = __builtin_FILE(), unsigned fasim_line = __builtin_LINE()
