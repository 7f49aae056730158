// metal_unavailable.cpp - the Metal backend entry points for builds without the Objective-C++ shim (every
// non-macOS build, and macOS builds configured with -Dmetal=disabled). They never pretend: each call returns
// FA_ERR_UNAVAILABLE with the reason, so the dispatcher's "auto" choice falls back to the CPU backend.
#include <cstdio>

#include "fa_backends.h"
#include "fa_metal_shim.h"

namespace {

#if defined(__APPLE__)
constexpr const char *kReason =
    "the Metal backend is not part of this build: it was configured with -Dmetal=disabled "
    "(rebuild with -Dmetal=enabled or auto to use the GPU); use backend='cpu' or backend='sim'";
#else
constexpr const char *kReason =
    "Metal exists only on macOS with an Apple GPU and this build is not for macOS; use backend='cpu', or "
    "backend='sim' to run the project's Metal kernels in the CPU simulator";
#endif

int unavailable(char *msg, size_t len) {
    if (msg != nullptr && len > 0) std::snprintf(msg, len, "%s", kReason);
    return FA_ERR_UNAVAILABLE;
}

}  // namespace

int fa_metal_execute(const fa_plan *, const fa_params *, const fa_kvcache_update *, char *err, size_t errlen) {
    return unavailable(err, errlen);
}

// No device, nothing to refuse: the call fails in fa_metal_execute (never reached: the backend is unavailable).
int fa_metal_launch_fits(const fa_launch *) { return 1; }

int fa_metal_available(char *why, size_t whylen) {
    unavailable(why, whylen);
    return 0;
}

int fa_metal_describe(char *out, size_t outlen) {
    if (out != nullptr && outlen > 0) std::snprintf(out, outlen, "not built: %s", kReason);
    return FA_OK;
}

int fa_metal_compile_source(const char *, char *names, size_t nameslen, char *err, size_t errlen) {
    if (names != nullptr && nameslen > 0) names[0] = '\0';
    return unavailable(err, errlen);
}

int fa_metal_library_functions(char *path, size_t pathlen, char *names, size_t nameslen, char *err, size_t errlen) {
    if (path != nullptr && pathlen > 0) path[0] = '\0';
    if (names != nullptr && nameslen > 0) names[0] = '\0';
    return unavailable(err, errlen);
}
