// thread_pool.cpp - persistent worker pool; see thread_pool.h for the contract.
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "fa_abi.h"
#include "fork_renewed.h"

namespace fa_cpu {
namespace {

// True on pool workers, and on a calling thread while it executes items of its own job.
thread_local bool tl_is_pool_worker = false;

// How long an idle worker keeps polling for the next job before it sleeps on the condition variable, and how long a
// caller polls for the last worker before it sleeps. A model calls attention once per layer with little work in
// between: a futex wake-up of a worker whose (virtual) CPU went idle measured 0.3-0.8 ms on the 2-vCPU VM, as long
// as a whole small prefill or decode call. 200 us covers back-to-back calls while an idle process stops polling
// almost at once.
constexpr std::chrono::microseconds SPIN_WINDOW{200};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
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

int hardware_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : int(std::min(n, 256u));
}

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

class ThreadPool {
  public:
    int size() {
        int n = requested_.load(std::memory_order_relaxed);
        return n > 0 ? n : hardware_threads();
    }
    void set_size(int n) { requested_.store(n < 0 ? 0 : std::min(n, 1024), std::memory_order_relaxed); }
    // The pool of a fork()ed child (see fork_renewed.h): no workers yet, the same requested size.
    static ThreadPool *renewed_after_fork(const ThreadPool &old) {
        ThreadPool *p = new ThreadPool();
        p->set_size(old.requested_.load(std::memory_order_relaxed));
        return p;
    }
    int live_workers() {
        std::lock_guard<std::mutex> lk(m_);
        return live_;
    }
    // At exit: sleeping workers leave (busy ones after their item); nobody waits for them.
    void release_all() {
        {
            std::lock_guard<std::mutex> lk(m_);
            shutdown_ = true;
        }
        cv_work_.notify_all();
    }

    bool run(int64_t n, const std::function<void(int64_t)> &fn, int max_threads, const fa_cancel *cancel) {
        if (n <= 0) return !fa_cancel_rt::requested(cancel);
        int threads = size();
        if (max_threads > 0) threads = std::min(threads, max_threads);
        if (int64_t(threads) > n) threads = int(n);
        if (threads <= 1 || tl_is_pool_worker) return run_serial(n, fn, cancel);

        // One job at a time; other callers wait here, polling their cancellation token.
        std::unique_lock<std::timed_mutex> call_lock(call_mutex_, std::defer_lock);
        while (!call_lock.try_lock_for(POLL_INTERVAL))
            if (fa_cancel_rt::check(cancel)) return false;
        {
            std::lock_guard<std::mutex> lk(m_);
            // Under m_, so that a worker retiring at this moment is either seen as gone here or sees this job.
            start_workers(threads - 1);
            job_fn_ = &fn;
            job_n_ = n;
            job_cancel_ = cancel;
            next_.store(0, std::memory_order_relaxed);
            failed_.store(false, std::memory_order_relaxed);
            active_workers_ = threads - 1;
            pending_.store(threads - 1, std::memory_order_relaxed);
            generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        }
        cv_work_.notify_all();
        // The caller helps; while it does, a nested parallel_for from fn runs serially instead of waiting for
        // call_mutex_, which this thread already holds.
        tl_is_pool_worker = true;
        work_loop();
        tl_is_pool_worker = false;
        spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; });
        std::unique_lock<std::mutex> lk(m_);
        while (!cv_done_.wait_for(lk, POLL_INTERVAL, [&] { return pending_.load(std::memory_order_relaxed) == 0; })) {
            lk.unlock();
            fa_cancel_rt::check(cancel);  // a request makes the workers skip their remaining items
            lk.lock();
        }
        job_fn_ = nullptr;
        job_cancel_ = nullptr;
        return !failed_.load(std::memory_order_relaxed) && !fa_cancel_rt::requested(cancel);
    }

  private:
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

    void start_workers(int workers) {  // called with m_ held
        if (int(alive_.size()) < workers) alive_.resize(size_t(workers), false);
        for (int index = 0; index < workers; ++index) {
            if (alive_[size_t(index)]) continue;
            const uint64_t start_generation = generation_.load(std::memory_order_relaxed);
            // Detached: a worker leaves on its own (idle, exit); nothing ever joins it.
            std::thread([this, index, start_generation] { worker_main(index, start_generation); }).detach();
            alive_[size_t(index)] = true;
            ++live_;
            if (!exit_hook_registered_) {
                exit_hook_registered_ = true;
                std::atexit([] { pool_release_at_exit(); });
            }
        }
    }

    void worker_main(int index, uint64_t seen) {
        tl_is_pool_worker = true;
        for (;;) {
            // A job posted while polling starts without a futex wake-up; the lock below then orders its fields.
            spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
            std::unique_lock<std::mutex> lk(m_);
            const auto idle_until = std::chrono::steady_clock::now() + idle_release_;
            while (generation_.load(std::memory_order_relaxed) == seen) {
                if (shutdown_ || cv_work_.wait_until(lk, idle_until) == std::cv_status::timeout) {
                    if (generation_.load(std::memory_order_relaxed) != seen) break;
                    if (shutdown_ || std::chrono::steady_clock::now() >= idle_until) {
                        alive_[size_t(index)] = false;  // retire; start_workers() starts a new one when needed
                        --live_;
                        return;
                    }
                }
            }
            seen = generation_.load(std::memory_order_relaxed);
            if (index >= active_workers_) continue;  // this job uses fewer threads
            lk.unlock();
            work_loop();
            lk.lock();
            if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) cv_done_.notify_all();
        }
    }

    static void pool_release_at_exit();

    std::atomic<int> requested_{0};
    std::timed_mutex call_mutex_;
    std::mutex m_;
    std::condition_variable cv_work_, cv_done_;
    std::vector<bool> alive_;  // under m_: worker index i is running
    int live_ = 0;             // under m_
    bool shutdown_ = false;    // under m_
    bool exit_hook_registered_ = false;  // under m_
    const std::chrono::nanoseconds idle_release_ = idle_release_from_env();
    std::atomic<uint64_t> generation_{0};  // written under m_; also polled without it by spin_until
    const std::function<void(int64_t)> *job_fn_ = nullptr;
    const fa_cancel *job_cancel_ = nullptr;
    int64_t job_n_ = 0;
    std::atomic<int64_t> next_{0};
    std::atomic<bool> failed_{false};
    int active_workers_ = 0;
    std::atomic<int> pending_{0};  // written under m_; also polled by the caller
};

// The process's pool (leaked: joining workers from a static destructor at interpreter exit can deadlock); a fork()ed
// child gets a new one, since the parent's workers do not exist there and a job would wait for them forever.
ThreadPool &pool() { return ForkRenewed<ThreadPool>::get(); }

void ThreadPool::pool_release_at_exit() { pool().release_all(); }

}  // namespace

bool parallel_for(int64_t n, const std::function<void(int64_t)> &fn, int max_threads, const fa_cancel *cancel) {
    return pool().run(n, fn, max_threads, cancel);
}
int pool_live_workers() { return pool().live_workers(); }
int pool_num_threads() { return pool().size(); }
void pool_set_num_threads(int n) { pool().set_size(n); }

}  // namespace fa_cpu

// The C ABI's thread-count knobs are implemented here (csrc/fa_abi.cpp must not define them).
extern "C" void fa_set_num_threads(int n) { fa_cpu::pool_set_num_threads(n); }
extern "C" int fa_get_num_threads(void) { return fa_cpu::pool_num_threads(); }
