/*
 * fa_cancel.h - cooperative cancellation of a running call: the one mechanism shared by the C ABI (fa_params.cancel),
 * the CPU backend (checks between tiles and work items, csrc/cpu/thread_pool.cpp waits) and the Metal simulator
 * (checks between fiber steps and threadgroups; a kernel stuck in a loop is interrupted like the watchdog does).
 *
 * It lives beside the simulator runtime because that runtime is also compiled on its own into the modules
 * flash_attn_cy.sim builds at run time, which see only this folder; fa_abi.h includes it from here.
 *
 * A token is owned by one call. `requested` set (atomically) means: stop at the next check, leave no worker running,
 * return FA_ERR_CANCELLED. `poll` lets the caller ask, e.g., Python whether a signal arrived: it is called ONLY on
 * the thread that started the call (Python handles signals on its main thread, under the GIL), about every
 * FA_CANCEL_POLL_MS while the call runs - between tiles when that thread computes, and from its waits otherwise.
 */
#ifndef FA_CANCEL_H
#define FA_CANCEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fa_cancel {
    int32_t requested;          /* nonzero: stop at the next check (read and written with atomic builtins) */
    int (*poll)(void *ctx);     /* optional: nonzero return requests cancellation */
    void *poll_ctx;
} fa_cancel;

#define FA_CANCEL_POLL_MS 20

#ifdef __cplusplus
}  /* extern "C" */

#include <chrono>

namespace fa_cancel_rt {

inline int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// The token this thread polls for (set by PollScope on the thread that entered the call) and when it polls next.
struct PollState {
    const fa_cancel *token = nullptr;
    int64_t next_ns = 0;
};
inline PollState &poll_state() {
    static thread_local PollState s;
    return s;
}

inline bool requested(const fa_cancel *c) { return c && __atomic_load_n(&c->requested, __ATOMIC_RELAXED) != 0; }
inline void request(const fa_cancel *c) {
    if (c) __atomic_store_n(&const_cast<fa_cancel *>(c)->requested, 1, __ATOMIC_RELAXED);
}

// The check compute makes between tiles: true = stop now. Cheap (one relaxed load) except on the polling thread
// once per FA_CANCEL_POLL_MS, where it calls the token's poll.
inline bool check(const fa_cancel *c) {
    if (!c) return false;
    if (requested(c)) return true;
    PollState &s = poll_state();
    if (s.token != c || !c->poll) return false;
    const int64_t now = now_ns();
    if (now < s.next_ns) return false;
    s.next_ns = now + int64_t(FA_CANCEL_POLL_MS) * 1000000;
    if (c->poll(c->poll_ctx)) request(c);
    return requested(c);
}

// check() for the token this thread polls for, if any: for waits that do not know the call (thread pool).
inline bool check_current() {
    const fa_cancel *c = poll_state().token;
    return c && check(c);
}

// Makes the current thread the poller of `c` for its lifetime (the ABI entry points); restores the previous one.
class PollScope {
  public:
    explicit PollScope(const fa_cancel *c) : saved_(poll_state()) {
        poll_state().token = c;
        poll_state().next_ns = now_ns() + int64_t(FA_CANCEL_POLL_MS) * 1000000;
    }
    ~PollScope() { poll_state() = saved_; }
    PollScope(const PollScope &) = delete;
    PollScope &operator=(const PollScope &) = delete;

  private:
    PollState saved_;
};

}  // namespace fa_cancel_rt
#endif /* __cplusplus */

#endif /* FA_CANCEL_H */
