// fa_backends.h - internal entry points each backend provides to the dispatcher in fa_abi.cpp.
// All take already-checked params (fa_check_params passed) and return an fa_status with a message in err.
#pragma once

#include "fa_abi.h"
#include "plan/fa_plan.h"

// CPU backend (csrc/cpu for forward and the KV-cache update, csrc/cpu/backward for backward).
int fa_cpu_forward(const fa_params *p, char *err, size_t errlen);
int fa_cpu_backward(const fa_params *p, char *err, size_t errlen);
int fa_cpu_kvcache_append(const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);
namespace fa_cpu {
// The kernel set the runtime dispatch picked, first word "avx512", "avx2" or "portable" (csrc/cpu/isa_dispatch.cpp).
const char *cpu_isa_description();
}  // namespace fa_cpu

// Simulator backend (csrc/sim_backend.cpp): builds the plan and runs it on the Metal simulator.
int fa_sim_execute(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);
int fa_sim_available(char *why, size_t whylen);

// Metal backend (objc/ on macOS; csrc/metal_unavailable.cpp elsewhere): builds the plan and encodes it.
int fa_metal_execute(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);
int fa_metal_available(char *why, size_t whylen);
int fa_metal_describe(char *out, size_t outlen);
