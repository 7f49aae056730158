// hazard_module.cpp - see hazard_module.h. Part of the core library (not of the module it loads).
#include "hazard_module.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "launch_args.h"

namespace fasim {

namespace {

// fasim_launch of csrc/sim/c_api.cpp, exported by the module.
typedef int (*LaunchFn)(const char *kernel, const unsigned *grid, const unsigned *threads, int nbuf,
                        const int *buf_index, void *const *buf_data, const void *const *buf_src,
                        const size_t *buf_bytes, const int *buf_writable, int nbytes, const int *bytes_index,
                        const void *const *bytes_data, const size_t *bytes_len, int schedules, unsigned long long seed,
                        int host_threads, int bounds_run, int hazards, int schedule_mode, char *out, size_t outlen,
                        const fa_cancel *cancel, int nconst, const int *const_index, const char *const *const_name,
                        const unsigned *const_type, const void *const *const_value, const size_t *const_bytes,
                        int ntgmem, const int *tgmem_index, const size_t *tgmem_bytes);

struct Module {
    LaunchFn launch = nullptr;
    std::string error;
};

// The module sits in the package's sim/ folder, beside the library holding this code (flash_attn_cy/_core*.so).
Module load() {
    Module m;
    Dl_info info;
    if (!dladdr((void *)&hazards_requested, &info) || !info.dli_fname) {
        m.error = "cannot tell where the package's core library is (dladdr failed)";
        return m;
    }
    std::string dir = info.dli_fname;
    const size_t slash = dir.find_last_of('/');
    dir = slash == std::string::npos ? std::string(".") : dir.substr(0, slash);
    const std::string path = dir + "/sim/_sim_hazard.so";
    void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        m.error = "cannot load " + path + " (" + (e ? e : "unknown error") +
                  "): this build has no kernels compiled for the hazard detector (it needs a compiler with "
                  "-fsanitize=thread, GCC or clang)";
        return m;
    }
    m.launch = (LaunchFn)dlsym(h, "fasim_launch");
    if (!m.launch) m.error = path + " has no fasim_launch";
    return m;
}

const Module &module() {
    static const Module m = load();  // thread-safe initialisation; the module stays loaded
    return m;
}

}  // namespace

bool hazards_requested() {
    const char *e = getenv("FLASH_ATTN_CY_SIM_HAZARDS");
    return e && *e && strcmp(e, "0") != 0;
}

bool launch_with_hazards(const char *kernel, const LaunchConfig &cfg, const std::vector<BufferArg> &buffers,
                         const std::vector<BytesArg> &bytes, std::vector<Fault> *faults, std::string *why) {
    const Module &m = module();
    if (!m.launch) {
        *why = m.error;
        return false;
    }
    const FlatLaunchArgs a(cfg, buffers, bytes);
    std::vector<char> out(1 << 16);
    const int n = m.launch(kernel, cfg.grid, cfg.threads, (int)a.buf_index.size(), a.buf_index.data(), a.buf_data.data(),
                           a.buf_src.data(), a.buf_bytes.data(), a.buf_writable.data(), (int)a.bytes_index.size(),
                           a.bytes_index.data(), a.bytes_data.data(), a.bytes_len.data(), cfg.schedules, cfg.seed,
                           cfg.host_threads, cfg.bounds_run ? 1 : 0, 1, cfg.schedule_mode, out.data(), out.size(),
                           cfg.cancel, (int)a.const_index.size(), a.const_index.data(), a.const_name.data(),
                           a.const_type.data(), a.const_value.data(), a.const_bytes.data(), 0, nullptr,
                           nullptr);  // the package's kernels take no [[threadgroup(n)]] arguments
    if (n < 0) {
        *why = out.data();
        return false;
    }
    *faults = parse_fault_lines(out.data());
    return true;
}

}  // namespace fasim
