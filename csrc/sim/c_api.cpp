// c_api.cpp - a C entry point over sim_api.h for modules compiled at run time by flash_attn_cy.sim (loaded with
// ctypes). Only built into those modules, not into the package's core library.
#include <string.h>

#include <exception>
#include <new>
#include <string>

#include "sim_api.h"

#if defined(_WIN32)
#define FASIM_EXPORT __declspec(dllexport)
#else
#define FASIM_EXPORT __attribute__((visibility("default")))
#endif

namespace {
void copy_out(const std::string &s, char *out, size_t outlen) {
    if (!out || !outlen) return;
    size_t n = s.size() < outlen - 1 ? s.size() : outlen - 1;
    memcpy(out, s.data(), n);
    out[n] = 0;
}
}  // namespace

extern "C" {

// Newline-separated names of the kernels in this module. Returns the full length needed.
FASIM_EXPORT size_t fasim_kernel_names(char *out, size_t outlen) {
    std::string s;
    for (const std::string &n : fasim::kernel_names()) s += n + "\n";
    copy_out(s, out, outlen);
    return s.size() + 1;
}

// Runs one launch. Faults are written to out as lines "kind\tmessage". Returns the number of faults, or -1 if the
// kernel does not exist (message in out). buf_src[i], when not null, holds buffer i's initial contents (buf_data[i]
// then only receives the results). bounds_run, hazards, schedule_mode: see LaunchConfig. Never lets a C++ exception
// out (out of memory becomes an "error" fault).
// `cancel` (fa_cancel.h, may be null) stops it early: the only fault is then "cancelled" and the buffers are
// untouched; its poll runs on the calling thread.
// Function constants (sim_api.h, FunctionConstantValue): nconst values, each an index (-1: by name only), a name
// (null or empty: by index only), an MTLDataType code and the value's bytes. [[threadgroup(n)]] lengths: ntgmem
// (index, bytes) pairs.
FASIM_EXPORT int fasim_launch(const char *kernel, const unsigned *grid, const unsigned *threads, int nbuf,
                              const int *buf_index, void *const *buf_data, const void *const *buf_src,
                              const size_t *buf_bytes, const int *buf_writable, int nbytes, const int *bytes_index,
                              const void *const *bytes_data, const size_t *bytes_len, int schedules,
                              unsigned long long seed, int host_threads, int bounds_run, int hazards,
                              int schedule_mode, char *out, size_t outlen, const fa_cancel *cancel, int nconst,
                              const int *const_index, const char *const *const_name, const unsigned *const_type,
                              const void *const *const_value, const size_t *const_bytes, int ntgmem,
                              const int *tgmem_index, const size_t *tgmem_bytes) {
    try {
    const fasim::KernelInfo *k = fasim::find_kernel(kernel);
    if (!k) {
        std::string names;
        for (const std::string &n : fasim::kernel_names()) names += (names.empty() ? "" : ", ") + n;
        copy_out(std::string("no kernel named '") + kernel + "' in this file (kernels: " + names + ")", out, outlen);
        return -1;
    }
    fasim::LaunchConfig cfg;
    for (int d = 0; d < 3; d++) {
        cfg.grid[d] = grid[d];
        cfg.threads[d] = threads[d];
    }
    cfg.schedules = schedules;
    cfg.seed = seed;
    cfg.host_threads = host_threads;
    cfg.bounds_run = bounds_run != 0;
    cfg.hazards = hazards != 0;
    cfg.schedule_mode = schedule_mode;
    cfg.cancel = cancel;
    for (int i = 0; i < nconst; i++) {
        fasim::FunctionConstantValue v;
        v.index = const_index[i];
        if (const_name && const_name[i]) v.name = const_name[i];
        v.mtl_type = const_type[i];
        const unsigned char *p = static_cast<const unsigned char *>(const_value[i]);
        v.value.assign(p, p + const_bytes[i]);
        cfg.constants.push_back(std::move(v));
    }
    for (int i = 0; i < ntgmem; i++) cfg.threadgroup_memory.push_back({tgmem_index[i], tgmem_bytes[i]});
    fa_cancel_rt::PollScope poller(cancel);
    std::vector<fasim::BufferArg> bufs;
    for (int i = 0; i < nbuf; i++)
        bufs.push_back({buf_index[i], buf_data[i], buf_bytes[i], buf_writable[i] != 0, buf_src ? buf_src[i] : nullptr});
    std::vector<fasim::BytesArg> bytes;
    for (int i = 0; i < nbytes; i++) bytes.push_back({bytes_index[i], bytes_data[i], bytes_len[i]});
    std::vector<fasim::Fault> faults = fasim::launch(k, cfg, bufs, bytes);
    std::string s;
    for (const fasim::Fault &f : faults) {
        std::string m = f.message;
        for (char &c : m)
            if (c == '\n' || c == '\t') c = ' ';
        s += f.kind + "\t" + m + "\n";
    }
    copy_out(s, out, outlen);
    return (int)faults.size();
    } catch (const std::bad_alloc &) {
        // the results may be half written: give the buffers back as they came in
        for (int i = 0; buf_src && i < nbuf; i++)
            if (buf_src[i] && buf_data[i] && buf_writable[i]) memcpy(buf_data[i], buf_src[i], buf_bytes[i]);
        copy_out(std::string("error\tlaunch of '") + kernel + "': out of memory (the simulator keeps one guarded "
                 "copy of the buffers, and the results of writable ones)\n", out, outlen);
        return 1;
    } catch (const std::exception &e) {
        copy_out(std::string("error\tlaunch of '") + kernel + "': " + e.what() + "\n", out, outlen);
        return 1;
    }
}

}  // extern "C"
