/*
 * fa_plan_build.h - the dispatch plan's builders (csrc/plan): validated fa_params in, an fa_plan (fa_plan.h) out.
 *
 * Called by the C ABI (fa_describe_plan) and, for now, by the two executors themselves (csrc/sim_backend.cpp,
 * objc/fa_metal_execute.mm): tests/core/test_layers.py lists those two includes as the known upward dependencies that
 * remain until the dispatcher builds the plan once and hands it down.
 */
#ifndef FA_PLAN_BUILD_H
#define FA_PLAN_BUILD_H

#include "fa_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Build the plan. `u` is required for FA_PLAN_KVCACHE_APPEND and ignored otherwise. */
int fa_plan_build(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, fa_plan *out, char *err,
                  size_t errlen);

/* The forward plan with decode calls on the fragment kernel (fa_dec_*) instead of the vector kernels (fa_vec*_*,
 * 256-thread threadgroups): the Metal shim's fallback when a vector pipeline allows fewer threads per threadgroup
 * (a register-heavy specialisation, e.g. head dim 256). Same results, same contract as fa_plan_build. */
int fa_plan_build_forward_without_vector(const fa_params *p, fa_plan *out, char *err, size_t errlen);

/* The Metal function name of probe kernel i (one of every forward and KV-cache family): FA_OK, or -1 past the last.
 * An executor that finds every probe can serve plans. */
int fa_plan_probe_kernel_name(int i, char *out, size_t outlen);

/* The plan as JSON (fa_describe_plan, tests, `python -m flash_attn_cy info`): FA_OK, or an error code when it does
 * not fit out[outlen]. */
int fa_plan_to_json(const fa_plan *plan, char *out, size_t outlen);

#ifdef __cplusplus
}
#endif

#endif /* FA_PLAN_BUILD_H */
