// fa_abi.cpp - the C ABI entry points (fa_abi.h): parameter defaults, checking, and dispatch to the backends
// (fa_backends.h). This is the only place where the ABI meets C++: no exception may cross it, so every call into a
// backend is wrapped and an escaping exception becomes an error code with a message.
#include "fa_abi.h"

#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <new>

#include "fa_alloc.h"
#include "fa_backends.h"
#include "plan/fa_plan_build.h"

namespace {

// snprintf that tolerates a NULL/zero-length message buffer. The empty message every call starts with is one store:
// no formatting on the path of a call that succeeds.
void set_msg(char *err, size_t errlen, const char *msg) {
    if (!err || !errlen) return;
    if (!*msg) err[0] = 0;
    else std::snprintf(err, errlen, "%s", msg);
}

// Runs `fn` (a backend call returning an fa_status) and converts C++ exceptions into fa_status codes.
template <class Fn>
int guarded(char *err, size_t errlen, Fn &&fn) {
    try {
        return fn();
    } catch (const std::bad_alloc &) {
        set_msg(err, errlen, "out of memory while running attention (std::bad_alloc)");
        return FA_ERR_MEMORY;
    } catch (const std::exception &e) {
        if (err && errlen) std::snprintf(err, errlen, "internal error: %s", e.what());
        return FA_ERR_RUNTIME;
    } catch (...) {
        set_msg(err, errlen, "internal error: unknown C++ exception");
        return FA_ERR_RUNTIME;
    }
}

// A call that failed while a large allocation failed (on any thread: a worker's failure reaches the backend only as
// "a work item failed") is an out-of-memory error: FA_ERR_MEMORY, with the size of that allocation in the message.
int memory_status(uint64_t failures_before, int rc, char *err, size_t errlen) {
    if (rc == FA_OK || fa_alloc::failures() == failures_before) return rc;
    char what[512] = {0};
    if (err && errlen) std::snprintf(what, sizeof what, "%s", err);
    if (err && errlen)
        std::snprintf(err, errlen, "out of memory: allocating %llu bytes failed (%s)",
                      static_cast<unsigned long long>(fa_alloc::last_failed_bytes()), what);
    return FA_ERR_MEMORY;
}

const char *backend_name(fa_backend b) {
    switch (b) {
        case FA_BACKEND_CPU: return "cpu";
        case FA_BACKEND_SIM: return "sim";
        case FA_BACKEND_METAL: return "metal";
    }
    return "?";
}

bool valid_backend(fa_backend b) {
    return b == FA_BACKEND_CPU || b == FA_BACKEND_SIM || b == FA_BACKEND_METAL;
}

int bad_backend(fa_backend b, char *err, size_t errlen) {
    if (err && errlen)
        std::snprintf(err, errlen, "backend must be one of 'cpu', 'sim', 'metal' (got code %d)", static_cast<int>(b));
    return FA_ERR_VALUE;
}

// Sim and Metal backends both execute a plan: the call's one plan is built here, for the chosen device, and handed
// to its executor, which only carries it out (fa_backends.h).
int execute_plan_backend(fa_backend backend, fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                         char *err, size_t errlen) {
    // The plan is large (launches with inline constants): keep it off the caller's stack.
    const std::unique_ptr<fa_plan> plan(new fa_plan());
    const fa_plan_launch_fits fits = backend == FA_BACKEND_METAL ? fa_metal_launch_fits : nullptr;
    int rc = fa_plan_build_for_device(kind, p, u, fits, plan.get(), err, errlen);
    if (rc != FA_OK) return rc;
    if (backend == FA_BACKEND_SIM) return fa_sim_execute(plan.get(), p, u, err, errlen);
    return fa_metal_execute(plan.get(), p, u, err, errlen);
}

// The simulator serves plans when its build has one kernel of every forward and KV-cache family, named as the plan
// names them (fa_plan_probe_kernel_name).
int sim_available(char *why, size_t whylen) {
    char name[FA_PLAN_KERNEL_NAME_LEN];
    for (int i = 0; fa_plan_probe_kernel_name(i, name, sizeof(name)) == FA_OK; ++i) {
        if (fa_sim_has_kernel(name)) continue;
        if (why && whylen)
            std::snprintf(why, whylen, "the simulator build does not contain the attention kernels (kernels/*.metal)");
        return 0;
    }
    return 1;
}

// Reject device buffers for backends that only take host pointers.
int check_device_buffers(fa_backend backend, const fa_params *p, char *err, size_t errlen) {
    if (p->device_buffers && backend != FA_BACKEND_METAL) {
        if (err && errlen)
            std::snprintf(err, errlen,
                          "tensors given as Metal buffers can only run on backend 'metal' (requested '%s')",
                          backend_name(backend));
        return FA_ERR_VALUE;
    }
    return FA_OK;
}

// Backend availability with a reason, shared by the dispatchers.
int require_available(fa_backend backend, char *err, size_t errlen) {
    char why[512] = {0};
    if (fa_backend_available(backend, why, sizeof why)) return FA_OK;
    if (err && errlen) std::snprintf(err, errlen, "backend '%s' is not available: %s", backend_name(backend), why);
    return FA_ERR_UNAVAILABLE;
}

// A cancelled call reports FA_ERR_CANCELLED whatever the backend made of its early stop (a worker's "failed").
int cancelled_status(const fa_params *p, int rc, char *err, size_t errlen) {
    if (rc == FA_OK || !fa_cancel_rt::requested(p->cancel)) return rc;
    set_msg(err, errlen, "cancelled (fa_params.cancel was requested)");
    return FA_ERR_CANCELLED;
}

// Forward and backward share every step but the CPU entry point and the plan kind.
int run_attention(fa_backend backend, fa_params *p, bool backward, char *err, size_t errlen) {
    set_msg(err, errlen, "");
    if (!valid_backend(backend)) return bad_backend(backend, err, errlen);
    if (!p) {
        set_msg(err, errlen, "params must not be NULL");
        return FA_ERR_VALUE;
    }
    const uint64_t failures_before = fa_alloc::failures();
    return memory_status(failures_before, guarded(err, errlen, [&]() -> int {
        int rc = fa_check_params(p, backward ? 1 : 0, err, errlen);
        if (rc != FA_OK) return rc;
        if ((rc = check_device_buffers(backend, p, err, errlen)) != FA_OK) return rc;
        if ((rc = require_available(backend, err, errlen)) != FA_OK) return rc;
        // This thread polls the cancellation token while the call runs (fa_cancel.h).
        fa_cancel_rt::PollScope poller(p->cancel);
        if (fa_cancel_rt::requested(p->cancel)) rc = FA_ERR_CANCELLED;
        else if (backend == FA_BACKEND_CPU) rc = backward ? fa_cpu_backward(p, err, errlen) : fa_cpu_forward(p, err, errlen);
        else rc = execute_plan_backend(backend, backward ? FA_PLAN_BACKWARD : FA_PLAN_FORWARD, p, nullptr, err, errlen);
        return cancelled_status(p, rc, err, errlen);
    }), err, errlen);
}

}  // namespace

extern "C" {

void fa_params_init(fa_params *p) {
    if (!p) return;
    std::memset(p, 0, sizeof *p);
    p->dtype = FA_F32;
    p->window_left = -1;
    p->window_right = -1;
    p->softmax_scale = 1.0f;
    p->num_splits = 0;
    p->num_threads = 0;
    p->sim_schedules = 1;
}

int fa_forward(fa_backend backend, fa_params *p, char *err, size_t errlen) {
    return run_attention(backend, p, /*backward=*/false, err, errlen);
}

int fa_backward(fa_backend backend, fa_params *p, char *err, size_t errlen) {
    return run_attention(backend, p, /*backward=*/true, err, errlen);
}

// Checks of the update descriptor that fa_check_params cannot do (it does not see `u`); see fa_check.cpp.
int fa_check_kvcache_update(const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);

int fa_kvcache_append(fa_backend backend, fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    set_msg(err, errlen, "");
    if (!valid_backend(backend)) return bad_backend(backend, err, errlen);
    if (!p || !u) {
        set_msg(err, errlen, "params and update must not be NULL");
        return FA_ERR_VALUE;
    }
    const uint64_t failures_before = fa_alloc::failures();
    return memory_status(failures_before, guarded(err, errlen, [&]() -> int {
        int rc = fa_check_params(p, 0, err, errlen);
        if (rc != FA_OK) return rc;
        if ((rc = fa_check_kvcache_update(p, u, err, errlen)) != FA_OK) return rc;
        if ((rc = check_device_buffers(backend, p, err, errlen)) != FA_OK) return rc;
        if ((rc = require_available(backend, err, errlen)) != FA_OK) return rc;
        // Not a cancellation point: once started, the append writes every new row (a cache is never left half
        // written). Its CPU work is O(new rows); the simulator runs the append launches without the token.
        if (backend == FA_BACKEND_CPU) return fa_cpu_kvcache_append(p, u, err, errlen);
        return execute_plan_backend(backend, FA_PLAN_KVCACHE_APPEND, p, u, err, errlen);
    }), err, errlen);
}

int fa_describe_plan(int kind, const fa_params *p, const fa_kvcache_update *u, char *json, size_t jsonlen,
                     char *err, size_t errlen) {
    set_msg(err, errlen, "");
    if (json && jsonlen) json[0] = '\0';
    if (!p) {
        set_msg(err, errlen, "params must not be NULL");
        return FA_ERR_VALUE;
    }
    if (kind < FA_PLAN_FORWARD || kind > FA_PLAN_KVCACHE_APPEND) {
        if (err && errlen) std::snprintf(err, errlen, "plan kind must be 0 (forward), 1 (backward) or 2 (kvcache), got %d", kind);
        return FA_ERR_VALUE;
    }
    if (kind == FA_PLAN_KVCACHE_APPEND && !u) {
        set_msg(err, errlen, "a kvcache plan needs the update descriptor");
        return FA_ERR_VALUE;
    }
    if (!json || jsonlen == 0) {
        set_msg(err, errlen, "no output buffer for the plan JSON");
        return FA_ERR_VALUE;
    }
    return guarded(err, errlen, [&]() -> int {
        int rc = fa_check_params(p, kind == FA_PLAN_BACKWARD, err, errlen);
        if (rc != FA_OK) return rc;
        if (kind == FA_PLAN_KVCACHE_APPEND && (rc = fa_check_kvcache_update(p, u, err, errlen)) != FA_OK) return rc;
        // The plan is large (launches with inline constants): keep it off the caller's stack.
        auto plan = std::unique_ptr<fa_plan>(new fa_plan());
        rc = fa_plan_build(static_cast<fa_plan_kind>(kind), p, u, plan.get(), err, errlen);
        if (rc != FA_OK) return rc;
        rc = fa_plan_to_json(plan.get(), json, jsonlen);
        if (rc != FA_OK) {
            set_msg(err, errlen, "plan JSON does not fit the output buffer");
            return rc;
        }
        return FA_OK;
    });
}

int fa_backend_available(fa_backend backend, char *why, size_t whylen) {
    set_msg(why, whylen, "");
    if (!valid_backend(backend)) {
        set_msg(why, whylen, "unknown backend");
        return 0;
    }
    int rc = guarded(why, whylen, [&]() -> int {
        switch (backend) {
            case FA_BACKEND_CPU: return 1;
            case FA_BACKEND_SIM: return sim_available(why, whylen);
            case FA_BACKEND_METAL: return fa_metal_available(why, whylen);
        }
        return 0;
    });
    // guarded() reports exceptions as FA_ERR_RUNTIME (5): that means "not available" here.
    return rc == 1 ? 1 : 0;
}

int fa_backend_describe(fa_backend backend, char *out, size_t outlen) {
    set_msg(out, outlen, "");
    if (!valid_backend(backend)) {
        set_msg(out, outlen, "unknown backend");
        return FA_ERR_VALUE;
    }
    return guarded(out, outlen, [&]() -> int {
        char why[512] = {0};
        switch (backend) {
            case FA_BACKEND_CPU: {
                int n = fa_get_num_threads();
                if (out && outlen)
                    std::snprintf(out, outlen, "C++ FlashAttention-2, %s kernels, %d thread%s",
                                  fa_cpu::cpu_isa_description(), n, n == 1 ? "" : "s");
                return FA_OK;
            }
            case FA_BACKEND_SIM:
                if (sim_available(why, sizeof why)) {
                    set_msg(out, outlen, "project Metal kernels executed by the CPU Metal simulator");
                } else if (out && outlen) {
                    std::snprintf(out, outlen, "unavailable: %s", why);
                }
                return FA_OK;
            case FA_BACKEND_METAL:
                return fa_metal_describe(out, outlen);
        }
        return FA_ERR_VALUE;
    });
}

// fa_set_num_threads / fa_get_num_threads are defined by the CPU thread pool (csrc/cpu/thread_pool.cpp).

}  // extern "C"
