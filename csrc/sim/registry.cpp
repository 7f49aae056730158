// registry.cpp - kernels register themselves (generated trampolines) under their Metal function names.
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "include/fasim_rt.h"
#include "sim_api.h"

namespace fasim {

static const KernelInfo *g_registry = nullptr;  // constant-initialised, so registrars may run in any order

KernelRegistrar::KernelRegistrar(KernelInfo *k, bool instrumented) {
    k->instrumented = instrumented;
    k->next = g_registry;
    g_registry = k;
}

const KernelInfo *find_kernel(const char *name) {
    if (!name) return nullptr;
    for (const KernelInfo *k = g_registry; k; k = k->next)
        if (strcmp(k->name, name) == 0) return k;
    return nullptr;
}

std::vector<std::string> kernel_names() {
    std::vector<std::string> v;
    for (const KernelInfo *k = g_registry; k; k = k->next) v.push_back(k->name);
    std::sort(v.begin(), v.end());
    return v;
}
}  // namespace fasim
