/*
 * fa_plan_build.h - the dispatch plan's builders (csrc/plan): validated fa_params in, an fa_plan (fa_plan.h) out.
 *
 * Called by the C ABI only (csrc/fa_abi.cpp): it builds the plan of each call once and hands it to the executor
 * (fa_backends.h). The executors include fa_plan.h, never this header (tests/core/test_layers.py).
 */
#ifndef FA_PLAN_BUILD_H
#define FA_PLAN_BUILD_H

#include "fa_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Build the plan. `u` is required for FA_PLAN_KVCACHE_APPEND and ignored otherwise. out->kind is `kind`. */
int fa_plan_build(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, fa_plan *out, char *err,
                  size_t errlen);

/* A device's answer to "can you run this launch as planned?": non-zero when it can, or cannot tell (the launch then
 * fails, with the device's reason, when it is encoded). */
typedef int (*fa_plan_launch_fits)(const fa_launch *launch);

/* fa_plan_build for an executor whose pipelines may allow fewer threads than a launch wants (`fits` asks it; NULL:
 * every launch fits). The plan asks only about launches it can serve another way: a decode call's vector launch
 * (fa_vec*_*, 256-thread threadgroups), which Metal may refuse for a register-heavy specialisation (e.g. head dim
 * 256), is then planned on the fragment kernel (fa_dec_*): same results, same contract as fa_plan_build. */
int fa_plan_build_for_device(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                             fa_plan_launch_fits fits, fa_plan *out, char *err, size_t errlen);

/* The Metal function name of probe kernel i (one of every forward and KV-cache family): FA_OK, or -1 past the last.
 * The C ABI reports an executor that has every probe able to serve plans (fa_backend_available). */
int fa_plan_probe_kernel_name(int i, char *out, size_t outlen);

/* The plan as JSON (fa_describe_plan, tests, `python -m flash_attn_cy info`): FA_OK, or an error code when it does
 * not fit out[outlen]. */
int fa_plan_to_json(const fa_plan *plan, char *out, size_t outlen);

#ifdef __cplusplus
}
#endif

#endif /* FA_PLAN_BUILD_H */
