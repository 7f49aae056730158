// fa_scaffold_weak.cpp - TEMPORARY weak definitions of every backend entry point (fa_backends.h) and of the plan
// builder (plan/fa_plan.h), so fa_core links while components are still being written. Included at the bottom of
// fa_abi.cpp (not compiled on its own). A component's strong definition overrides its stand-in at link time.
// The lead deletes this file (and its #include) once every component has landed.
#include <cstdio>

#include "fa_backends.h"

#define FA_SCAFFOLD_WEAK __attribute__((weak))

namespace {
int fa_scaffold_missing(const char *component, char *err, size_t errlen) {
    if (err && errlen) std::snprintf(err, errlen, "%s: component not built yet", component);
    return FA_ERR_UNAVAILABLE;
}
}  // namespace

FA_SCAFFOLD_WEAK int fa_cpu_forward(const fa_params *, char *err, size_t errlen) {
    return fa_scaffold_missing("CPU forward", err, errlen);
}
FA_SCAFFOLD_WEAK int fa_cpu_backward(const fa_params *, char *err, size_t errlen) {
    return fa_scaffold_missing("CPU backward", err, errlen);
}
FA_SCAFFOLD_WEAK int fa_cpu_kvcache_append(const fa_params *, const fa_kvcache_update *, char *err, size_t errlen) {
    return fa_scaffold_missing("CPU KV-cache append", err, errlen);
}
FA_SCAFFOLD_WEAK int fa_sim_execute(fa_plan_kind, const fa_params *, const fa_kvcache_update *, char *err,
                                    size_t errlen) {
    return fa_scaffold_missing("simulator backend", err, errlen);
}
FA_SCAFFOLD_WEAK int fa_sim_available(char *why, size_t whylen) {
    fa_scaffold_missing("simulator backend", why, whylen);
    return 0;
}
FA_SCAFFOLD_WEAK int fa_metal_execute(fa_plan_kind, const fa_params *, const fa_kvcache_update *, char *err,
                                      size_t errlen) {
    return fa_scaffold_missing("Metal backend", err, errlen);
}
FA_SCAFFOLD_WEAK int fa_metal_available(char *why, size_t whylen) {
    fa_scaffold_missing("Metal backend", why, whylen);
    return 0;
}
FA_SCAFFOLD_WEAK int fa_metal_describe(char *out, size_t outlen) {
    return fa_scaffold_missing("Metal backend", out, outlen);
}
FA_SCAFFOLD_WEAK int fa_plan_to_json(const fa_plan *, char *out, size_t outlen) {
    return fa_scaffold_missing("plan JSON", out, outlen);
}
extern "C" FA_SCAFFOLD_WEAK int fa_plan_build(fa_plan_kind, const fa_params *, const fa_kvcache_update *, fa_plan *,
                                              char *err, size_t errlen) {
    return fa_scaffold_missing("dispatch plan", err, errlen);
}
