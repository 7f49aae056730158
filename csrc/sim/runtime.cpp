// runtime.cpp - fasim::launch, one dispatch: guarded copies of the buffers, the runs (forward, reverse and random
// orders, other poison), the host thread pool and watchdog, and the comparisons that turn differences into race and
// uninitialized-read faults.
#include <pthread.h>
#include <sys/mman.h>

#include <condition_variable>
#include <functional>
#include <thread>

#include "constants.h"
#include "scheduler.h"

namespace fasim {
namespace detail {

std::string describe_diff(const Region &r, const char *a, const char *b, size_t off, const char *a_label,
                          const char *b_label) {
    std::string names;
    for (int i : r.indices) names += (names.empty() ? "" : "/") + std::string("buffer(") + std::to_string(i) + ")";
    size_t w = off & ~(size_t)3;
    uint32_t va = 0, vb = 0;
    size_t n = std::min<size_t>(4, r.len - w);
    memcpy(&va, a + w, n);
    memcpy(&vb, b + w, n);
    float fa, fb;
    memcpy(&fa, &va, 4);
    memcpy(&fb, &vb, 4);
    char m[512];
    snprintf(m, sizeof m, "%s bytes %zu..%zu hold 0x%08x (%g as float32) under the %s run but 0x%08x (%g) under the "
             "%s run", names.c_str(), w, w + n - 1, va, (double)fa, a_label, vb, (double)fb, b_label);
    return m;
}

bool execute_run(Launch &L, const RunSpec &spec) {
    L.run = &spec;
    L.stop = false;
    L.next_group = 0;
    // Threadgroups start in the schedule's order too, so that races between threadgroups (through device memory)
    // also change results.
    L.group_order.clear();
    if (spec.order != kForward) {
        L.group_order.resize(L.ngroups_total);
        for (uint32_t i = 0; i < L.ngroups_total; i++)
            L.group_order[i] = spec.order == kReverse ? L.ngroups_total - 1 - i : i;
        if (spec.order == kRandom) {
            uint64_t x = spec.seed | 1;
            for (uint32_t i = L.ngroups_total - 1; i > 0; i--) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                std::swap(L.group_order[i], L.group_order[(uint32_t)(x % (i + 1))]);
            }
        }
    }
    for (Region &r : L.regions) {
        if (!r.g.create(r.len, spec.end_aligned, spec.slack)) {
            L.add_fault("error", "cannot map memory for a buffer copy");
            return false;
        }
        if (r.len) memcpy(r.g.data, r.src ? r.src : r.orig, r.len);
        if (!r.writable) r.g.protect_readonly();
    }
    if (L.hash_barriers) {
        L.hashes.assign(L.ngroups_total, {});
    }
    if (L.hz) {
        std::string why;
        if (!L.hz->begin_run(&why)) {
            L.add_fault("error", std::string("kernel '") + L.kernel->name + "': " + why);
            return false;
        }
    }
    int nworkers = L.cfg.host_threads > 0 ? L.cfg.host_threads : (int)std::max(1u, std::thread::hardware_concurrency());
    if (L.watch_region >= 0) {  // diagnosis: one worker, so "last writer" is well defined
        nworkers = 1;
        L.watch_ptr = L.regions[L.watch_region].g.data + L.watch_off;
        memcpy(&L.watch_last, L.watch_ptr, 4);
        L.watch_writer.clear();
    }
    nworkers = (int)std::min<uint32_t>((uint32_t)nworkers, L.ngroups_total);
    std::vector<std::unique_ptr<Worker>> workers;
    for (int i = 0; i < nworkers; i++) {
        workers.emplace_back(new Worker());
        Worker &w = *workers.back();
        w.L = &L;
        for (int b = 0; b < kMaxBuffers; b++)
            w.bufptr[b] = L.bound[b] ? L.regions[L.bind[b].region].g.data + L.bind[b].offset : nullptr;
    }
    // Every worker runs on a thread of its own; the calling thread is the watchdog: it interrupts a worker whose
    // current threadgroup exceeds the time limit (see kDefaultTimeoutSeconds) and, with a cancellation token, polls it
    // (the caller's poll must run on the caller's thread, fa_cancel.h) and interrupts every busy worker once it is
    // requested - also a thread stuck in a loop that no fiber switch would ever end.
    std::mutex wd_mu;
    std::condition_variable wd_cv;
    int finished = 0;
    const int64_t limit_ns = (int64_t)(timeout_seconds() * 1e9);
    const auto tick = std::chrono::milliseconds(L.cfg.cancel ? FA_CANCEL_POLL_MS : 200);
    std::vector<std::thread> threads;
    FASIM_PROF(prof::begin_run(L, workers));
    for (int i = 0; i < nworkers; i++)
        threads.emplace_back([&, i] {
            workers[i]->run_all();
            std::lock_guard<std::mutex> lk(wd_mu);
            if (++finished == nworkers) wd_cv.notify_all();
        });
    {
        std::unique_lock<std::mutex> lk(wd_mu);
        while (!wd_cv.wait_for(lk, tick, [&] { return finished == nworkers; })) {
            lk.unlock();
            if (!L.cancelled && fa_cancel_rt::check(L.cfg.cancel)) {
                L.cancelled = true;
                L.stop = true;
            }
            int64_t now = now_ns();
            for (auto &w : workers) {
                int64_t t0 = w->tg_started_ns.load();
                if (t0 && (L.cancelled || now - t0 > limit_ns) && w->thread_known) pthread_kill(w->thread, kWatchdogSignal);
            }
            lk.lock();
        }
    }
    for (auto &t : threads) t.join();
    FASIM_PROF(prof::end_run(L, workers));
    if (L.hz) L.hz->end_run();
    if (L.cancelled) return false;
    bool ok = L.faults.empty();
    for (Region &r : L.regions) {
        long d = r.g.slack_damage(spec.slack);
        if (d >= 0 && ok) {
            std::string names;
            for (int i : r.indices) names += (names.empty() ? "" : "/") + std::string("buffer(") + std::to_string(i) + ")";
            char b[256];
            snprintf(b, sizeof b, "kernel '%s': write %s %s (%zu bytes) at byte offset %ld (caught by the poisoned "
                     "alignment slack; threadgroup and thread unknown)",
                     L.kernel->name, d < 0 ? "before the start of" : "past the end of", names.c_str(), r.len, d);
            L.add_fault("out-of-bounds", b);
        }
    }
    return L.faults.empty();
}

void free_run(Launch &L);

// Copies a region's forward results to the caller's memory a few MiB at a time, giving each copied part of the
// guarded mapping back to the system, so that the copy and the results are never both whole in memory.
void copy_out_releasing(Region &r) {
    const size_t chunk = (size_t)16 << 20, page = host_page_size();
    size_t done = 0;
    while (done < r.len) {
        size_t n = std::min(chunk, r.len - done);
        memcpy(r.orig + done, r.g.data + done, n);
        done += n;
        // whole pages of data already copied (the first page may also hold slack; it is checked before this)
        uintptr_t lo = ((uintptr_t)r.g.data + page - 1) / page * page, hi = ((uintptr_t)r.g.data + done) / page * page;
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
}

// "buffer(0) (12 bytes), threadgroup array 'x' (...)": what a read within the alignment slack could have hit.
std::string slack_candidates(const Launch &L) {
    std::string s;
    for (const Region &r : L.regions) {
        if (r.len % 16 == 0) continue;
        for (int i : r.indices)
            s += (s.empty() ? "" : ", ") + std::string(r.is_bytes ? "bytes(" : "buffer(") + std::to_string(i) + ") (" +
                 std::to_string(r.len) + " bytes)";
    }
    return s.empty() ? std::string("a buffer or threadgroup array") : s + " or of a threadgroup array";
}

// Reruns the forward run and the given one serially, watching one output word, to name the thread that last wrote
// it in each (a fault-path diagnosis: it costs two extra runs).
std::string last_writers(Launch &L, int region, size_t off, const RunSpec &a, const RunSpec &b) {
    if (L.regions[region].len < off + 4) return "";
    std::vector<Fault> saved = L.faults;
    auto hashes = std::move(L.hashes);
    bool hb = L.hash_barriers;
    L.hash_barriers = false;
    std::string who[2];
    int n = 0;
    for (const RunSpec *spec : {&a, &b}) {
        L.faults.clear();
        free_run(L);
        L.watch_region = region;
        L.watch_off = off;
        execute_run(L, *spec);
        who[n++] = L.watch_writer.empty() ? std::string("no thread (never written)") : L.watch_writer;
        L.watch_region = -1;
        L.watch_ptr = nullptr;
    }
    L.faults = saved;
    L.hashes = std::move(hashes);
    L.hash_barriers = hb;
    if (who[0] == who[1]) return "; that word is last written by " + who[0] + " in both runs";
    return std::string("; that word is last written by ") + who[0] + " under the " + a.label + " run and by " +
           who[1] + " under the " + b.label + " run";
}

void free_run(Launch &L) {
    for (Region &r : L.regions) r.g.destroy();
}

void compare_hashes(Launch &L, const std::vector<std::vector<BarrierHash>> &base_hashes, const RunSpec &spec) {
    const LaunchConfig &cfg = L.cfg;
    const KernelInfo *kernel = L.kernel;
    if (L.faults.empty() && spec.poison == kPoisonA && L.hash_barriers) {
                for (size_t g = 0; g < L.hashes.size() && L.faults.empty(); g++) {
                    const auto &a = base_hashes[g], &b = L.hashes[g];
                    for (size_t j = 0; j < std::min(a.size(), b.size()); j++) {
                        if (a[j].hash == b[j].hash) continue;
                        uint32_t t0 = (uint32_t)(g % cfg.grid[0]), t1 = (uint32_t)((g / cfg.grid[0]) % cfg.grid[1]),
                                 t2 = (uint32_t)(g / ((uint64_t)cfg.grid[0] * cfg.grid[1]));
                        char m[1024];
                        char at[512];
                        if (a[j].line)
                            snprintf(at, sizeof at, "at the threadgroup_barrier at %s:%u", a[j].file, a[j].line);
                        else
                            snprintf(at, sizeof at, "at the end of the kernel");
                        snprintf(m, sizeof m,
                                 "kernel '%s', threadgroup (%u,%u,%u): threadgroup array '%s' (declared at %s:%u) holds "
                                 "different values %s under the forward and %s schedules: threads of the phase "
                                 "before that point race on it (a missing threadgroup_barrier?)",
                                 kernel->name, t0, t1, t2, a[j].site->name, a[j].site->file, a[j].site->line, at,
                                 spec.label);
                        L.add_fault("race", m);
                        break;
                    }
                }
            }
        }

}  // namespace detail

using namespace detail;

std::vector<Fault> launch(const KernelInfo *kernel, const LaunchConfig &cfg, const std::vector<BufferArg> &buffers,
                          const std::vector<BytesArg> &bytes) {
    if (!kernel) return {{"error", "launch: no kernel (find_kernel returned null?)"}};
    // Bindings with separate initial contents (BufferArg::src) must still come back holding them when the launch
    // is refused before any run.
    struct RestoreOnEarlyReturn {
        const std::vector<BufferArg> &bufs;
        bool armed = true;
        ~RestoreOnEarlyReturn() {
            if (!armed) return;
            for (const BufferArg &b : bufs)
                if (b.src && b.data && b.bytes && b.writable && b.src != b.data) memcpy(b.data, b.src, b.bytes);
        }
    } restore_on_early_return{buffers};
    refresh_fast_math();  // FLASH_ATTN_CY_SIM_FAST_MATH, read per launch (include/fasim_fast_math.h)
    Launch L;
    L.kernel = kernel;
    L.cfg = cfg;
    uint64_t nthreads = 1, ngroups = 1;
    for (int d = 0; d < 3; d++) {
        if (cfg.grid[d] == 0 || cfg.threads[d] == 0)
            return {{"error", std::string("launch of '") + kernel->name + "': grid and threadgroup sizes must be >= 1"}};
        nthreads *= cfg.threads[d];
        ngroups *= cfg.grid[d];
    }
    if (cfg.hazards && !kernel->instrumented)
        return {{"error", std::string("launch of '") + kernel->name + "': hazard detection needs the kernel compiled "
                          "with the access instrumentation (flash_attn_cy.sim builds such modules itself)"}};
    if (cfg.schedule_mode < kScheduleInterleaved || cfg.schedule_mode > kScheduleMixed)
        return {{"error", std::string("launch of '") + kernel->name + "': unknown schedule mode " +
                          std::to_string(cfg.schedule_mode)}};
    if (nthreads > (uint64_t)kMaxThreads)
        return {{"error", std::string("launch of '") + kernel->name + "': " + std::to_string(nthreads) +
                              " threads per threadgroup exceed Metal's limit of 1024"}};
    if (ngroups > 0xffffffffull)
        return {{"error", std::string("launch of '") + kernel->name + "': too many threadgroups"}};
    std::string refused = check_threadgroup_size(kernel, nthreads);
    if (refused.empty()) refused = resolve_constants(kernel, cfg.constants, L.fc_values);
    uint32_t required = 0;
    if (refused.empty()) refused = required_buffers(kernel, L.fc_values, &required);
    if (refused.empty()) refused = threadgroup_memory(kernel, cfg.threadgroup_memory, &L.values);
    if (!refused.empty()) return {{"error", refused}};
    L.values.fc = L.fc_values.data();
    L.nthreads = (uint32_t)nthreads;
    L.ngroups_total = (uint32_t)ngroups;
    for (int i = 0; i < kMaxBuffers; i++) L.bound[i] = false;

    // Regions: overlapping buffer bindings share one copy so that aliasing behaves as on the GPU.
    struct Item { char *p; size_t n; bool w; int idx; bool is_bytes; const char *src; };
    std::vector<Item> items;
    // Marks [[buffer(index)]] bound (`what`: "buffer" or "bytes"); "" or why the launch is refused.
    auto bind = [&](const char *what, int index, const void *data, size_t n) -> std::string {
        const std::string launch = std::string("launch of '") + kernel->name + "': ";
        if (index < 0 || index >= kMaxBuffers || L.bound[index])
            return launch + what + " index " + std::to_string(index) + " is out of range [0, 31) or bound twice";
        if (!data && n) return launch + what + "(" + std::to_string(index) + ") is null";
        L.bound[index] = true;
        return "";
    };
    for (const BufferArg &b : buffers) {
        const std::string refused_binding = bind("buffer", b.index, b.data, b.bytes);
        if (!refused_binding.empty()) return {{"error", refused_binding}};
        items.push_back({(char *)b.data, b.bytes, b.writable, b.index, false, (const char *)b.src});
    }
    for (const BytesArg &b : bytes) {
        const std::string refused_binding = bind("bytes", b.index, b.data, b.bytes);
        if (!refused_binding.empty()) return {{"error", refused_binding}};
        items.push_back({(char *)b.data, b.bytes, false, b.index, true, nullptr});
    }
    for (int i = 0; i < kMaxBuffers; i++)
        if ((required >> i & 1u) && !L.bound[i])
            return {{"error", std::string("launch of '") + kernel->name + "': [[buffer(" + std::to_string(i) +
                                  ")]] is not bound (kernel declared at " + where(kernel->file, kernel->line) + ")"}};
    std::sort(items.begin(), items.end(), [](const Item &a, const Item &b) { return a.p < b.p; });
    std::vector<int> item_region(items.size());
    for (size_t i = 0; i < items.size(); i++) {
        const Item &it = items[i];
        if (!it.is_bytes && !L.regions.empty() && !L.regions.back().is_bytes && it.n && L.regions.back().len &&
            it.p < L.regions.back().orig + L.regions.back().len) {
            Region &r = L.regions.back();
            if (r.src || it.src)
                return {{"error", std::string("launch of '") + kernel->name + "': buffer(" + std::to_string(it.idx) +
                                      ") overlaps another binding but has separate initial contents"}};
            size_t end = std::max((size_t)(r.orig + r.len - r.orig), (size_t)(it.p + it.n - r.orig));
            r.len = end;
            r.writable = r.writable || it.w;
            r.indices.push_back(it.idx);
        } else {
            Region r;
            r.orig = it.p;
            r.len = it.n;
            r.writable = it.w;
            r.indices = {it.idx};
            r.is_bytes = it.is_bytes;
            r.src = it.src != it.p ? it.src : nullptr;
            L.regions.push_back(std::move(r));
        }
        item_region[i] = (int)L.regions.size() - 1;
        L.bind[it.idx] = Binding{item_region[i], (size_t)(it.p - L.regions.back().orig), it.n};
    }

    install_signal_handlers();
    restore_on_early_return.armed = false;
    FASIM_PROF(prof::begin_launch(L));

    // Runs: forward first (its results are returned; the hazard detector checks it, when on). Then, with schedules > 1
    // (or cfg.bounds_run), a run with the buffers placed against the lower guard and other bytes past their ends (reads
    // before the start hit the guard, reads within the alignment slack past the end change results); with
    // schedules > 1 also other thread orders and a run with another poison for threadgroup memory. The other orders,
    // by schedule mode: interleaved: reverse, then seeded random ones; run-ahead: the same with SIMD groups running
    // ahead; mixed: reverse run-ahead (a SIMD group far ahead of those before it), forward run-ahead, reverse
    // interleaved, then random ones alternating between the paces.
    std::vector<RunSpec> runs;
    const Pace first_pace = cfg.schedule_mode == kScheduleRunAhead ? kRunAhead : kInterleaved;
    runs.push_back({kForward, cfg.seed, kPoisonA, kSlackA, true, first_pace == kRunAhead ? "forward run-ahead" : "forward",
                    kOrderRun, first_pace, cfg.hazards});
    if (cfg.schedules > 1) {
        // Order comparisons first: a missing barrier also makes some order read unwritten memory, and "race" is
        // the better diagnosis for it; the poison run then only flags reads no order ever writes first.
        struct Sched { Order order; Pace pace; const char *label; };
        static const Sched kInterleavedRuns[] = {{kReverse, kInterleaved, "reverse"}};
        static const Sched kRunAheadRuns[] = {{kReverse, kRunAhead, "reverse run-ahead"}};
        static const Sched kMixedRuns[] = {{kReverse, kRunAhead, "reverse run-ahead"},
                                           {kForward, kRunAhead, "forward run-ahead"},
                                           {kReverse, kInterleaved, "reverse"}};
        const Sched *fixed = cfg.schedule_mode == kScheduleInterleaved ? kInterleavedRuns
                             : cfg.schedule_mode == kScheduleRunAhead  ? kRunAheadRuns
                                                                       : kMixedRuns;
        const int nfixed = cfg.schedule_mode == kScheduleMixed ? 3 : 1;
        for (int i = 1; i < cfg.schedules; i++) {
            Sched sc;
            if (i - 1 < nfixed) {
                sc = fixed[i - 1];
            } else {
                const bool ahead = cfg.schedule_mode == kScheduleRunAhead ||
                                   (cfg.schedule_mode == kScheduleMixed && (i - nfixed) % 2 == 1);
                sc = {kRandom, ahead ? kRunAhead : kInterleaved, ahead ? "random run-ahead" : "random"};
            }
            runs.push_back({sc.order, cfg.seed + 0x1000193ull * (uint64_t)i, kPoisonA, kSlackA, true, sc.label,
                            kOrderRun, sc.pace});
        }
    }
    if (cfg.schedules > 1 || cfg.bounds_run)
        runs.push_back({kForward, cfg.seed, kPoisonA, kSlackB, false, "start-aligned", kBoundsRun, first_pace});
    if (cfg.schedules > 1)
        runs.push_back({kForward, cfg.seed, kPoisonB, kSlackA, true, "forward with other poison", kPoisonRun, first_pace});
    L.hash_barriers = cfg.schedules > 1 && cfg.checks;

    // Writable results of the forward run: in the caller's memory for regions with separate initial contents (no
    // copy kept: the simulator's memory stays one guarded copy at a time), else in `base` until the end.
    std::vector<std::vector<char>> base;
    std::vector<std::vector<BarrierHash>> base_hashes;
    bool have_results = false;
    std::unique_ptr<Hazards> hazards(cfg.hazards ? new Hazards() : nullptr);
    if (hazards) hazards->L = &L;
    for (size_t ri = 0; ri < runs.size(); ri++) {
        const RunSpec &spec = runs[ri];
        L.hz = spec.hazards ? hazards.get() : nullptr;
        bool ok = execute_run(L, spec);
        L.hz = nullptr;
        if (L.cancelled) {  // nothing goes back to the caller
            free_run(L);
            return {{"cancelled", std::string("launch of '") + kernel->name + "' cancelled"}};
        }
        if (ri == 0) {
            for (Region &r : L.regions) {
                bool mapped = r.g.map != nullptr;
                if (r.src) {
                    if (r.writable && r.len) {
                        if (mapped) copy_out_releasing(r);
                        else memcpy(r.orig, r.src, r.len);
                    }
                    base.emplace_back();
                } else {
                    base.emplace_back(r.writable && mapped ? std::vector<char>(r.g.data, r.g.data + r.len)
                                                           : std::vector<char>());
                }
            }
            have_results = true;
            base_hashes.swap(L.hashes);
        } else if (ok) {
            // Compare with the forward run: threadgroup memory first (names the array), then the outputs.
            compare_hashes(L, base_hashes, spec);
            for (size_t k = 0; k < L.regions.size() && L.faults.empty(); k++) {
                Region &r = L.regions[k];
                if (!r.writable || !r.len) continue;
                const char *fwd = r.src ? r.orig : base[k].data();
                if (memcmp(fwd, r.g.data, r.len) == 0) continue;
                size_t off = 0;
                while (fwd[off] == r.g.data[off]) off++;
                std::string d = describe_diff(r, fwd, r.g.data, off, "forward", spec.label);
                d += last_writers(L, (int)k, off & ~(size_t)3, runs[0], spec);
                if (spec.purpose == kPoisonRun)
                    L.add_fault("uninitialized-read",
                                std::string("kernel '") + kernel->name + "': results depend on threadgroup memory never "
                                "written in this launch: " + d);
                else if (spec.purpose == kBoundsRun)
                    L.add_fault("out-of-bounds", std::string("kernel '") + kernel->name + "': results depend on the "
                                "bytes just past the end of " + slack_candidates(L) + ", which the kernel reads (a read "
                                "past the end within the 16-byte alignment slack before the guard page): " + d);
                else
                    L.add_fault("race", std::string("kernel '") + kernel->name +
                                            "': results depend on the order of threads between synchronisation points: " + d);
            }
        }
        free_run(L);
        if (!L.faults.empty()) break;
    }
    // Results of the forward run go back to the caller.
    for (size_t k = 0; have_results && k < L.regions.size() && k < base.size(); k++)
        if (!L.regions[k].src && L.regions[k].writable && L.regions[k].len && !base[k].empty())
            memcpy(L.regions[k].orig, base[k].data(), L.regions[k].len);
    FASIM_PROF(prof::end_launch(L));
    std::vector<Fault> out = L.faults;
    if (L.suppressed) out.push_back({"note", std::to_string(L.suppressed) + " more fault(s) not shown"});
    return out;
}

}  // namespace fasim
