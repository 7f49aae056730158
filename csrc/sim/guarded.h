// guarded.h - memory with PROT_NONE guard pages on both sides, for buffer copies and threadgroup arrays.
//
// The data is placed either against the upper guard (end-aligned, rounded down to 16 bytes so vector loads stay
// aligned) or right after the lower guard (start-aligned): one run catches overruns, the other underruns. The bytes
// of the mapping outside the data ("slack") hold a pattern that is checked after the run (writes) and varied between
// runs (reads).
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace fasim {

size_t host_page_size();

// A fresh private read-write mapping of `len` bytes (a multiple of the page size) whose first page, and with
// guard_last its last page too, is PROT_NONE: an access there faults instead of reaching a neighbouring mapping
// (guarded buffers, fiber stacks). `noreserve`: no swap reserved up front (a fiber stack is mostly never touched).
// nullptr when mmap fails.
char *map_with_guards(size_t len, bool guard_last, bool noreserve);

struct Guarded {
    char *map = nullptr;
    size_t map_len = 0;
    char *area = nullptr;    // between the guards
    size_t area_len = 0;
    char *data = nullptr;
    size_t len = 0;

    bool create(size_t len, bool end_aligned, unsigned char slack_pattern);
    void destroy();
    void protect_readonly();
    // Byte offset of the first slack byte that no longer holds the pattern, or -1.
    long slack_damage(unsigned char slack_pattern) const;
    // Where p falls: -1 lower guard, +1 upper guard, 0 elsewhere (data or slack or outside).
    int guard_side(const void *p) const;
    bool contains_mapping(const void *p) const { return map && (const char *)p >= map && (const char *)p < map + map_len; }
};

}  // namespace fasim
