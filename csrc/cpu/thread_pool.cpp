// thread_pool.cpp - persistent worker pool; see thread_pool.h for the contract.
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "fa_abi.h"

namespace fa_cpu {
namespace {

// True on pool workers, and on a calling thread while it executes items of its own job.
thread_local bool tl_is_pool_worker = false;

int hardware_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : int(std::min(n, 256u));
}

class ThreadPool {
  public:
    int size() {
        int n = requested_.load(std::memory_order_relaxed);
        return n > 0 ? n : hardware_threads();
    }
    void set_size(int n) { requested_.store(n < 0 ? 0 : std::min(n, 1024), std::memory_order_relaxed); }

    bool run(int64_t n, const std::function<void(int64_t)> &fn, int max_threads) {
        if (n <= 0) return true;
        int threads = size();
        if (max_threads > 0) threads = std::min(threads, max_threads);
        if (int64_t(threads) > n) threads = int(n);
        if (threads <= 1 || tl_is_pool_worker) return run_serial(n, fn);

        std::lock_guard<std::mutex> call_lock(call_mutex_);  // one job at a time; other callers wait here
        grow_to(threads - 1);
        {
            std::lock_guard<std::mutex> lk(m_);
            job_fn_ = &fn;
            job_n_ = n;
            next_.store(0, std::memory_order_relaxed);
            failed_.store(false, std::memory_order_relaxed);
            active_workers_ = threads - 1;
            pending_ = threads - 1;
            ++generation_;
        }
        cv_work_.notify_all();
        // The caller helps; while it does, a nested parallel_for from fn runs serially instead of waiting for
        // call_mutex_, which this thread already holds.
        tl_is_pool_worker = true;
        work_loop();
        tl_is_pool_worker = false;
        std::unique_lock<std::mutex> lk(m_);
        cv_done_.wait(lk, [&] { return pending_ == 0; });
        job_fn_ = nullptr;
        return !failed_.load(std::memory_order_relaxed);
    }

  private:
    static bool run_serial(int64_t n, const std::function<void(int64_t)> &fn) {
        try {
            for (int64_t i = 0; i < n; ++i) fn(i);
        } catch (...) {
            return false;
        }
        return true;
    }

    void work_loop() {
        for (;;) {
            int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
            if (i >= job_n_) break;
            try {
                (*job_fn_)(i);
            } catch (...) {
                failed_.store(true, std::memory_order_relaxed);
            }
        }
    }

    void grow_to(int workers) {  // called with call_mutex_ held
        while (int(workers_.size()) < workers) {
            int index = int(workers_.size());
            uint64_t start_generation = generation_;  // stable: only changed while call_mutex_ is held
            workers_.emplace_back([this, index, start_generation] { worker_main(index, start_generation); });
        }
    }

    void worker_main(int index, uint64_t seen) {
        tl_is_pool_worker = true;
        std::unique_lock<std::mutex> lk(m_);
        for (;;) {
            cv_work_.wait(lk, [&] { return generation_ != seen; });
            seen = generation_;
            if (index >= active_workers_) continue;  // this job uses fewer threads
            lk.unlock();
            work_loop();
            lk.lock();
            if (--pending_ == 0) cv_done_.notify_all();
        }
    }

    std::atomic<int> requested_{0};
    std::mutex call_mutex_;
    std::mutex m_;
    std::condition_variable cv_work_, cv_done_;
    std::vector<std::thread> workers_;
    uint64_t generation_ = 0;
    const std::function<void(int64_t)> *job_fn_ = nullptr;
    int64_t job_n_ = 0;
    std::atomic<int64_t> next_{0};
    std::atomic<bool> failed_{false};
    int active_workers_ = 0;
    int pending_ = 0;
};

// Deliberately leaked: joining workers from a static destructor at interpreter exit can deadlock.
ThreadPool &pool() {
    static ThreadPool *p = new ThreadPool();
    return *p;
}

}  // namespace

bool parallel_for(int64_t n, const std::function<void(int64_t)> &fn, int max_threads) {
    return pool().run(n, fn, max_threads);
}
int pool_num_threads() { return pool().size(); }
void pool_set_num_threads(int n) { pool().set_size(n); }

}  // namespace fa_cpu

// The C ABI's thread-count knobs are implemented here (csrc/fa_abi.cpp must not define them).
extern "C" void fa_set_num_threads(int n) { fa_cpu::pool_set_num_threads(n); }
extern "C" int fa_get_num_threads(void) { return fa_cpu::pool_num_threads(); }
