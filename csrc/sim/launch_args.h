// launch_args.h - a launch's arguments in the C form of fasim_launch (c_api.cpp), and its faults read back: what the
// two callers that reach a simulator module through that C entry point share (hazard_module.cpp, which runs the
// package's kernels in the instrumented module, and csrc/sim_profile_hook.cpp, which hands them to Python's profiler).
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "sim_api.h"

namespace fasim {

// Parallel arrays, one entry per binding, buffer of setBytes data and function constant; they point into the
// caller's structs, which must outlive them.
struct FlatLaunchArgs {
    std::vector<int> buf_index, buf_writable, bytes_index, const_index;
    std::vector<void *> buf_data;
    std::vector<const void *> buf_src, bytes_data, const_value;
    std::vector<size_t> buf_bytes, bytes_len, const_bytes;
    std::vector<const char *> const_name;
    std::vector<unsigned> const_type;

    FlatLaunchArgs(const LaunchConfig &cfg, const std::vector<BufferArg> &buffers, const std::vector<BytesArg> &bytes) {
        for (const BufferArg &b : buffers) {
            buf_index.push_back(b.index);
            buf_data.push_back(b.data);
            buf_src.push_back(b.src);
            buf_bytes.push_back(b.bytes);
            buf_writable.push_back(b.writable ? 1 : 0);
        }
        for (const BytesArg &b : bytes) {
            bytes_index.push_back(b.index);
            bytes_data.push_back(b.data);
            bytes_len.push_back(b.bytes);
        }
        for (const FunctionConstantValue &c : cfg.constants) {
            const_index.push_back(c.index);
            const_name.push_back(c.name.c_str());
            const_type.push_back(c.mtl_type);
            const_value.push_back(c.value.data());
            const_bytes.push_back(c.value.size());
        }
    }
};

// The faults fasim_launch writes: lines "kind\tmessage" (empty lines skipped; a line without a tab is all kind).
inline std::vector<Fault> parse_fault_lines(const char *text) {
    std::vector<Fault> faults;
    for (const char *p = text; *p;) {
        const char *nl = std::strchr(p, '\n');
        if (!nl) nl = p + std::strlen(p);
        if (nl > p) {
            const char *tab = static_cast<const char *>(std::memchr(p, '\t', size_t(nl - p)));
            faults.push_back(tab ? Fault{std::string(p, tab), std::string(tab + 1, nl)} : Fault{std::string(p, nl), ""});
        }
        p = *nl ? nl + 1 : nl;
    }
    return faults;
}

}  // namespace fasim
