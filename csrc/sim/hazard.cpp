// hazard.cpp - the hazard detector (see hazard.h): shadow cells, the happens-before check and the race reports.
// The ThreadSanitizer entry points that feed it are in hazard_hooks.cpp.
#include "hazard.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "scheduler.h"

namespace fasim {
namespace detail {

thread_local HzWorker *tl_hz = nullptr;

namespace {

enum RaceKind : uint32_t { kRaceSimdgroups = 1, kRaceLanes = 2, kRaceThreadgroups = 3 };

std::string group_text(const LaunchConfig &cfg, uint32_t group) {
    char b[96];
    snprintf(b, sizeof b, "threadgroup (%u,%u,%u)", group % cfg.grid[0], (group / cfg.grid[0]) % cfg.grid[1],
             (uint32_t)(group / ((uint64_t)cfg.grid[0] * cfg.grid[1])));
    return b;
}

std::string thread_text(const LaunchConfig &cfg, uint32_t tindex) {
    char b[128];
    snprintf(b, sizeof b, "thread (%u,%u,%u) [simdgroup %u, lane %u]", tindex % cfg.threads[0],
             (tindex / cfg.threads[0]) % cfg.threads[1], tindex / (cfg.threads[0] * cfg.threads[1]),
             tindex / kSimdWidth, tindex % kSimdWidth);
    return b;
}

const char *access_text(const HzAcc &a) {
    if (a.atomic()) return a.writes() ? "atomic write" : "atomic read";
    return a.writes() ? "write" : "read";
}

bool conflicting(const HzAcc &p, const HzAcc &x) {
    if (!p.writes() && !x.writes()) return false;  // two reads
    if (p.atomic() && x.atomic()) return false;    // two atomics
    return (p.mask() & x.mask()) != 0;
}

}  // namespace

Hazards::Hazards() {
    for (auto &s : stripes) s.store(0, std::memory_order_relaxed);
}

Hazards::~Hazards() { end_run(); }

bool Hazards::begin_run(std::string *why) {
    end_run();
    for (size_t i = 0; i < L->regions.size(); i++) {
        const Region &r = L->regions[i];
        if (!r.writable || r.is_bytes || !r.len || !r.g.data) continue;  // what nobody writes cannot race
        // Zero-filled on first touch: only the pages of the cells the kernel accesses cost memory.
        const size_t bytes = (r.len + 1) / 2 * sizeof(HzCell);
        void *m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            *why = "cannot map " + std::to_string(bytes) + " bytes of shadow state for a buffer of " +
                   std::to_string(r.len) + " bytes (hazard detection)";
            return false;
        }
        maps.push_back({m, bytes});
        device.push_back(HzRange{(uintptr_t)r.g.data, r.len, (int)i, static_cast<HzCell *>(m)});
    }
    reported.clear();
    return true;
}

void Hazards::end_run() {
    for (auto &m : maps) munmap(m.first, m.second);
    maps.clear();
    device.clear();
}

uint16_t Hazards::intern(uintptr_t pc) {
    std::lock_guard<std::mutex> lk(mu);
    auto it = site_ids.find(pc);
    if (it != site_ids.end()) return it->second;
    if (sites.size() >= kUnknownSite) return kUnknownSite;
    sites.push_back(pc);
    return site_ids[pc] = (uint16_t)(sites.size() - 1);
}

// Each pair of source locations is reported once per dispatch (a racy loop would repeat it for every word).
bool Hazards::first_report(uint32_t kind, uint16_t a, uint16_t b) {
    std::lock_guard<std::mutex> lk(mu);
    if (reported.size() >= kMaxReports) return false;
    return reported.insert({kind, std::min(a, b), std::max(a, b)}).second;
}

void HzWorker::begin_group() {
    group1 = w->group + 1;
    bar[0] = bar[1] = bar_all = 0;
    memset(simd, 0, sizeof simd);
    memset(simd_all, 0, sizeof simd_all);
    unfenced_file[0] = unfenced_file[1] = nullptr;
}

void HzWorker::on_tg_alloc(size_t i) {
    const TgArray &a = w->arrays[i];
    if (tg.size() <= i) {
        tg.resize(i + 1);
        tg_shadow.resize(i + 1);
    }
    tg_shadow[i].assign((a.bytes + 1) / 2, HzCell());
    tg[i] = HzRange{(uintptr_t)a.g.data, a.bytes, (int)i, tg_shadow[i].data()};
}

void HzWorker::on_barrier(int mem, const char *file, unsigned line) {
    bar_all++;
    const int flag[2] = {kMemThreadgroup, kMemDevice};  // indexed by HzSpace
    for (int sp = 0; sp < 2; sp++) {
        if (mem & flag[sp]) {
            bar[sp]++;
        } else {
            unfenced_file[sp] = file;
            unfenced_line[sp] = line;
        }
    }
}

void HzWorker::on_simd_release(uint32_t sid, int mem) {
    simd_all[sid]++;
    if (mem == kMemCollective || (mem & kMemThreadgroup)) simd[kHzThreadgroup][sid]++;
    if (mem == kMemCollective || (mem & kMemDevice)) simd[kHzDevice][sid]++;
}

uint16_t HzWorker::site_of(uintptr_t pc) {
    const size_t h = (pc ^ (pc >> 9)) & 255;
    if (site_key[h] != pc) {
        site_val[h] = hz->intern(pc);
        site_key[h] = pc;
    }
    return site_val[h];
}

void HzWorker::let_go() {
    const int i = held.exchange(-1);
    uintptr_t me = (uintptr_t)this;
    if (i >= 0) hz->stripes[i].compare_exchange_strong(me, 0);
}

// Called for every load and store of an instrumented kernel: most addresses (the thread's own stack, read-only
// buffers, the runtime's state) are none of ours and return after the range checks.
void HzWorker::access(uintptr_t p, size_t n, uint16_t flags, uintptr_t pc) {
    const HzRange *r = nullptr;
    HzSpace sp = kHzThreadgroup;
    for (const HzRange &t : tg)
        if (p - t.lo < t.len) { r = &t; break; }
    if (!r) {
        for (const HzRange &d : hz->device)
            if (p - d.lo < d.len) { r = &d; sp = kHzDevice; break; }
        if (!r) return;
    }
    const ThreadCtx &c = *tl_ctx;
    const size_t off = p - r->lo, end = std::min(off + n, r->len);  // past the end: the guard pages' business
    HzAcc x;
    x.group1 = group1;
    x.bar = bar[sp];
    x.simd = simd[sp][c.sid];
    x.site = site_of(pc);
    x.bar_all = (uint16_t)bar_all;
    x.simd_all = (uint16_t)simd_all[c.sid];
    for (size_t b = off & ~(size_t)1; b < end; b += 2) {
        const uint16_t mask = (uint16_t)((b >= off ? 1 : 0) | (b + 1 < end ? 2 : 0));
        x.bits = (uint16_t)(c.tindex | mask << 10 | flags);
        HzCell &cell = r->cells[b / 2];
        if (sp == kHzThreadgroup) {
            cell_access(cell, *r, sp, b, x);
            continue;
        }
        const int stripe = (int)(((uintptr_t)&cell >> 6) % Hazards::kStripes);
        held.store(stripe);
        uintptr_t free_ = 0;
        while (!hz->stripes[stripe].compare_exchange_weak(free_, (uintptr_t)this, std::memory_order_acquire))
            free_ = 0;
        cell_access(cell, *r, sp, b, x);
        hz->stripes[stripe].store(0, std::memory_order_release);
        held.store(-1);
    }
}

// x against what the cell remembers; then x is remembered.
void HzWorker::cell_access(HzCell &c, const HzRange &r, HzSpace sp, size_t off, const HzAcc &x) {
    const uint32_t sid = x.tindex() / kSimdWidth;
    // Threadgroup memory belongs to one threadgroup: what an earlier threadgroup on this host thread left is void.
    auto valid = [&](const HzAcc &p) { return p.group1 != 0 && (sp == kHzDevice || p.group1 == x.group1); };
    auto ordered_before_x = [&](const HzAcc &p) {  // p happens before x (same thread, or synchronised)
        if (p.group1 != x.group1) return false;
        if (p.tindex() == x.tindex() || p.bar < bar[sp]) return true;
        return p.tindex() / kSimdWidth == sid && p.simd < simd[sp][sid];
    };
    auto check = [&](const HzAcc &p) {
        if (!valid(p) || !conflicting(p, x) || ordered_before_x(p)) return;
        const uint32_t kind = p.group1 != x.group1 ? kRaceThreadgroups
                              : p.tindex() / kSimdWidth == sid ? kRaceLanes
                                                               : kRaceSimdgroups;
        if (hz->first_report(kind, p.site, x.site)) report(sp, r, off, p, x, (int)kind);
    };
    check(c.w);
    if (x.writes()) {
        check(c.r[0]);
        check(c.r[1]);
        c.w = x;
        c.r[0].group1 = c.r[1].group1 = 0;  // ordered before this write or reported: the write stands for them
        return;
    }
    // Reads: keep two not ordered before the present where possible (a later read that happens after an earlier
    // one and covers its bytes stands for it: whatever races with the earlier one races with it).
    for (HzAcc &q : c.r)
        if (!valid(q)) { q = x; return; }
    for (HzAcc &q : c.r)
        if (ordered_before_x(q) && (q.mask() & ~x.mask()) == 0) { q = x; return; }
    for (HzAcc &q : c.r)  // the same thread's other byte of the cell, in the same stretch
        if (q.group1 == x.group1 && q.tindex() == x.tindex() && q.bar == x.bar && q.simd == x.simd) {
            q.bits |= (uint16_t)(x.mask() << 10);
            return;
        }
    // Both kept reads are unordered with x. r[0] stays; r[1] is the read most unlike it (another threadgroup, else
    // another SIMD group, else another thread; the later one among equals): whatever thread writes next, a read of
    // another threadgroup or SIMD group than the writer's is then kept if there was one.
    auto unlike = [](const HzAcc &a, const HzAcc &b) {
        return a.group1 != b.group1 ? 3 : a.tindex() / kSimdWidth != b.tindex() / kSimdWidth ? 2 : 1;
    };
    if (unlike(x, c.r[0]) >= unlike(c.r[1], c.r[0])) c.r[1] = x;
}

std::string HzWorker::memory_text(HzSpace sp, int id, size_t off) const {
    char b[512];
    if (sp == kHzThreadgroup) {
        const TgArray &a = w->arrays[id];
        snprintf(b, sizeof b, "threadgroup array '%s' (declared at %s:%u), byte offset %zu", a.site->name, a.site->file,
                 a.site->line, off);
        return b;
    }
    const Launch &L = *hz->L;
    const Region &r = L.regions[id];
    for (int i : r.indices) {  // the binding holding that byte (aliased bindings share a region)
        const Binding &bd = L.bind[i];
        if (off >= bd.offset && off < bd.offset + bd.bytes) {
            snprintf(b, sizeof b, "buffer(%d), byte offset %zu", i, off - bd.offset);
            return b;
        }
    }
    snprintf(b, sizeof b, "buffer(%d), byte offset %zu", r.indices.empty() ? -1 : r.indices[0], off);
    return b;
}

void HzWorker::report(HzSpace sp, const HzRange &r, size_t off, const HzAcc &prev, const HzAcc &cur, int kind) {
    const Launch &L = *hz->L;
    const LaunchConfig &cfg = L.cfg;
    const char *space = sp == kHzThreadgroup ? "mem_threadgroup" : "mem_device";
    const size_t first = off + ((prev.mask() & cur.mask() & 1) ? 0 : 1);
    auto site = [&](const HzAcc &a) {  // " [pc: module+0x...]": flash_attn_cy.sim maps it to the .metal line
        if (a.site == Hazards::kUnknownSite) return std::string();
        std::lock_guard<std::mutex> lk(hz->mu);
        return pc_text((void *)(hz->sites[a.site] - 1));  // the return address: one byte back is the call
    };
    auto who = [&](const HzAcc &a) {
        return std::string(access_text(a)) + " by " +
               (kind == kRaceThreadgroups ? group_text(cfg, a.group1 - 1) + ", " : std::string()) +
               thread_text(cfg, a.tindex()) + site(a);
    };
    std::string head = "kernel '" + std::string(L.kernel->name) + "'";
    if (kind != kRaceThreadgroups) head += ", " + group_text(cfg, cur.group1 - 1);
    head += ": ";
    std::string msg = head + memory_text(sp, r.id, first) + ": " + who(prev) + " and " + who(cur);
    char b[512];
    if (kind == kRaceThreadgroups) {
        msg += ": threadgroups of one dispatch are not ordered, so one may not write device memory that another "
               "reads or writes (unless both access it atomically)";
    } else if (kind == kRaceLanes) {
        const uint32_t sid = cur.tindex() / kSimdWidth;
        snprintf(b, sizeof b, ", both in simdgroup %u, with no SIMD-group function, simdgroup_barrier(mem_flags::%s) "
                 "or threadgroup_barrier(mem_flags::%s) between them: lanes of one SIMD group need a "
                 "simdgroup_barrier to order their memory accesses", sid, space, space);
        msg += b;
        if (prev.simd_all != (uint16_t)simd_all[sid])
            msg += std::string(" (a simdgroup_barrier between them lacks mem_flags::") + space + ")";
    } else {
        snprintf(b, sizeof b, ", no threadgroup_barrier(mem_flags::%s) between them", space);
        msg += b;
        if (prev.bar_all != (uint16_t)bar_all && unfenced_file[sp])
            msg += " (the threadgroup_barrier at " + where(unfenced_file[sp], unfenced_line[sp]) +
                   " between them lacks mem_flags::" + space + ")";
    }
    hz->L->add_fault(kind == kRaceLanes ? "race (simdgroup)" : "race", msg);
}

}  // namespace detail
}  // namespace fasim
