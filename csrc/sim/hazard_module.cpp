// hazard_module.cpp - see hazard_module.h. Part of the core library (not of the module it loads).
#include "hazard_module.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

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
    std::vector<int> bidx, bwr, yidx;
    std::vector<void *> bdata;
    std::vector<const void *> bsrc, ydata;
    std::vector<size_t> blen, ylen;
    for (const BufferArg &b : buffers) {
        bidx.push_back(b.index);
        bdata.push_back(b.data);
        bsrc.push_back(b.src);
        blen.push_back(b.bytes);
        bwr.push_back(b.writable ? 1 : 0);
    }
    for (const BytesArg &b : bytes) {
        yidx.push_back(b.index);
        ydata.push_back(b.data);
        ylen.push_back(b.bytes);
    }
    std::vector<int> cidx;
    std::vector<const char *> cname;
    std::vector<unsigned> ctype;
    std::vector<const void *> cval;
    std::vector<size_t> clen;
    for (const FunctionConstantValue &c : cfg.constants) {
        cidx.push_back(c.index);
        cname.push_back(c.name.c_str());
        ctype.push_back(c.mtl_type);
        cval.push_back(c.value.data());
        clen.push_back(c.value.size());
    }
    std::vector<char> out(1 << 16);
    const int n = m.launch(kernel, cfg.grid, cfg.threads, (int)bidx.size(), bidx.data(), bdata.data(), bsrc.data(),
                           blen.data(), bwr.data(), (int)yidx.size(), yidx.data(), ydata.data(), ylen.data(),
                           cfg.schedules, cfg.seed, cfg.host_threads, cfg.bounds_run ? 1 : 0, 1, cfg.schedule_mode,
                           out.data(), out.size(), cfg.cancel, (int)cidx.size(), cidx.data(), cname.data(),
                           ctype.data(), cval.data(), clen.data(), 0, nullptr,
                           nullptr);  // the package's kernels take no [[threadgroup(n)]] arguments
    if (n < 0) {
        *why = out.data();
        return false;
    }
    faults->clear();
    const char *p = out.data();
    while (*p) {  // lines "kind\tmessage\n"
        const char *tab = strchr(p, '\t'), *nl = strchr(p, '\n');
        if (!nl) nl = p + strlen(p);
        if (!tab || tab > nl) tab = p;
        faults->push_back({std::string(p, tab), std::string(tab == p ? p : tab + 1, nl)});
        p = *nl ? nl + 1 : nl;
    }
    return true;
}

}  // namespace fasim
