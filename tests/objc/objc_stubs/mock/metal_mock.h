// metal_mock.h - knobs and journal of the mock Metal used to EXECUTE the shim on Linux
// (tests/objc/test_objc_execute.py).
//
// The mock implements the Foundation/Metal declarations of tests/objc/objc_stubs on the GNU Objective-C runtime: a
// device whose buffers are host memory, libraries whose functions are listed in a text "metallib" or found in the
// source, and command buffers that run a few C++ test kernels (registered by name) when committed. It checks that
// every buffer access stays inside its MTLBuffer and records each Metal call, so tests can see exactly what the shim
// asked of Metal. It is NOT Metal: it proves the shim's own logic runs as intended, not that the GPU agrees.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mock {

struct Knobs {
    bool device_present = true;
    bool families_ok = true;         // supportsFamily: Apple7 and Metal3
    long apple_family = 1009;        // newest MTLGPUFamilyAppleN (1000 + N) reported when families_ok
    std::string device_name = "Mock Apple M1";
    bool refuse_nocopy = false;      // newBufferWithBytesNoCopy returns nil
    bool fail_command_buffer = false;// status Error after commit
    unsigned long max_total_threads = 1024;
    // Pipelines of kernels whose name starts with limited_prefix report limited_max_total_threads instead (a
    // register-heavy kernel whose thread limit Metal lowered).
    std::string limited_prefix;
    unsigned long limited_max_total_threads = 0;
    unsigned long thread_execution_width = 32;
    unsigned long max_buffer_length = 1ul << 30;
};
Knobs &knobs();

// One line per Metal call of interest ("nocopy <ptr> <len>", "bytes <len>", "length <len> private",
// "pipeline <name>", "setbuffer <index> <offset>", "setbytes <index> <len>", "dispatch <name> gx,gy,gz/tx,ty,tz",
// "barrier", "commit", ...).
std::vector<std::string> &journal();
bool journal_has(const std::string &prefix);

// Each dispatch as the shim encoded it: the pipeline's kernel, grid and threadgroup, and the setBuffer / setBytes
// calls made since the previous dispatch (setBytes with the address the shim passed: where its constants came from).
struct DispatchRecord {
    std::string kernel;
    uint32_t grid[3], threads[3];
    std::vector<int> buffer_indices;
    std::vector<const void *> bytes_sources;
    std::vector<size_t> bytes_lengths;
};
std::vector<DispatchRecord> &dispatch_log();

// A bound argument as a kernel sees it.
struct Arg {
    char *data = nullptr;  // contents + offset (nullptr when unbound)
    size_t bytes = 0;      // bytes addressable from data
    bool is_bytes = false; // setBytes constants rather than a buffer
};
// A test kernel: args by [[buffer(i)]] index, executed once per dispatch; returns "" or a fault description.
using Kernel = std::function<std::string(const std::vector<Arg> &args, const uint32_t grid[3], const uint32_t threads[3])>;
void register_kernel(const std::string &name, Kernel k);
// Runs any kernel not registered above (e.g. the project's kernels in the Metal simulator); "" or a fault.
using FallbackRunner = std::function<std::string(const std::string &name, const std::vector<Arg> &args,
                                                 const uint32_t grid[3], const uint32_t threads[3])>;
void set_fallback(FallbackRunner runner);

// A buffer created by the mock device for tests that pass device buffers (returns the id<MTLBuffer> as void*).
void *new_device_buffer(size_t bytes, void **contents);

}  // namespace mock
