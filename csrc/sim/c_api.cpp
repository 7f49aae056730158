// c_api.cpp - a C entry point over sim_api.h for modules compiled at run time by flash_attn_cy.sim (loaded with
// ctypes). Only built into those modules, not into the package's core library.
#include <string.h>

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
// kernel does not exist (message in out). `cancel` (fa_cancel.h, may be null) stops it early: the only fault is then
// "cancelled" and the buffers are untouched; its poll runs on the calling thread.
FASIM_EXPORT int fasim_launch(const char *kernel, const unsigned *grid, const unsigned *threads, int nbuf,
                              const int *buf_index, void *const *buf_data, const size_t *buf_bytes,
                              const int *buf_writable, int nbytes, const int *bytes_index,
                              const void *const *bytes_data, const size_t *bytes_len, int schedules,
                              unsigned long long seed, int host_threads, char *out, size_t outlen,
                              const fa_cancel *cancel) {
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
    cfg.cancel = cancel;
    fa_cancel_rt::PollScope poller(cancel);
    std::vector<fasim::BufferArg> bufs;
    for (int i = 0; i < nbuf; i++) bufs.push_back({buf_index[i], buf_data[i], buf_bytes[i], buf_writable[i] != 0});
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
}

}  // extern "C"
