// guarded.cpp - see guarded.h.
#include "guarded.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

namespace fasim {

size_t host_page_size() {
    static size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

char *map_with_guards(size_t len, bool guard_last, bool noreserve) {
    int flags = MAP_PRIVATE | MAP_ANON;
#ifdef MAP_NORESERVE
    if (noreserve) flags |= MAP_NORESERVE;
#else
    (void)noreserve;
#endif
    void *m = mmap(nullptr, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char *map = (char *)m;
    const size_t page = host_page_size();
    mprotect(map, page, PROT_NONE);
    if (guard_last) mprotect(map + len - page, page, PROT_NONE);
    return map;
}

bool Guarded::create(size_t n, bool end_aligned, unsigned char slack_pattern) {
    size_t page = host_page_size();
    len = n;
    area_len = (n + 16 + page - 1) / page * page;
    map_len = area_len + 2 * page;
    map = map_with_guards(map_len, true, false);
    if (!map) return false;
    area = map + page;
    if (end_aligned) {
        uintptr_t end = (uintptr_t)(area + area_len);
        data = (char *)((end - n) & ~(uintptr_t)15);
    } else {
        data = area;
    }
    // Only the slack gets the pattern: the data is filled by the caller (touching it twice would cost time, and
    // for a large buffer the pages of the data are only touched once, by that copy).
    memset(area, slack_pattern, (size_t)(data - area));
    memset(data + n, slack_pattern, (size_t)(area + area_len - (data + n)));
    return true;
}

void Guarded::destroy() {
    if (map) munmap(map, map_len);
    map = nullptr;
}

void Guarded::protect_readonly() {
    if (map) mprotect(area, area_len, PROT_READ);
}

long Guarded::slack_damage(unsigned char pat) const {
    for (const char *p = area; p < data; p++)
        if ((unsigned char)*p != pat) return (long)(p - data);
    for (const char *p = data + len; p < area + area_len; p++)
        if ((unsigned char)*p != pat) return (long)(p - data);
    return -1;
}

int Guarded::guard_side(const void *p) const {
    const char *c = (const char *)p;
    if (!map) return 0;
    if (c >= map && c < area) return -1;
    if (c >= area + area_len && c < map + map_len) return 1;
    return 0;
}

}  // namespace fasim
