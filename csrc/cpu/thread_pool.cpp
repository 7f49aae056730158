// thread_pool.cpp - persistent worker pool; see thread_pool.h for the contract.
//
// Each worker owns a Slot: a state word (EXITED / IDLE / POSTED / RUNNING), a `sleeping` flag and its own mutex and
// condition variable. A caller hands a job to worker i by moving slot i from IDLE to POSTED (a worker polling its
// slot starts at once; a sleeping one is notified through its own condition variable, so a job of T threads wakes
// exactly the T - 1 workers it uses). The worker claims the job by moving POSTED to RUNNING; when the caller has
// run out of items it takes back every slot still POSTED (POSTED -> IDLE), so a worker that had not been scheduled
// yet (a busy or oversubscribed machine) is not waited for. The job's end is one atomic count; the last worker to
// finish notifies the caller only if it went to sleep. No mutex is shared by the workers of a job.
//
// Lost wake-ups: the poster stores POSTED then reads `sleeping`; the worker stores `sleeping` then reads the state,
// both sequentially consistent (so at least one of them sees the other's store), and the worker does that under its
// slot mutex, which the poster takes before it notifies.
#include "thread_pool.h"

#include "call_env.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "fa_abi.h"
#include "fork_renewed.h"

namespace fa_cpu {
namespace {

// True on pool workers, and on a calling thread while it executes items of its own job.
thread_local bool tl_is_pool_worker = false;
// The calling thread's pool activity since its last pool_take_activity().
thread_local PoolActivity tl_activity;

// How long an idle worker keeps polling for the next job before it sleeps, and how long a caller polls for the last
// worker before it sleeps. A model calls attention once per layer with little work in between: a futex wake-up of a
// worker whose (virtual) CPU went idle measured 0.3-0.8 ms on the 2-vCPU VM, as long as a whole small prefill or
// decode call. 200 us covers back-to-back calls while an idle process stops polling almost at once.
constexpr std::chrono::microseconds SPIN_WINDOW{200};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Polls `done()` until it holds or SPIN_WINDOW has passed; true when it holds. A few microseconds of pause-polling,
// then polling with sched_yield between checks: when the machine is busy, the poller may share its core with the
// very thread it waits for (the caller, or a worker), and a pure spin would hold that core for the whole window
// (measured: a 50 us call took 230-470 us with a compile running on the other core).
template <class Done>
bool spin_until(Done done) {
    for (int i = 0; i < 256; ++i) {
        if (done()) return true;
        cpu_relax();
    }
    const auto deadline = std::chrono::steady_clock::now() + SPIN_WINDOW;
    for (;;) {
        if (done()) return true;
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() >= deadline) return done();
    }
}

// ---- CPUs available ----------------------------------------------------------------------------------------------

#if defined(__linux__)
// CPUs allowed by a cgroup CPU quota (containers: `docker --cpus`), 0 when there is none. cgroup v2 "max 100000" or
// "200000 100000" in cpu.max; v1 cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
int cgroup_cpu_quota() {
    double quota = -1, period = 0;
    if (FILE *f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
        char q[32] = {0};
        if (std::fscanf(f, "%31s %lf", q, &period) == 2 && std::strcmp(q, "max") != 0) quota = std::atof(q);
        std::fclose(f);
    } else {
        FILE *fq = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r");
        FILE *fp = std::fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r");
        if (fq && fp && (std::fscanf(fq, "%lf", &quota) != 1 || std::fscanf(fp, "%lf", &period) != 1)) quota = -1;
        if (fq) std::fclose(fq);
        if (fp) std::fclose(fp);
    }
    if (quota <= 0 || period <= 0) return 0;
    const double cpus = quota / period;
    return int(std::max(1.0, cpus + 0.999));  // 1.5 CPUs of quota: two threads can still use it
}
#endif

int detect_available_cpus() {
    unsigned n = std::thread::hardware_concurrency();
    int cpus = n == 0 ? 1 : int(n);
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int allowed = CPU_COUNT(&set);
        if (allowed > 0) cpus = std::min(cpus, allowed);
    }
    if (const int quota = cgroup_cpu_quota()) cpus = std::min(cpus, quota);
#endif
    return std::max(1, std::min(cpus, 256));
}

std::atomic<int> g_available_cpus{0};  // 0: not detected yet (pool_set_num_threads detects again)

// ---- the pool ----------------------------------------------------------------------------------------------------

// How often a waiting caller polls its cancellation token (fa_cancel.h).
constexpr std::chrono::milliseconds POLL_INTERVAL{FA_CANCEL_POLL_MS};

// An idle worker exits after this long without a job (the next job starts it again): an idle process holds no
// threads, while a model calling attention every few milliseconds keeps its workers. FLASH_ATTN_CY_THREAD_IDLE_SECONDS
// overrides it (tests).
std::chrono::nanoseconds idle_release_from_env() {
    double s = 10.0;
    if (const char *e = std::getenv("FLASH_ATTN_CY_THREAD_IDLE_SECONDS")) {
        const double v = std::atof(e);
        if (v > 0) s = v;
    }
    return std::chrono::nanoseconds(int64_t(s * 1e9));
}

enum SlotState : uint32_t { EXITED = 0, IDLE = 1, POSTED = 2, RUNNING = 3 };

// One worker's hand-over point (see the file comment). On its own cache line: a worker polls only its own slot.
struct alignas(64) Slot {
    std::atomic<uint32_t> state{EXITED};  // EXITED -> (thread started) POSTED; only the worker leaves RUNNING/IDLE
    std::atomic<bool> sleeping{false};     // the worker is (about to be) waiting on cv
    std::mutex m;
    std::condition_variable cv;
};

constexpr int MAX_WORKERS = 1023;  // the pool size is capped at 1024 threads (set_size)

class ThreadPool {
  public:
    ThreadPool() : slots_(new std::atomic<Slot *>[MAX_WORKERS]) {
        for (int i = 0; i < MAX_WORKERS; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
    }

    int size() {
        int n = requested_.load(std::memory_order_relaxed);
        return n > 0 ? n : available_cpus();
    }
    void set_size(int n) { requested_.store(n < 0 ? 0 : std::min(n, MAX_WORKERS + 1), std::memory_order_relaxed); }
    // The pool of a fork()ed child (see fork_renewed.h): no workers yet, the same requested size.
    static ThreadPool *renewed_after_fork(const ThreadPool &old) {
        ThreadPool *p = new ThreadPool();
        p->set_size(old.requested_.load(std::memory_order_relaxed));
        return p;
    }
    int live_workers() { return live_.load(std::memory_order_acquire); }
    // At exit: sleeping workers leave (busy ones after their item); nobody waits for them.
    void release_all() {
        shutdown_.store(true, std::memory_order_seq_cst);
        for (int i = 0; i < MAX_WORKERS; ++i) {
            Slot *s = slots_[i].load(std::memory_order_acquire);
            if (!s) continue;
            std::lock_guard<std::mutex> lk(s->m);
            s->cv.notify_one();
        }
    }

    bool run(int64_t n, const std::function<void(int64_t)> &fn, int max_threads, const fa_cancel *cancel) {
        PoolActivity &act = tl_activity;
        ++act.calls;
        if (n <= 0) return !fa_cancel_rt::requested(cancel);
        int threads = size();
        if (max_threads > 0) threads = std::min(threads, max_threads);
        if (!caps_disabled()) threads = std::min(threads, available_cpus());
        if (int64_t(threads) > n) threads = int(n);
        if (threads <= 1 || tl_is_pool_worker) {
            act.max_threads = std::max(act.max_threads, 1);
            return run_serial(n, fn, cancel);
        }
        act.max_threads = std::max(act.max_threads, threads);

        // One job at a time; other callers wait here, polling their cancellation token.
        std::unique_lock<std::timed_mutex> call_lock(call_mutex_, std::defer_lock);
        while (!call_lock.try_lock_for(POLL_INTERVAL))
            if (fa_cancel_rt::check(cancel)) return false;
        const int workers = threads - 1;
        job_fn_ = &fn;
        job_n_ = n;
        job_cancel_ = cancel;
        next_.store(0, std::memory_order_relaxed);
        failed_.store(false, std::memory_order_relaxed);
        pending_.store(workers, std::memory_order_relaxed);
        // Hand the job to workers 0..workers-1: polling ones start now; sleeping ones are notified after all are
        // posted (a notify is a system call: the polling ones should not wait for it).
        bool notify[MAX_WORKERS];
        for (int i = 0; i < workers; ++i) notify[i] = post(i);
        act.workers_posted += workers;
        for (int i = 0; i < workers; ++i) {
            if (!notify[i]) continue;
            Slot &s = slot(i);
            std::lock_guard<std::mutex> lk(s.m);
            s.cv.notify_one();
            ++act.workers_woken;
        }
        // The caller helps; while it does, a nested parallel_for from fn runs serially instead of waiting for
        // call_mutex_, which this thread already holds.
        tl_is_pool_worker = true;
        work_loop();
        tl_is_pool_worker = false;
        // No item is left to hand out: workers that have not claimed the job yet get nothing from it.
        for (int i = 0; i < workers; ++i) {
            uint32_t expected = POSTED;
            if (slot(i).state.compare_exchange_strong(expected, IDLE, std::memory_order_acq_rel)) {
                pending_.fetch_sub(1, std::memory_order_acq_rel);
                ++act.workers_taken_back;
            }
        }
        wait_for_workers(cancel);
        job_fn_ = nullptr;
        job_cancel_ = nullptr;
        return !failed_.load(std::memory_order_relaxed) && !fa_cancel_rt::requested(cancel);
    }

  private:
    static bool caps_disabled() { return call_env().thread_caps_off; }

    static bool run_serial(int64_t n, const std::function<void(int64_t)> &fn, const fa_cancel *cancel) {
        try {
            for (int64_t i = 0; i < n; ++i) {
                if (fa_cancel_rt::check(cancel)) return false;
                fn(i);
            }
        } catch (...) {
            return false;
        }
        return !fa_cancel_rt::requested(cancel);
    }

    void work_loop() {
        for (;;) {
            if (fa_cancel_rt::requested(job_cancel_)) break;  // skip the items not started yet
            int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
            if (i >= job_n_) break;
            try {
                (*job_fn_)(i);
            } catch (...) {
                failed_.store(true, std::memory_order_relaxed);
            }
        }
    }

    // Posts the current job to worker i (starting its thread if it has none); true when it must be notified.
    bool post(int i) {
        Slot *sp = slots_[i].load(std::memory_order_relaxed);
        if (!sp) {  // only callers (under call_mutex_) create slots
            sp = new Slot();
            slots_[i].store(sp, std::memory_order_release);
        }
        Slot &s = *sp;
        uint32_t expected = IDLE;
        if (s.state.compare_exchange_strong(expected, POSTED, std::memory_order_seq_cst)) {
            return s.sleeping.load(std::memory_order_seq_cst);
        }
        // EXITED: never started, or retired after its idle time (it set EXITED as its last access to the slot).
        s.state.store(POSTED, std::memory_order_seq_cst);
        live_.fetch_add(1, std::memory_order_acq_rel);
        // Detached: a worker leaves on its own (idle, exit); nothing ever joins it.
        std::thread([this, &s] { worker_main(s); }).detach();
        register_exit_hook();
        return false;
    }

    void register_exit_hook() {
        if (exit_hook_registered_) return;
        exit_hook_registered_ = true;
        std::atexit([] { pool_release_at_exit(); });
    }

    void worker_main(Slot &s) {
        tl_is_pool_worker = true;
        for (;;) {
            if (!wait_posted(s)) return;  // retired
            uint32_t expected = POSTED;
            if (!s.state.compare_exchange_strong(expected, RUNNING, std::memory_order_acq_rel)) continue;  // taken back
            work_loop();
            // IDLE before the count: once the count is 0 the caller may post the next job to this slot.
            s.state.store(IDLE, std::memory_order_release);
            if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1 && caller_sleeping_.load(std::memory_order_seq_cst)) {
                std::lock_guard<std::mutex> lk(done_m_);
                done_cv_.notify_one();
            }
        }
    }

    // Until slot s is POSTED (true), or the worker retires (false: idle too long, or process exit).
    bool wait_posted(Slot &s) {
        if (spin_until([&] { return s.state.load(std::memory_order_acquire) == POSTED; })) return true;
        std::unique_lock<std::mutex> lk(s.m);
        const auto idle_until = std::chrono::steady_clock::now() + idle_release_;
        for (;;) {
            s.sleeping.store(true, std::memory_order_seq_cst);
            if (s.state.load(std::memory_order_seq_cst) == POSTED) break;
            if (shutdown_.load(std::memory_order_seq_cst) || std::chrono::steady_clock::now() >= idle_until) {
                // Cleared before the slot is given up: a new thread may use the slot (and the flag) right after.
                s.sleeping.store(false, std::memory_order_seq_cst);
                uint32_t expected = IDLE;
                if (s.state.compare_exchange_strong(expected, EXITED, std::memory_order_acq_rel)) {
                    live_.fetch_sub(1, std::memory_order_acq_rel);
                    return false;  // the slot may be reused by a new thread from here on
                }
                continue;  // posted meanwhile
            }
            s.cv.wait_until(lk, idle_until);
        }
        s.sleeping.store(false, std::memory_order_relaxed);
        return true;
    }

    // Until every worker that claimed the job finished; polls the cancellation token while it waits.
    void wait_for_workers(const fa_cancel *cancel) {
        if (spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) return;
        std::unique_lock<std::mutex> lk(done_m_);
        for (;;) {
            caller_sleeping_.store(true, std::memory_order_seq_cst);
            if (pending_.load(std::memory_order_seq_cst) == 0) break;
            if (done_cv_.wait_for(lk, POLL_INTERVAL) == std::cv_status::timeout) {
                lk.unlock();
                fa_cancel_rt::check(cancel);  // a request makes the workers skip their remaining items
                lk.lock();
            }
        }
        caller_sleeping_.store(false, std::memory_order_relaxed);
    }

    static void pool_release_at_exit();

    std::atomic<int> requested_{0};
    std::timed_mutex call_mutex_;
    // Slot of worker i, created by its first job and never freed (MAX_WORKERS entries).
    std::unique_ptr<std::atomic<Slot *>[]> slots_;
    Slot &slot(int i) { return *slots_[i].load(std::memory_order_relaxed); }
    std::atomic<int> live_{0};
    std::atomic<bool> shutdown_{false};
    bool exit_hook_registered_ = false;  // under call_mutex_
    const std::chrono::nanoseconds idle_release_ = idle_release_from_env();
    // The current job: written by its caller (under call_mutex_) before the posts, read by workers after claiming.
    const std::function<void(int64_t)> *job_fn_ = nullptr;
    const fa_cancel *job_cancel_ = nullptr;
    int64_t job_n_ = 0;
    alignas(64) std::atomic<int64_t> next_{0};
    std::atomic<bool> failed_{false};
    alignas(64) std::atomic<int> pending_{0};  // posted workers that have neither finished nor been taken back
    std::atomic<bool> caller_sleeping_{false};
    std::mutex done_m_;
    std::condition_variable done_cv_;
};

// The process's pool (leaked: joining workers from a static destructor at interpreter exit can deadlock); a fork()ed
// child gets a new one, since the parent's workers do not exist there and a job would wait for them forever.
ThreadPool &pool() { return ForkRenewed<ThreadPool>::get(); }

void ThreadPool::pool_release_at_exit() { pool().release_all(); }

}  // namespace

bool parallel_for(int64_t n, const std::function<void(int64_t)> &fn, int max_threads, const fa_cancel *cancel) {
    return pool().run(n, fn, max_threads, cancel);
}

int available_cpus() {
    int n = g_available_cpus.load(std::memory_order_relaxed);
    if (n == 0) {
        n = detect_available_cpus();
        g_available_cpus.store(n, std::memory_order_relaxed);
    }
    return n;
}

int threads_for_work(int64_t items, double work, double min_work_per_thread, int max_threads) {
    int threads = max_threads > 0 ? max_threads : pool().size();
    if (!call_env().thread_caps_off) {
        threads = std::min(threads, available_cpus());
        if (min_work_per_thread > 0) {
            const double by_work = work / min_work_per_thread;
            if (by_work < double(threads)) threads = int(std::max(1.0, by_work));
        }
    }
    if (int64_t(threads) > items) threads = int(std::max<int64_t>(1, items));
    return std::max(1, threads);
}

int pool_live_workers() { return pool().live_workers(); }
int pool_num_threads() { return pool().size(); }
void pool_set_num_threads(int n) {
    g_available_cpus.store(detect_available_cpus(), std::memory_order_relaxed);  // the affinity may have changed
    pool().set_size(n);
}

PoolActivity pool_take_activity() {
    PoolActivity a = tl_activity;
    tl_activity = PoolActivity();
    return a;
}

}  // namespace fa_cpu

// The C ABI's thread-count knobs are implemented here (csrc/fa_abi.cpp must not define them).
extern "C" void fa_set_num_threads(int n) { fa_cpu::pool_set_num_threads(n); }
extern "C" int fa_get_num_threads(void) { return fa_cpu::pool_num_threads(); }
extern "C" void fa_cpu_take_pool_activity(fa_cpu_pool_activity *out) {
    if (!out) return;
    const fa_cpu::PoolActivity a = fa_cpu::pool_take_activity();
    out->calls = a.calls;
    out->max_threads = a.max_threads;
    out->workers_posted = a.workers_posted;
    out->workers_woken = a.workers_woken;
    out->workers_taken_back = a.workers_taken_back;
}
