// call_env.h - the environment variables the CPU backend honours on every call (FLASH_ATTN_CY_CPU_ISA,
// FLASH_ATTN_CY_THREAD_CAPS), read once per ABI call.
//
// Why: one decode step asks "which kernel set?" and "are the thread caps on?" several times (kernel choice, the
// work split, each parallel_for), and each getenv scans the whole environment. A CallEnvScope at each CPU entry
// point (fa_cpu_forward, fa_cpu_backward, fa_cpu_kvcache_append) reads both once and the questions asked on that
// thread meanwhile take its answers; outside a scope (`info`, another thread) they read the environment as before.
// The semantics are unchanged: a value set between two calls applies to the second.
#pragma once

namespace fa_cpu {

enum class CpuIsaRequest { best, portable, avx2, avx512, neon, amx, amx_emulated, unknown };

struct CallEnv {
    CpuIsaRequest isa_request;  // FLASH_ATTN_CY_CPU_ISA
    bool thread_caps_off;       // FLASH_ATTN_CY_THREAD_CAPS=0
};

// The environment's answers now (two getenv).
CallEnv read_call_env();

// The answers of the innermost scope open on this thread, or the environment's now.
CallEnv call_env();

class CallEnvScope {
  public:
    CallEnvScope();  // an inner scope keeps the outer one's answers: one call, one reading
    ~CallEnvScope();
    CallEnvScope(const CallEnvScope &) = delete;
    CallEnvScope &operator=(const CallEnvScope &) = delete;

  private:
    CallEnv env_;
    const CallEnv *outer_;
};

}  // namespace fa_cpu
