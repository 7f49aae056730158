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

// The plan executors. The C ABI (csrc/fa_abi.cpp) builds one plan per call (csrc/plan) and hands it to one of them;
// the executor only carries it out: the memory p and u give for each logical buffer (fa_buffers.h) bound where the
// plan's launches say, their specialisation constants and constant blocks passed, their grids dispatched in order.
// An executor never builds, changes or replaces a plan. C linkage: tests/objc/test_objc_e2e.py interposes on the
// hand-off (ld --wrap) to check that each executor receives the very plan object the ABI built.
extern "C" {

// Simulator backend (csrc/sim_backend.cpp): runs the plan on the Metal simulator (csrc/sim).
int fa_sim_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);
// Whether the simulator build contains a kernel (its registry name is the kernel's Metal function name).
int fa_sim_has_kernel(const char *name);

// Metal backend (objc/ on macOS; csrc/metal_unavailable.cpp elsewhere): encodes the plan into one command buffer.
int fa_metal_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);
// Whether the pipeline of a launch's kernel allows its threadgroup size on this device (an fa_plan_launch_fits for
// fa_plan_build_for_device): 0 when Metal lowered the pipeline's maxTotalThreadsPerThreadgroup below it, else 1
// (also when it cannot tell: no usable device, or a pipeline that cannot be made, which encoding then reports).
int fa_metal_launch_fits(const fa_launch *launch);
int fa_metal_available(char *why, size_t whylen);
int fa_metal_describe(char *out, size_t outlen);

}  // extern "C"
