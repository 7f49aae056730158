// Runs the real shim (objc/fa_metal_context.mm, objc/fa_metal_execute.mm, objc/fa_metal_binding.cpp) against the
// mock Metal of tests/objc/objc_stubs/mock, one scenario per process (the shim's Metal context is process-wide).
// Built and run by tests/objc/test_objc_execute.py. Prints "FAIL ..." lines and "passed N checks"; exits non-zero on
// failure. The plan comes from a stand-in builder below (test kernels, not the project's) and is handed to
// fa_metal_execute the way the C ABI hands it over, so this checks the shim's own logic: device checks, library
// choice, buffers, offsets, encoding, errors and copy-back.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fa_backends.h"
#include "fa_host_memory.h"
#include "fa_metal_kernel_source.h"
#include "fa_metal_shim.h"
#include "mock/metal_mock.h"
#include "objc_driver_checks.h"

#define CHECK(cond) fa_check((cond), __FILE__, __LINE__, #cond)
#define CHECK_CONTAINS(text, part)                                                             \
    fa_check(std::strstr((text), (part)) != nullptr, __FILE__, __LINE__, "CHECK_CONTAINS",        \
             std::string("\"") + (part) + "\" not in \"" + (text) + "\"")

// ---- embedded kernel source as the build would generate it (the second file is editable per scenario) ----
static char g_second_file[256] = "kernel void mock_stage2(device float *x) {}\nkernel void mock_lse(device float *l) {}\n";
const fa_embedded_kernel_file fa_embedded_kernel_files[] = {
    // bfloat, as the project's kernel files use it: compiles only with the language version pinned to MSL 3.1.
    {"stage1.metal", "#include <metal_stdlib>\ninline bfloat to_bf(float x) { return bfloat(x); }\n"
                     "kernel void mock_stage1(device float *x) {}\n"},
    {"stage2.metal", g_second_file},
};
const int fa_embedded_kernel_file_count = 2;
const char *const fa_metallib_build_path = "";

// ---- the stand-in plan: out = (q + 1) * scale through scratch0, then lse[i] = i + 0.5 ----
static const char *g_stage2_kernel = "mock_stage2";
static uint32_t g_threads = 128;
// A Metal function constant on stage 2 (scenario function_constants): none while g_stage2_constant_type < 0.
static int32_t g_stage2_constant_type = -1, g_stage2_constant = 0;

struct ScaleConstants {
    uint32_t n;
    float scale;
};

static void bind(fa_launch &l, int index, int buffer, int64_t offset) {
    l.bindings[l.nbindings++] = fa_binding{index, buffer, offset};
}

static void stand_in_plan(const fa_params *p, fa_plan *out) {
    std::memset(out, 0, sizeof *out);
    out->kind = FA_PLAN_FORWARD;
    if (p->seqlen_q == 0) return;  // empty plan, as the real one for empty shapes
    const uint32_t n = static_cast<uint32_t>(p->seqlen_q) * static_cast<uint32_t>(p->headdim);
    const uint32_t rows = static_cast<uint32_t>(p->seqlen_q);
    ScaleConstants c{n, static_cast<float>(p->softmax_scale)};
    out->buffer_bytes[FA_BUF_Q] = int64_t(n) * 4;
    out->buffer_bytes[FA_BUF_OUT] = int64_t(n) * 4;
    out->buffer_bytes[FA_BUF_LSE] = int64_t(rows) * 4;
    out->scratch_bytes[0] = int64_t(n) * 4;
    const char *names[3] = {"mock_stage1", g_stage2_kernel, "mock_lse"};
    for (int i = 0; i < 3; ++i) {
        fa_launch &l = out->launches[i];
        std::snprintf(l.kernel, sizeof l.kernel, "%s", names[i]);
        l.grid[0] = (n + g_threads - 1) / g_threads;
        l.grid[1] = l.grid[2] = 1;
        l.threads[0] = g_threads;
        l.threads[1] = l.threads[2] = 1;
        l.constants_index = -1;
    }
    if (g_stage2_constant_type >= 0) {
        fa_spec_constant &mode = out->launches[1].desc.specs[out->launches[1].desc.nspecs++];
        std::snprintf(mode.name, sizeof mode.name, "MODE");
        mode.index = 3;
        mode.type = g_stage2_constant_type;
        mode.value.i = g_stage2_constant;
    }
    bind(out->launches[0], 0, FA_BUF_Q, 0);
    bind(out->launches[0], 1, FA_BUF_SCRATCH0, 0);
    bind(out->launches[1], 0, FA_BUF_SCRATCH0, 0);
    bind(out->launches[1], 1, FA_BUF_OUT, 0);
    out->launches[1].constants_index = 2;
    out->launches[1].constants_size = sizeof c;
    std::memcpy(out->launches[1].constants, &c, sizeof c);
    bind(out->launches[2], 0, FA_BUF_LSE, 0);
    out->launches[2].constants_index = 1;
    out->launches[2].constants_size = sizeof c;
    std::memcpy(out->launches[2].constants, &c, sizeof c);
    out->nlaunches = 3;
}

// A forward call as the C ABI makes it: the plan built once, then handed to the executor.
static int execute(const fa_params *p, char *msg, size_t msglen) {
    static fa_plan plan;  // large: not on the stack
    stand_in_plan(p, &plan);
    return fa_metal_execute(&plan, p, nullptr, msg, msglen);
}

// Test kernels: every access is bounds-checked against the bound MTLBuffer.
static void register_kernels() {
    mock::register_kernel("mock_stage1", [](const std::vector<mock::Arg> &a, const uint32_t g[3], const uint32_t t[3]) {
        const size_t n = size_t(g[0]) * t[0];
        for (size_t i = 0; i < n && (i + 1) * 4 <= a[0].bytes; ++i) {
            if ((i + 1) * 4 > a[1].bytes) return std::string("stage1 writes past scratch");
            reinterpret_cast<float *>(a[1].data)[i] = reinterpret_cast<const float *>(a[0].data)[i] + 1.0f;
        }
        return std::string();
    });
    mock::register_kernel("mock_stage2", [](const std::vector<mock::Arg> &a, const uint32_t g[3], const uint32_t t[3]) {
        ScaleConstants c;
        std::memcpy(&c, a[2].data, sizeof c);
        if (size_t(g[0]) * t[0] < c.n) return std::string("grid too small");
        if (size_t(c.n) * 4 > a[0].bytes || size_t(c.n) * 4 > a[1].bytes) return std::string("stage2 out of bounds");
        for (uint32_t i = 0; i < c.n; ++i)
            reinterpret_cast<float *>(a[1].data)[i] = reinterpret_cast<const float *>(a[0].data)[i] * c.scale;
        return std::string();
    });
    mock::register_kernel("mock_lse", [](const std::vector<mock::Arg> &a, const uint32_t *, const uint32_t *) {
        const size_t rows = a[0].bytes / 4;
        for (size_t i = 0; i < rows; ++i) reinterpret_cast<float *>(a[0].data)[i] = float(i) + 0.5f;
        return std::string();
    });
}

// ---- host tensors for a call ----
struct Call {
    fa_params p;
    int rows = 37, dim = 128;  // n = 4736 floats = 18944 bytes: above the shim's 16 KiB wrap threshold
    size_t n() const { return size_t(rows) * dim; }
    float *q, *out, *lse;
    void *q_block, *out_block;
    bool owned;
    // owned: q and out come from the package's page allocator (csrc/fa_host_memory.h), the only host memory the shim
    // wraps; otherwise from aligned_alloc (malloc's family, like a caller's NumPy array), which must be copied.
    explicit Call(bool owned_memory = true) : owned(owned_memory) {
        std::memset(&p, 0, sizeof p);
        const size_t page = size_t(getpagesize());
        q_block = owned ? fa_host::allocate(8 * page) : std::aligned_alloc(page, 8 * page);
        out_block = owned ? fa_host::allocate(8 * page) : std::aligned_alloc(page, 8 * page);
        q = static_cast<float *>(q_block);                                   // page-aligned
        out = reinterpret_cast<float *>(static_cast<char *>(out_block) + 64);  // inside its first page
        lse = new float[rows];
        for (size_t i = 0; i < n(); ++i) q[i] = 0.25f * float(i % 97) - 3.0f, out[i] = -777.0f;
        for (int i = 0; i < rows; ++i) lse[i] = -777.0f;
        p.seqlen_q = rows;
        p.headdim = dim;
        p.softmax_scale = 0.5f;
        p.q.data = q;
        p.out.data = out;
        p.lse = lse;
    }
    ~Call() {
        if (owned) {
            fa_host::release(q_block);
            fa_host::release(out_block);
        } else {
            std::free(q_block);
            std::free(out_block);
        }
        delete[] lse;
    }
    bool results_ok(const float *o) const {
        for (size_t i = 0; i < n(); ++i)
            if (o[i] != (q[i] + 1.0f) * 0.5f) return std::printf("  out[%zu] = %g\n", i, o[i]), false;
        return true;
    }
    bool lse_ok() const {
        for (int i = 0; i < rows; ++i)
            if (lse[i] != float(i) + 0.5f) return false;
        return true;
    }
    bool out_untouched() const {
        for (size_t i = 0; i < n(); ++i)
            if (out[i] != -777.0f) return false;
        return true;
    }
};

static int count_prefix(const std::string &prefix) {
    int c = 0;
    for (const std::string &l : mock::journal()) c += l.compare(0, prefix.size(), prefix) == 0;
    return c;
}

static void dump_journal() {
    for (const std::string &l : mock::journal()) std::printf("  | %s\n", l.c_str());
}

int main(int argc, char **argv) {
    if (argc < 2) return std::fprintf(stderr, "usage: driver SCENARIO [metallib]\n"), 2;
    const std::string scenario = argv[1];
    register_kernels();
    char msg[2048] = "";

    if (scenario == "nodevice") {
        mock::knobs().device_present = false;
        CHECK(fa_metal_available(msg, sizeof msg) == 0);
        CHECK_CONTAINS(msg, "no Metal device");
        Call c;
        CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_UNAVAILABLE);
        static fa_plan plan;
        stand_in_plan(&c.p, &plan);
        CHECK(fa_metal_launch_fits(&plan.launches[0]) == 1);  // cannot tell without a device: the plan stays as it is
        CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
        CHECK_CONTAINS(msg, "unavailable: no Metal device");
        char names[64];
        CHECK(fa_metal_compile_source("kernel void k() {}", names, sizeof names, msg, sizeof msg) == FA_ERR_UNAVAILABLE);
        char path[64];
        CHECK(fa_metal_library_functions(path, sizeof path, names, sizeof names, msg, sizeof msg) ==
              FA_ERR_UNAVAILABLE);
        CHECK_CONTAINS(msg, "no Metal device");
        CHECK(c.out_untouched());
    } else if (scenario == "paravirtual") {
        mock::knobs().families_ok = false;
        mock::knobs().device_name = "Apple Paravirtual device";
        CHECK(fa_metal_available(msg, sizeof msg) == 0);
        CHECK_CONTAINS(msg, "'Apple Paravirtual device' is not supported");
        CHECK_CONTAINS(msg, "MTLGPUFamilyApple7");
        CHECK(mock::journal_has("supportsFamily 1007"));
        Call c;
        CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_UNAVAILABLE);
        CHECK(!mock::journal_has("commit") && c.out_untouched());
        // Compiling needs a device, not a supported one (what CI's paravirtual runners can still check).
        char names[256];
        CHECK(fa_metal_compile_source("kernel void b() {}\nkernel void a() {}", names, sizeof names, msg, sizeof msg) ==
              FA_OK);
        CHECK(std::strcmp(names, "a\nb") == 0);
        CHECK(fa_metal_compile_source("#error nope", names, sizeof names, msg, sizeof msg) == FA_ERR_VALUE);
        CHECK_CONTAINS(msg, "Metal compile error: program_source:3:2: error: nope");
        CHECK(fa_metal_compile_source("kernel void a() {}", names, 1, msg, sizeof msg) == FA_ERR_VALUE);
        // ... with the language version the shim's own kernels use (the offline build's -std=metal3.1)
        for (const std::string &l : mock::journal())
            if (l.rfind("library source", 0) == 0) CHECK(l.size() > 8 && l.substr(l.size() - 8) == " msl 3.1");
        // Loading the shipped metallib needs a device, not a supported one (the wheel check on CI runners).
        if (argc >= 3) {
            setenv("FLASH_ATTN_CY_METALLIB", argv[2], 1);
            char path[512];
            CHECK(fa_metal_library_functions(path, sizeof path, names, sizeof names, msg, sizeof msg) == FA_OK);
            CHECK(std::strcmp(path, argv[2]) == 0);
            CHECK(std::strcmp(names, "mock_lse\nmock_stage1\nmock_stage2") == 0);
            CHECK(fa_metal_library_functions(path, sizeof path, names, 4, msg, sizeof msg) == FA_ERR_VALUE);
            setenv("FLASH_ATTN_CY_METALLIB", "/nonexistent/x.metallib", 1);
            CHECK(fa_metal_library_functions(path, sizeof path, names, sizeof names, msg, sizeof msg) ==
                  FA_ERR_UNAVAILABLE);
            CHECK_CONTAINS(msg, "is not a readable file");
            unsetenv("FLASH_ATTN_CY_METALLIB");
            CHECK(fa_metal_library_functions(path, sizeof path, names, sizeof names, msg, sizeof msg) ==
                  FA_ERR_UNAVAILABLE);  // this driver embeds kernel source
            CHECK_CONTAINS(msg, "embeds the kernel source");
        }
    } else if (scenario == "apple10") {  // M5-class GPUs are MTLGPUFamilyApple10 (1010), not Apple9
        mock::knobs().apple_family = 1010;
        mock::knobs().device_name = "Mock Apple M5";
        CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
        CHECK_CONTAINS(msg, "Mock Apple M5 (MTLGPUFamilyApple10, Metal3)");
    } else if (scenario == "apple7") {
        mock::knobs().apple_family = 1007;
        CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
        CHECK_CONTAINS(msg, "Mock Apple M1 (MTLGPUFamilyApple7, Metal3)");
    } else if (scenario == "metallib" || scenario == "nocopy_refused") {
        if (argc < 3) return 2;
        setenv("FLASH_ATTN_CY_METALLIB", argv[2], 1);
        mock::knobs().refuse_nocopy = scenario == "nocopy_refused";
        CHECK(fa_metal_available(msg, sizeof msg) == 1 && msg[0] == '\0');
        CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
        CHECK_CONTAINS(msg, "Mock Apple M1 (MTLGPUFamilyApple9, Metal3)");
        CHECK_CONTAINS(msg, "(not yet loaded)");
        for (int round = 0; round < 2; ++round) {
            Call c;
            const int rc = execute(&c.p, msg, sizeof msg);
            CHECK(rc == FA_OK);
            if (rc != FA_OK) std::printf("  %s\n", msg);
            CHECK(c.results_ok(c.out));
            CHECK(c.lse_ok());
        }
        CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
        CHECK_CONTAINS(msg, (std::string("prebuilt metallib ") + argv[2]).c_str());
        CHECK(count_prefix("library url") == 1);         // loaded once per process
        CHECK(count_prefix("pipeline mock_stage2") == 1);  // pipelines cached across calls
        CHECK(count_prefix("commit") == 2 && count_prefix("wait") == 2);
        CHECK(count_prefix("encoder serial") == 2);
        CHECK(count_prefix("barrier") == 4);               // between the 3 launches of each call
        CHECK(count_prefix("length 18944 private") == 2);   // scratch0, GPU-only
        CHECK(count_prefix("setbytes 2 8") == 2 && count_prefix("setbytes 1 8") == 2);
        {  // every buffer index a kernel may declare (0..15) is bound before the first dispatch: Metal's validation
           // layer aborts on an unbound argument, so unused ones get a 16-byte placeholder (one per call)
            bool set[16] = {};
            for (const std::string &l : mock::journal()) {
                if (l.rfind("dispatch", 0) == 0) break;
                unsigned idx = 99;
                const char *s = l.c_str();
                if (std::sscanf(s, "setbuffer %u", &idx) == 1 || std::sscanf(s, "setbytes %u", &idx) == 1)
                    if (idx < 16) set[idx] = true;
            }
            for (int i = 0; i < 16; ++i) CHECK(set[i]);
            CHECK(count_prefix("length 16 shared") == 2);
        }
        const size_t page = size_t(getpagesize());
        // q (18944 bytes, page-aligned) and out (18944 bytes at +64) are wrapped, rounded out to whole pages; lse
        // (148 bytes) is copied in and back.
        const std::string q_pages = " " + std::to_string((18944 + page - 1) / page * page) + " shared";
        const std::string out_pages = " " + std::to_string((64 + 18944 + page - 1) / page * page) + " shared";
        CHECK(count_prefix("bytes 148 shared") == 2);
        if (scenario == "metallib") {
            CHECK(count_prefix("nocopy") == 4 && !mock::journal_has("bytes 18944"));
            bool saw_q = false, saw_out = false;
            for (const std::string &l : mock::journal()) {
                saw_q |= l.find(q_pages) != std::string::npos && l.rfind("nocopy", 0) == 0;
                saw_out |= l.find(out_pages) != std::string::npos && l.rfind("nocopy", 0) == 0;
            }
            CHECK(saw_q && saw_out);
            CHECK(mock::journal_has("setbuffer 1 64"));  // out bound at its offset inside the wrapped page
            // The same call on memory from aligned_alloc (a caller's array): never wrapped (Apple forbids wrapping
            // malloc'd memory), copied in and out, and the results still come back.
            Call m(false);
            CHECK(execute(&m.p, msg, sizeof msg) == FA_OK);
            CHECK(m.results_ok(m.out) && m.lse_ok());
            CHECK(count_prefix("nocopy") == 4 && count_prefix("bytes 18944 shared") == 2);
        } else {
            // Metal refused to wrap: both fall back to copies, and out still comes back.
            CHECK(count_prefix("bytes 18944 shared") == 4);
            CHECK(!mock::journal_has("setbuffer 1 64"));
        }
    } else if (scenario == "embedded" || scenario == "embedded_error") {
        setenv("FLASH_ATTN_CY_METALLIB", "/nonexistent/fa_kernels.metallib", 1);
        CHECK(fa_metal_available(msg, sizeof msg) == 0);  // a library that is not there: backend unusable
        CHECK_CONTAINS(msg, "FLASH_ATTN_CY_METALLIB=/nonexistent/fa_kernels.metallib is not a readable file");
        unsetenv("FLASH_ATTN_CY_METALLIB");
        CHECK(fa_metal_available(msg, sizeof msg) == 1);
        if (scenario == "embedded_error") std::snprintf(g_second_file, sizeof g_second_file, "#error missing tile\n");
        CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
        CHECK_CONTAINS(msg, "embedded kernel source (2 files), compiled at first use (not yet compiled)");
        Call c;
        const int rc = execute(&c.p, msg, sizeof msg);
        if (scenario == "embedded") {
            CHECK(rc == FA_OK && c.results_ok(c.out) && c.lse_ok());
            CHECK(count_prefix("library source") == 2);
            for (const std::string &l : mock::journal())  // every file compiled as MSL 3.1 (the offline build's -std)
                if (l.rfind("library source", 0) == 0) CHECK(l.size() > 8 && l.substr(l.size() - 8) == " msl 3.1");
            CHECK(fa_metal_describe(msg, sizeof msg) == FA_OK);
            CHECK_CONTAINS(msg, "embedded kernel source (2 files) compiled at first use");
        } else {
            CHECK(rc == FA_ERR_RUNTIME);
            CHECK_CONTAINS(msg, "compiling the embedded kernel source stage2.metal failed");
            CHECK_CONTAINS(msg, "missing tile");
            CHECK(c.out_untouched() && !mock::journal_has("commit"));
            Call again;  // the failure is remembered, not retried
            CHECK(execute(&again.p, msg, sizeof msg) == FA_ERR_RUNTIME);
            CHECK(count_prefix("library source") == 2);
            CHECK(fa_metal_available(msg, sizeof msg) == 0);  // and from now on the backend reports itself unusable
            CHECK_CONTAINS(msg, "stage2.metal failed");
        }
    } else if (scenario == "errors") {
        if (argc < 3) return 2;
        setenv("FLASH_ATTN_CY_METALLIB", argv[2], 1);
        {  // a kernel missing from the library
            g_stage2_kernel = "mock_missing";
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_RUNTIME);
            CHECK_CONTAINS(msg, "kernel mock_missing is not in the kernel library (prebuilt metallib");
            CHECK(!mock::journal_has("commit") && c.out_untouched());
            g_stage2_kernel = "mock_stage2";
        }
        {  // threadgroup larger than the pipeline allows: refused before anything runs
            mock::knobs().max_total_threads = 64;
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_RUNTIME);
            CHECK_CONTAINS(msg, "kernel mock_stage1 wants threadgroups of (128, 1, 1) = 128 threads");
            CHECK_CONTAINS(msg, "at most 64 threads");
            CHECK(!mock::journal_has("commit") && c.out_untouched());
            mock::knobs().max_total_threads = 1024;
        }
        {  // a pipeline whose SIMD groups are not 32 lanes wide: the kernels would be wrong, so it is refused
            mock::knobs().thread_execution_width = 64;
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_RUNTIME);
            CHECK_CONTAINS(msg, "kernel mock_stage1 is written for 32-lane SIMD groups; this pipeline's "
                                "threadExecutionWidth is 64");
            CHECK(!mock::journal_has("commit") && c.out_untouched());
            mock::knobs().thread_execution_width = 32;
        }
        {  // the command buffer fails on the GPU: error text and status reach the caller, no copy-back
            mock::knobs().fail_command_buffer = true;
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_RUNTIME);
            CHECK_CONTAINS(msg, "the command buffer failed (status 5): Internal Error (0000000e:Internal Error)");
            CHECK(c.lse[0] == -777.0f);
            mock::knobs().fail_command_buffer = false;
        }
        {  // a buffer larger than the device allows
            mock::knobs().max_buffer_length = 4096;
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_RUNTIME);
            CHECK_CONTAINS(msg, "could not allocate a 18944-byte buffer for");
            mock::knobs().max_buffer_length = 1ul << 30;
        }
        {  // an empty plan runs nothing: no buffers, no command buffer
            Call c;
            const size_t before = mock::journal().size();
            c.p.seqlen_q = 0;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_OK);
            CHECK(mock::journal().size() == before);
        }
        {  // and the next call works again
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_OK);
            CHECK(c.results_ok(c.out));
        }
    } else if (scenario == "device_buffers") {
        if (argc < 3) return 2;
        setenv("FLASH_ATTN_CY_METALLIB", argv[2], 1);
        Call c;
        void *q_contents = nullptr, *out_contents = nullptr;
        const size_t q_off = 256, out_off = 1024;
        void *q_buf = mock::new_device_buffer(q_off + c.n() * 4, &q_contents);
        void *out_buf = mock::new_device_buffer(out_off + c.n() * 4 + 100, &out_contents);
        std::memcpy(static_cast<char *>(q_contents) + q_off, c.q, c.n() * 4);
        fa_device_buffers dev;
        std::memset(&dev, 0, sizeof dev);
        dev.handle[FA_BUF_Q] = q_buf;
        dev.byte_offset[FA_BUF_Q] = q_off;
        dev.byte_length[FA_BUF_Q] = int64_t(c.n()) * 4;
        dev.handle[FA_BUF_OUT] = out_buf;
        dev.byte_offset[FA_BUF_OUT] = out_off;
        dev.byte_length[FA_BUF_OUT] = int64_t(c.n()) * 4 + 100;
        c.p.device_buffers = &dev;
        c.p.out.data = nullptr;  // never dereferenced for device-bound tensors
        const int rc = execute(&c.p, msg, sizeof msg);
        CHECK(rc == FA_OK);
        if (rc != FA_OK) std::printf("  %s\n", msg);
        CHECK(c.results_ok(reinterpret_cast<const float *>(static_cast<char *>(out_contents) + out_off)));
        CHECK(c.lse_ok());  // lse still from host memory
        CHECK(mock::journal_has("setbuffer 0 256") && mock::journal_has("setbuffer 1 1024"));
        CHECK(!mock::journal_has("nocopy") || count_prefix("nocopy") == 0);
        // The caller claims more bytes than the MTLBuffer has: caught against the buffer's real length.
        dev.byte_offset[FA_BUF_Q] = 512;
        CHECK(execute(&c.p, msg, sizeof msg) == FA_ERR_VALUE);
        CHECK_CONTAINS(msg, "the MTLBuffer given for q holds 19200 bytes; the call needs 18944 from offset 512");
    } else if (scenario == "function_constants") {
        if (argc < 3) return 2;
        setenv("FLASH_ATTN_CY_METALLIB", argv[2], 1);
        g_stage2_constant_type = FA_SPEC_INT;
        for (int32_t value : {7, 7, -9}) {  // one pipeline per set of constant values, cached like the others
            g_stage2_constant = value;
            Call c;
            CHECK(execute(&c.p, msg, sizeof msg) == FA_OK);
            CHECK(c.results_ok(c.out) && c.lse_ok());
        }
        CHECK(count_prefix("specialize mock_stage2 3:29=7") == 1 && count_prefix("specialize mock_stage2 3:29=-9") == 1);
        CHECK(count_prefix("pipeline mock_stage2") == 2 && count_prefix("pipeline mock_stage1") == 1);
        CHECK(count_prefix("specialize mock_stage1") == 0);  // no constants: the plain function
        g_stage2_constant_type = FA_SPEC_BOOL;
        g_stage2_constant = 1;
        Call b;
        CHECK(execute(&b.p, msg, sizeof msg) == FA_OK);
        CHECK(mock::journal_has("specialize mock_stage2 3:53=1"));
        g_stage2_constant_type = FA_SPEC_DTYPE;  // an element type is a template parameter, never a function constant
        Call d;
        CHECK(execute(&d.p, msg, sizeof msg) == FA_ERR_RUNTIME);
        CHECK_CONTAINS(msg, "function constant MODE at index 3");
        CHECK(d.out_untouched());
    } else if (scenario == "launch_fits") {
        // The plan's question about the device while the C ABI builds a plan (fa_plan_build_for_device): does a
        // launch's threadgroup fit its kernel's pipeline? Asked without encoding anything.
        if (argc < 3) return 2;
        setenv("FLASH_ATTN_CY_METALLIB", argv[2], 1);
        mock::knobs().limited_prefix = "mock_stage2";  // a register-heavy pipeline: Metal allows it 64 threads
        mock::knobs().limited_max_total_threads = 64;
        static fa_plan plan;
        Call c;
        stand_in_plan(&c.p, &plan);  // 128-thread threadgroups
        CHECK(fa_metal_launch_fits(&plan.launches[0]) == 1);
        CHECK(fa_metal_launch_fits(&plan.launches[1]) == 0);
        g_threads = 64;
        stand_in_plan(&c.p, &plan);
        CHECK(fa_metal_launch_fits(&plan.launches[1]) == 1);
        std::snprintf(plan.launches[1].kernel, sizeof plan.launches[1].kernel, "mock_missing");
        CHECK(fa_metal_launch_fits(&plan.launches[1]) == 1);  // no pipeline: not decided here, encoding reports it
        CHECK(count_prefix("pipeline mock_stage2") == 1);      // cached: the call's encoding reuses it
        CHECK(!mock::journal_has("commit") && !mock::journal_has("encoder"));
    } else {
        std::fprintf(stderr, "unknown scenario %s\n", scenario.c_str());
        return 2;
    }
    if (g_failures) dump_journal();
    return fa_checks_report() ? 1 : 0;
}
