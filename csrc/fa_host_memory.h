// fa_host_memory.h - host memory this package allocates itself, page-aligned, so Metal may wrap it without a copy.
//
// Apple's newBufferWithBytesNoCopy wraps only memory covered by one VM region, "typically allocated with vm_allocate
// or mmap"; memory from malloc is explicitly disallowed (and Metal's API validation layer may abort instead of
// returning nil). A caller's arrays (NumPy, ...) come from malloc, so the Metal shim COPIES them
// (objc/fa_metal_binding.cpp); it wraps only regions registered here: whole pages from mmap, allocated by this
// package for outputs it creates itself (flash_attn_cy._arrays.empty on a Mac, through _core.HostBuffer).
//
// Header-only: one registry per loaded module (an inline function's static), shared by the Cython extension and the
// shim, which are linked into the same module (and by the test drivers that compile the shim alone).
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

namespace fa_host {

struct Registry {
    std::mutex mu;
    std::map<uintptr_t, size_t> regions;  // start -> bytes (whole pages)
};

// Never destroyed: a region may be released by a thread that outlives static destruction at interpreter exit.
inline Registry &registry() {
    static Registry *r = new Registry;
    return *r;
}

inline size_t page_bytes() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// `bytes` rounded up to whole pages of fresh zeroed memory from mmap, registered; nullptr when out of memory.
inline void *allocate(size_t bytes, size_t *region_bytes = nullptr) {
    const size_t page = page_bytes();
    if (bytes == 0) bytes = 1;
    if (bytes > SIZE_MAX - page) return nullptr;
    const size_t n = (bytes + page - 1) / page * page;
    void *p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANON, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    {
        std::lock_guard<std::mutex> lock(registry().mu);
        registry().regions[reinterpret_cast<uintptr_t>(p)] = n;
    }
    if (region_bytes) *region_bytes = n;
    return p;
}

// Unregisters and unmaps a region from allocate() (anything else is ignored).
inline void release(void *p) {
    size_t n = 0;
    {
        std::lock_guard<std::mutex> lock(registry().mu);
        auto it = registry().regions.find(reinterpret_cast<uintptr_t>(p));
        if (it == registry().regions.end()) return;
        n = it->second;
        registry().regions.erase(it);
    }
    munmap(p, n);
}

// Whether [ptr, ptr + bytes) lies inside one region from allocate(); its start and size when it does.
inline bool owned_region(const void *ptr, size_t bytes, void **base = nullptr, size_t *region_bytes = nullptr) {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(ptr);
    if (ptr == nullptr || bytes > UINTPTR_MAX - lo) return false;
    std::lock_guard<std::mutex> lock(registry().mu);
    auto it = registry().regions.upper_bound(lo);
    if (it == registry().regions.begin()) return false;
    --it;
    if (lo + bytes > it->first + it->second) return false;
    if (base) *base = reinterpret_cast<void *>(it->first);
    if (region_bytes) *region_bytes = it->second;
    return true;
}

}  // namespace fa_host
