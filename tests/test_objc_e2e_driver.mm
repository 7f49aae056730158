// End to end without a Mac: fa_forward(FA_BACKEND_METAL) through the dispatcher (csrc/fa_abi.cpp), the REAL
// dispatch plan (csrc/plan), the real shim (objc/*.mm, built without ARC on the GNU runtime), the mock Metal of
// tests/objc_stubs/mock, and the project's real Metal kernels executed by the Metal simulator (csrc/sim) when the
// mock's command buffer commits. Results are compared with the CPU backend on the same inputs.
// Linked against the build's libfa_core.a; built and run by tests/test_objc_e2e.py.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fa_abi.h"
#include "mock/metal_mock.h"
#include "sim/sim_api.h"

static int g_checks = 0, g_failures = 0;
#define CHECK(cond, what)                                                               \
    do {                                                                                \
        ++g_checks;                                                                     \
        if (!(cond)) {                                                                  \
            ++g_failures;                                                               \
            std::printf("FAIL %s: %s (line %d)\n", std::string(what).c_str(), #cond, __LINE__); \
        }                                                                               \
    } while (0)

// The mock's command buffer hands every project kernel to the simulator, with the exact bindings the shim made.
static std::string run_in_simulator(const std::string &name, const std::vector<mock::Arg> &args, const uint32_t g[3],
                                    const uint32_t t[3]) {
    const fasim::KernelInfo *kernel = fasim::find_kernel(name.c_str());
    if (kernel == nullptr) return "the simulator has no kernel " + name;
    std::vector<fasim::BufferArg> buffers;
    std::vector<fasim::BytesArg> bytes;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i].data == nullptr) continue;
        if (args[i].is_bytes)
            bytes.push_back({int(i), args[i].data, args[i].bytes});
        else
            buffers.push_back({int(i), args[i].data, args[i].bytes, true});
    }
    fasim::LaunchConfig cfg;
    for (int d = 0; d < 3; ++d) cfg.grid[d] = g[d], cfg.threads[d] = t[d];
    std::vector<fasim::Fault> faults = fasim::launch(kernel, cfg, buffers, bytes);
    return faults.empty() ? std::string() : faults[0].kind + ": " + faults[0].message;
}

struct Case {
    std::string name;
    fa_dtype dtype;
    int batch, sq, sk, hq, hkv, d;
    int window_left, window_right, num_splits;
    bool page_aligned;  // allocate q/out page-aligned (wrapped without copies) or not (copied)
};

static float to_float(const void *base, size_t i, fa_dtype t) {
    if (t == FA_F32) return static_cast<const float *>(base)[i];
    return float(static_cast<const _Float16 *>(base)[i]);
}

static void run_case(const Case &c) {
    const int eb = c.dtype == FA_F32 ? 4 : 2;
    const size_t nq = size_t(c.batch) * c.sq * c.hq * c.d, nk = size_t(c.batch) * c.sk * c.hkv * c.d;
    const size_t page = 16384;
    auto alloc = [&](size_t bytes) {
        // Over-allocate so the tensor can start either on a page boundary or 48 bytes after one.
        void *block = std::aligned_alloc(page, (bytes + 2 * page) / page * page);
        return static_cast<char *>(block);
    };
    char *qb = alloc(nq * eb), *kb = alloc(nk * eb), *vb = alloc(nk * eb), *ob = alloc(nq * eb), *o2b = alloc(nq * eb);
    const size_t shift = c.page_aligned ? 0 : 48;
    char *q = qb + shift, *k = kb + shift, *v = vb + shift, *o = ob + shift, *o2 = o2b + shift;
    std::vector<float> lse(size_t(c.batch) * c.hq * c.sq), lse2(lse.size());
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal;
    for (size_t i = 0; i < nq; ++i) {
        if (c.dtype == FA_F32) reinterpret_cast<float *>(q)[i] = normal(rng);
        else reinterpret_cast<_Float16 *>(q)[i] = _Float16(normal(rng));
    }
    for (size_t i = 0; i < nk; ++i) {
        if (c.dtype == FA_F32) {
            reinterpret_cast<float *>(k)[i] = normal(rng);
            reinterpret_cast<float *>(v)[i] = normal(rng);
        } else {
            reinterpret_cast<_Float16 *>(k)[i] = _Float16(normal(rng));
            reinterpret_cast<_Float16 *>(v)[i] = _Float16(normal(rng));
        }
    }
    auto params = [&](char *out, float *l) {
        fa_params p;
        fa_params_init(&p);
        p.batch = c.batch, p.seqlen_q = c.sq, p.seqlen_k = c.sk, p.nheads_q = c.hq, p.nheads_kv = c.hkv;
        p.headdim = p.headdim_v = c.d;
        p.dtype = c.dtype;
        auto dense = [](fa_tensor &t, void *data, int rows, int heads, int d) {
            t.data = data;
            t.head_stride = d;
            t.row_stride = int64_t(heads) * d;
            t.batch_stride = int64_t(rows) * heads * d;
        };
        dense(p.q, q, c.sq, c.hq, c.d);
        dense(p.k, k, c.sk, c.hkv, c.d);
        dense(p.v, v, c.sk, c.hkv, c.d);
        dense(p.out, out, c.sq, c.hq, c.d);
        p.lse = l;
        p.lse_batch_stride = int64_t(c.hq) * c.sq, p.lse_head_stride = c.sq, p.lse_row_stride = 1;
        p.softmax_scale = 1.0f / std::sqrt(float(c.d));
        p.window_left = c.window_left, p.window_right = c.window_right;
        p.num_splits = c.num_splits;
        return p;
    };
    char err[2048] = "";
    fa_params pm = params(o, lse.data());
    const size_t journal_before = mock::journal().size();
    const int rc = fa_forward(FA_BACKEND_METAL, &pm, err, sizeof err);
    CHECK(rc == FA_OK, c.name + ": metal " + err);
    fa_params pc = params(o2, lse2.data());
    const int rc2 = fa_forward(FA_BACKEND_CPU, &pc, err, sizeof err);
    CHECK(rc2 == FA_OK, c.name + ": cpu " + err);
    if (rc != FA_OK || rc2 != FA_OK) return;
    double max_diff = 0, max_ref = 0, lse_diff = 0;
    for (size_t i = 0; i < nq; ++i) {
        const double a = to_float(o, i, c.dtype), b = to_float(o2, i, c.dtype);
        max_diff = std::fmax(max_diff, std::fabs(a - b));
        max_ref = std::fmax(max_ref, std::fabs(b));
    }
    for (size_t i = 0; i < lse.size(); ++i)
        if (std::isfinite(lse2[i])) lse_diff = std::fmax(lse_diff, std::fabs(double(lse[i]) - lse2[i]));
        else CHECK(lse[i] == lse2[i], c.name + ": +inf LSE of a row that sees no key");
    // Both backends compute in float; the outputs differ only by accumulation order and the final rounding to
    // the storage type (a couple of half ulps for fp16).
    const double tol = c.dtype == FA_F32 ? 1e-5 : 2e-3;
    std::printf("%s: max|metal - cpu| = %.3g (max|out| %.3g), lse %.3g\n", c.name.c_str(), max_diff, max_ref,
                lse_diff);
    CHECK(max_diff <= tol * std::fmax(1.0, max_ref), c.name + ": output differs from the CPU backend");
    CHECK(lse_diff <= 1e-4, c.name + ": LSE differs from the CPU backend");
    int nocopy = 0, copies = 0, dispatches = 0, commits = 0;
    for (size_t i = journal_before; i < mock::journal().size(); ++i) {
        const std::string &l = mock::journal()[i];
        nocopy += l.rfind("nocopy", 0) == 0 && l.find("misaligned") == std::string::npos;
        copies += l.rfind("bytes ", 0) == 0;
        dispatches += l.rfind("dispatch ", 0) == 0;
        commits += l == "commit";
    }
    std::printf("  %d wrapped, %d copied buffers, %d dispatches, %d command buffer(s)\n", nocopy, copies, dispatches,
                commits);
    CHECK(commits == 1, c.name + ": one command buffer per call");
    CHECK(dispatches >= 1, c.name);
    std::free(qb), std::free(kb), std::free(vb), std::free(ob), std::free(o2b);
}

int main(int argc, char **argv) {
    if (argc < 2) return std::fprintf(stderr, "usage: e2e METALLIB_PATH\n"), 2;
    // The mock "metallib" lists every kernel the simulator has; the shim loads it like a real library.
    FILE *f = std::fopen(argv[1], "w");
    if (f == nullptr) return 2;
    std::fprintf(f, "MOCK METALLIB\n");
    for (const std::string &name : fasim::kernel_names()) std::fprintf(f, "%s\n", name.c_str());
    std::fclose(f);
    setenv("FLASH_ATTN_CY_METALLIB", argv[1], 1);
    mock::set_fallback(run_in_simulator);
    char why[512];
    CHECK(fa_backend_available(FA_BACKEND_METAL, why, sizeof why) == 1, std::string("metal available: ") + why);
    const Case cases[] = {
        {"f32 dense causal GQA", FA_F32, 2, 37, 53, 4, 2, 64, -1, 0, 1, true},
        {"f32 sliding window, unaligned", FA_F32, 1, 29, 29, 2, 2, 96, 8, 3, 1, false},
        {"f16 decode split-KV", FA_F16, 2, 1, 300, 4, 1, 128, -1, -1, 3, true},
        {"f16 prefill d80", FA_F16, 1, 40, 23, 3, 3, 80, -1, 0, 1, false},
    };
    for (const Case &c : cases) run_case(c);
    std::printf("passed %d of %d checks\n", g_checks - g_failures, g_checks);
    return g_failures ? 1 : 0;
}
