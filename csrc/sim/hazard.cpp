// hazard.cpp - the hazard detector (see hazard.h): shadow cells, the happens-before check and the race reports.
// The ThreadSanitizer entry points that feed it are in hazard_hooks.cpp.
#include "hazard.h"

#include <stdio.h>
#include <string.h>

#include "scheduler.h"

namespace fasim {
namespace detail {

thread_local HzWorker *tl_hz = nullptr;

namespace {

constexpr int kRegionShift = 40;  // device cell keys: region << 40 | cell (buffers are far below 2^41 bytes)

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
    if (a.flags & kHzAtomic) return (a.flags & kHzWrite) ? "atomic write" : "atomic read";
    return (a.flags & kHzWrite) ? "write" : "read";
}

// " [pc: module+0x...]" of the access's call site (flash_attn_cy.sim maps it to the .metal line). The recorded
// address is the return address of the instrumentation call: one byte back lies inside the call instruction.
std::string site_text(const HzAcc &a) { return pc_text((void *)(a.pc - 1)); }

bool conflicting(const HzAcc &p, const HzAcc &x) {
    if (!((p.flags | x.flags) & kHzWrite)) return false;  // two reads
    if (p.flags & x.flags & kHzAtomic) return false;      // two atomics
    return (p.mask & x.mask) != 0;
}

}  // namespace

void Hazards::begin_run() {
    device.clear();
    global.clear();
    reported.clear();
    for (size_t i = 0; i < L->regions.size(); i++) {
        const Region &r = L->regions[i];
        if (!r.writable || r.is_bytes || !r.len || !r.g.data) continue;  // what nobody writes cannot race
        device.push_back(HzRange{(uintptr_t)r.g.data, r.len, (int)i});
    }
}

void Hazards::end_run() {
    device.clear();
    global.clear();
}

void HzWorker::begin_group() {
    gen = (uint32_t)w->epoch;
    bar[0] = bar[1] = bar_all = 0;
    memset(simd, 0, sizeof simd);
    memset(simd_all, 0, sizeof simd_all);
    unfenced_file[0] = unfenced_file[1] = nullptr;
    dev.clear();
}

void HzWorker::on_tg_alloc(size_t i) {
    const TgArray &a = w->arrays[i];
    if (tg.size() <= i) {
        tg.resize(i + 1);
        tg_shadow.resize(i + 1);
    }
    tg[i] = HzRange{(uintptr_t)a.g.data, a.bytes, (int)i};
    tg_shadow[i].assign((a.bytes + 1) / 2, HzCell());
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

// Called for every load and store of an instrumented kernel: most addresses (the thread's own stack, read-only
// buffers, the runtime's state) are none of ours and return after the range checks.
void HzWorker::access(uintptr_t p, size_t n, uint8_t flags, uintptr_t pc) {
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
    x.pc = pc;
    x.gen = gen;
    x.group = w->group;
    x.bar = bar[sp];
    x.bar_all = bar_all;
    x.simd = simd[sp][c.sid];
    x.simd_all = simd_all[c.sid];
    x.tindex = (uint16_t)c.tindex;
    x.flags = flags;
    for (size_t b = off & ~(size_t)1; b < end; b += 2) {
        x.mask = (uint8_t)((b >= off ? 1 : 0) | (b + 1 < end ? 2 : 0));
        if (sp == kHzThreadgroup) {
            cell_access(tg_shadow[r->id][b / 2], *r, sp, b, x);
            continue;
        }
        HzDevCell &d = dev[(uint64_t)r->id << kRegionShift | (b / 2)];
        cell_access(d.cell, *r, sp, b, x);
        // What this threadgroup did to the cell, for the comparison with the other threadgroups at its end (an atomic
        // that writes is preferred to one that reads: only that one conflicts with another threadgroup's plain read).
        HzAcc &first = (flags & kHzAtomic) ? d.atomic : (flags & kHzWrite) ? d.wrote : d.read;
        if (!first.pc || ((flags & kHzAtomic) && (flags & kHzWrite) && !(first.flags & kHzWrite))) first = x;
        else first.mask |= x.mask;
    }
}

// x against what the cell remembers; then x is remembered. Reports (and abandons the threadgroup) on a race.
void HzWorker::cell_access(HzCell &c, const HzRange &r, HzSpace sp, size_t off, const HzAcc &x) {
    const uint32_t sid = x.tindex / kSimdWidth;
    // 0: ordered before x (or no conflict), 1: race, 2: race between lanes of one SIMD group
    auto unordered = [&](const HzAcc &p) -> int {
        if (!p.pc || p.gen != gen || p.tindex == x.tindex || !conflicting(p, x)) return 0;
        if (p.bar < bar[sp]) return 0;  // a threadgroup barrier with this memory's flag lies between
        if (p.tindex / kSimdWidth != sid) return 1;
        return p.simd < simd[sp][sid] ? 0 : 2;
    };
    auto check = [&](const HzAcc &p) {
        const int u = unordered(p);
        if (u && hz->first_report(u, p.pc, x.pc)) report(sp, r, off, p, x, u == 2);
    };
    check(c.w);
    if (x.flags & kHzWrite) {
        check(c.r[0]);
        check(c.r[1]);
        c.w = x;
        c.r[0].pc = c.r[1].pc = 0;  // ordered before this write, or by the same thread: the write stands for them
        return;
    }
    // Reads: keep up to two not yet ordered before the present, from different threads where possible.
    auto stale = [&](const HzAcc &p) { return !p.pc || p.gen != gen || p.bar < bar[sp]; };
    for (HzAcc &q : c.r) {
        if (stale(q)) { q = x; return; }
        if (q.tindex == x.tindex && q.bar == x.bar && q.simd == x.simd) { q.mask |= x.mask; return; }
    }
    for (HzAcc &q : c.r)
        if (q.tindex == x.tindex && (q.mask & ~x.mask) == 0) { q = x; return; }  // later, same thread, covers it
    c.r[1] = x;
}

std::string HzWorker::dev_name(int region, size_t off, size_t *boff) const {
    const Launch &L = *hz->L;
    const Region &r = L.regions[region];
    for (int i : r.indices) {
        const Binding &b = L.bind[i];
        if (off >= b.offset && off < b.offset + b.bytes) {
            *boff = off - b.offset;
            return "buffer(" + std::to_string(i) + ")";
        }
    }
    *boff = off;
    return "buffer(" + std::to_string(r.indices.empty() ? -1 : r.indices[0]) + ")";
}

std::string HzWorker::memory_text(HzSpace sp, int id, size_t off) const {
    if (sp == kHzThreadgroup) {
        const TgArray &a = w->arrays[id];
        char b[512];
        snprintf(b, sizeof b, "threadgroup array '%s' (declared at %s:%u), byte offset %zu", a.site->name, a.site->file,
                 a.site->line, off);
        return b;
    }
    size_t boff = 0;
    std::string name = dev_name(id, off, &boff);
    return name + ", byte offset " + std::to_string(boff);
}

void HzWorker::report(HzSpace sp, const HzRange &r, size_t off, const HzAcc &prev, const HzAcc &cur, bool same_simd) {
    const Launch &L = *hz->L;
    const char *space = sp == kHzThreadgroup ? "mem_threadgroup" : "mem_device";
    const size_t first = off + ((prev.mask & cur.mask & 1) ? 0 : 1);
    char b[512];
    std::string why;
    if (same_simd) {
        const uint32_t sid = cur.tindex / kSimdWidth;
        snprintf(b, sizeof b, "both in simdgroup %u, with no SIMD-group function, simdgroup_barrier(mem_flags::%s) "
                 "or threadgroup_barrier(mem_flags::%s) between them: lanes of one SIMD group need a "
                 "simdgroup_barrier to order their memory accesses", sid, space, space);
        why = b;
        if (prev.simd_all < simd_all[sid])
            why += std::string(" (a simdgroup_barrier between them lacks mem_flags::") + space + ")";
    } else {
        snprintf(b, sizeof b, "no threadgroup_barrier(mem_flags::%s) between them", space);
        why = b;
        if (prev.bar_all < bar_all && unfenced_file[sp])
            why += " (the threadgroup_barrier at " + where(unfenced_file[sp], unfenced_line[sp]) +
                   " between them lacks mem_flags::" + space + ")";
    }
    const std::string msg = "kernel '" + std::string(L.kernel->name) + "', " + group_text(L.cfg, w->group) + ": " +
                            memory_text(sp, r.id, first) + ": " + access_text(prev) + " by " +
                            thread_text(L.cfg, prev.tindex) + site_text(prev) + " and " + access_text(cur) + " by " +
                            thread_text(L.cfg, cur.tindex) + site_text(cur) + ", " + why;
    hz->L->add_fault(same_simd ? "race (simdgroup)" : "race", msg);
}

// Each pair of source locations is reported once per dispatch (a racy loop would repeat it for every word).
bool Hazards::first_report(int kind, uintptr_t pc_a, uintptr_t pc_b) {
    std::lock_guard<std::mutex> lk(mu);
    if (reported.size() >= kMaxReports) return false;
    return reported.insert({(uint64_t)kind, (uint64_t)std::min(pc_a, pc_b), (uint64_t)std::max(pc_a, pc_b)}).second;
}

bool HzWorker::first_report_locked(int kind, uintptr_t pc_a, uintptr_t pc_b) {
    if (hz->reported.size() >= Hazards::kMaxReports) return false;
    return hz->reported.insert({(uint64_t)kind, (uint64_t)std::min(pc_a, pc_b), (uint64_t)std::max(pc_a, pc_b)}).second;
}

// At the end of a threadgroup: its device accesses against the other threadgroups' so far (nothing orders the
// threadgroups of one dispatch, so any conflict is a race, whatever order they ran in); then they join them.
void HzWorker::end_group() {
    const Launch &L = *hz->L;
    std::lock_guard<std::mutex> lk(hz->mu);
    for (auto &kv : dev) {
        const HzDevCell &d = kv.second;
        HzDevCell &g = hz->global[kv.first];
        const HzAcc *mine[3] = {&d.wrote, &d.read, &d.atomic};
        HzAcc *theirs[3] = {&g.wrote, &g.read, &g.atomic};
        for (const HzAcc *x : mine) {
            if (!x->pc) continue;
            for (const HzAcc *p : theirs) {
                if (!p->pc || !conflicting(*p, *x) || !first_report_locked(3, p->pc, x->pc)) continue;
                const size_t cell = (size_t)(kv.first & ((1ull << kRegionShift) - 1));
                const size_t off = cell * 2 + ((p->mask & x->mask & 1) ? 0 : 1);
                hz->L->add_fault("race", "kernel '" + std::string(L.kernel->name) + "': " +
                                             memory_text(kHzDevice, (int)(kv.first >> kRegionShift), off) + ": " +
                                             access_text(*p) + " by " + group_text(L.cfg, p->group) + ", " +
                                             thread_text(L.cfg, p->tindex) + site_text(*p) + " and " + access_text(*x) +
                                             " by " + group_text(L.cfg, x->group) + ", " +
                                             thread_text(L.cfg, x->tindex) + site_text(*x) + ": threadgroups of one dispatch are not ordered, so one "
                                             "may not write device memory that another reads or writes (unless both "
                                             "access it atomically)");
            }
        }
        for (int k = 0; k < 3; k++) {  // the first of each kind stays (of atomics, preferably one that writes)
            const bool upgrade = k == 2 && (mine[k]->flags & kHzWrite) && !(theirs[k]->flags & kHzWrite);
            if (mine[k]->pc && (!theirs[k]->pc || upgrade)) *theirs[k] = *mine[k];
        }
    }
}

}  // namespace detail
}  // namespace fasim
