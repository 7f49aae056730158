// The plan hand-off, proved on the real C ABI, plan, simulator executor and Metal shim (issue 18 items 2 and 6): for
// each kind of call the C ABI builds ONE plan, and the executor of the backend receives that very object, unchanged,
// and runs exactly its launches. Part of the e2e driver (tests/objc/test_objc_e2e_driver.mm, mode "handoff"), linked
// by tests/objc/test_objc_e2e.py with `ld --wrap` on the three hand-off points:
//   fa_plan_build_for_device  the ABI's one plan build per call: counted, its object and contents recorded;
//   fa_sim_execute            the simulator executor: the object it receives and whether it arrives (and is left)
//   fa_metal_execute          the Metal executor        byte-identical to what the ABI built.
// What each executor then does with the plan is observed where it meets the kernels: the simulator's launch hook
// (csrc/sim_profile_hook.h; it still runs every launch, on the simulator) and the mock Metal's dispatches. Both must
// follow the plan launch for launch, reading each launch's constant block from the ABI's plan object itself.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fa_abi.h"
#include "fa_backends.h"
#include "mock/metal_mock.h"
#include "objc_driver_checks.h"
#include "plan/fa_plan_build.h"
#include "sim/sim_api.h"
#include "sim_profile_hook.h"

#define CHECK(cond, what) fa_check((cond), __FILE__, __LINE__, #cond, std::string(what))

extern "C" {
int __real_fa_plan_build_for_device(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                                    fa_plan_launch_fits fits, fa_plan *out, char *err, size_t errlen);
int __real_fa_sim_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u, char *err,
                          size_t errlen);
int __real_fa_metal_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u, char *err,
                            size_t errlen);
}

namespace {

// One launch as an executor handed it to the kernels.
struct Seen {
    std::string kernel;
    uint32_t grid[3], threads[3];
    std::vector<int> buffer_indices;    // bound for this launch (Metal adds placeholders at the free indices)
    bool only_plan_buffers = false;      // the simulator binds exactly the plan's buffers
    std::vector<const void *> constants;  // where the executor read each constant block from
    std::vector<size_t> constants_bytes;
};

// What one ABI call did at the three hand-off points.
struct Call {
    int builds = 0, executions = 0;
    bool asked_device = false;  // the build had the executor's fits predicate
    const fa_plan *built = nullptr, *executed = nullptr;
    fa_plan *snapshot = new fa_plan();  // the plan's bytes when the build returned
    bool arrived_unchanged = false, left_unchanged = false;
    std::vector<Seen> launches;
};
Call *g_call = nullptr;

void record_execution(const fa_plan *plan) {
    if (!g_call) return;
    ++g_call->executions;
    g_call->executed = plan;
    g_call->arrived_unchanged = std::memcmp(plan, g_call->snapshot, sizeof(fa_plan)) == 0;
}

// The simulator executor's launches, seen through its launch hook, then run on the simulator as it would.
int sim_hook(const char *kernel, const unsigned *grid, const unsigned *threads, int nbuf, const int *buf_index,
             void *const *buf_data, const size_t *buf_bytes, const int *buf_writable, int nbytes,
             const int *bytes_index, const void *const *bytes_data, const size_t *bytes_len, int schedules,
             const void *cancel, double, unsigned long long, char *out, size_t outlen) {
    Seen s;
    s.kernel = kernel;
    for (int d = 0; d < 3; ++d) s.grid[d] = grid[d], s.threads[d] = threads[d];
    s.only_plan_buffers = true;
    std::vector<fasim::BufferArg> buffers;
    for (int i = 0; i < nbuf; ++i) {
        s.buffer_indices.push_back(buf_index[i]);
        buffers.push_back({buf_index[i], buf_data[i], buf_bytes[i], buf_writable[i] != 0});
    }
    std::vector<fasim::BytesArg> bytes;
    for (int i = 0; i < nbytes; ++i) {
        bytes.push_back({bytes_index[i], bytes_data[i], bytes_len[i]});
        s.constants.push_back(bytes_data[i]);
        s.constants_bytes.push_back(bytes_len[i]);
    }
    if (g_call) g_call->launches.push_back(s);
    fasim::LaunchConfig cfg;
    for (int d = 0; d < 3; ++d) cfg.grid[d] = grid[d], cfg.threads[d] = threads[d];
    cfg.schedules = schedules;
    cfg.cancel = static_cast<const fa_cancel *>(cancel);
    const fasim::KernelInfo *k = fasim::find_kernel(kernel);
    if (!k) return std::snprintf(out, outlen, "no kernel %s", kernel), -1;
    const std::vector<fasim::Fault> faults = fasim::launch(k, cfg, buffers, bytes);
    std::string text;
    for (const fasim::Fault &f : faults) text += f.kind + "\t" + f.message + "\n";
    std::snprintf(out, outlen, "%s", text.c_str());
    return int(faults.size());
}

}  // namespace

extern "C" int __wrap_fa_plan_build_for_device(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                                               fa_plan_launch_fits fits, fa_plan *out, char *err, size_t errlen) {
    const int rc = __real_fa_plan_build_for_device(kind, p, u, fits, out, err, errlen);
    if (g_call) {
        ++g_call->builds;
        g_call->asked_device = fits != nullptr;
        g_call->built = out;
        std::memcpy(g_call->snapshot, out, sizeof(fa_plan));
    }
    return rc;
}

extern "C" int __wrap_fa_sim_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u, char *err,
                                     size_t errlen) {
    record_execution(plan);
    const int rc = __real_fa_sim_execute(plan, p, u, err, errlen);
    if (g_call) g_call->left_unchanged = std::memcmp(plan, g_call->snapshot, sizeof(fa_plan)) == 0;
    return rc;
}

extern "C" int __wrap_fa_metal_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u,
                                       char *err, size_t errlen) {
    record_execution(plan);
    const size_t first = mock::dispatch_log().size();
    const int rc = __real_fa_metal_execute(plan, p, u, err, errlen);
    if (g_call) {
        g_call->left_unchanged = std::memcmp(plan, g_call->snapshot, sizeof(fa_plan)) == 0;
        for (size_t i = first; i < mock::dispatch_log().size(); ++i) {
            const mock::DispatchRecord &d = mock::dispatch_log()[i];
            Seen s;
            s.kernel = d.kernel;
            for (int k = 0; k < 3; ++k) s.grid[k] = d.grid[k], s.threads[k] = d.threads[k];
            s.buffer_indices = d.buffer_indices;
            s.constants = d.bytes_sources;
            s.constants_bytes = d.bytes_lengths;
            g_call->launches.push_back(s);
        }
    }
    return rc;
}

namespace {

// The executor received the object the ABI built, once, unchanged, and ran every launch of it as planned.
void check_handoff(const std::string &what, const Call &c) {
    CHECK(c.builds == 1, what + ": the ABI built " + std::to_string(c.builds) + " plans");
    CHECK(c.executions == 1, what + ": " + std::to_string(c.executions) + " executions");
    CHECK(c.executed == c.built && c.built != nullptr, what + ": the executor got another plan object");
    CHECK(c.arrived_unchanged && c.left_unchanged, what + ": the plan changed between the ABI and the executor");
    const fa_plan &plan = *c.snapshot;
    CHECK(int(c.launches.size()) == plan.nlaunches,
          what + ": " + std::to_string(c.launches.size()) + " launches run, the plan has " +
              std::to_string(plan.nlaunches));
    for (int li = 0; li < plan.nlaunches && li < int(c.launches.size()); ++li) {
        const fa_launch &l = plan.launches[li];
        const Seen &s = c.launches[li];
        const std::string at = what + " launch " + std::to_string(li) + " (" + l.kernel + ")";
        CHECK(s.kernel == l.kernel, at + ": ran " + s.kernel);
        CHECK(std::memcmp(s.grid, l.grid, sizeof s.grid) == 0 && std::memcmp(s.threads, l.threads, sizeof s.threads) == 0,
              at + ": grid or threadgroup differ from the plan");
        // every binding of the plan is bound (Metal also binds placeholders at the indices the plan leaves free)
        for (int b = 0; b < l.nbindings; ++b) {
            bool bound = false;
            for (int idx : s.buffer_indices) bound |= idx == l.bindings[b].index;
            CHECK(bound, at + ": buffer index " + std::to_string(l.bindings[b].index) + " not bound");
        }
        if (s.only_plan_buffers) CHECK(int(s.buffer_indices.size()) == l.nbindings, at + ": bindings not the plan's");
        // the constant block is read from the ABI's plan object itself, not from a plan or copy of the executor's
        CHECK(s.constants.size() == 1 && s.constants[0] == c.built->launches[li].constants &&
                  s.constants_bytes[0] == l.constants_size,
              at + ": constants not read from the ABI's plan");
    }
}

bool has_family(const fa_plan &plan, int family) {
    for (int li = 0; li < plan.nlaunches; ++li)
        if (plan.launches[li].desc.family == family) return true;
    return false;
}

void fill(std::vector<float> &x, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    for (float &e : x) e = normal(rng);
}

void dense(fa_tensor &t, void *data, int rows, int heads, int d) {
    t.data = data, t.head_stride = d, t.row_stride = int64_t(heads) * d, t.batch_stride = int64_t(rows) * heads * d;
}

// One attention problem in fp32 host memory (copied by the Metal shim, which only wraps the package's own pages).
struct Problem {
    int b, sq, sk, hq, hkv, d, splits = 0;
    std::vector<float> q, k, v, out, lse, dout, dq, dk, dv, probs;
    Problem(int b_, int sq_, int sk_, int hq_, int hkv_, int d_)
        : b(b_), sq(sq_), sk(sk_), hq(hq_), hkv(hkv_), d(d_), q(size_t(b) * sq * hq * d), k(size_t(b) * sk * hkv * d),
          v(k.size()), out(q.size()), lse(size_t(b) * hq * sq), dout(q.size()), dq(q.size()), dk(k.size()),
          dv(k.size()), probs(size_t(b) * hq * sq * sk) {
        fill(q, 1), fill(k, 2), fill(v, 3), fill(dout, 4);
    }
    fa_params params(bool causal, bool with_probs) {
        fa_params p;
        fa_params_init(&p);
        p.batch = b, p.seqlen_q = sq, p.seqlen_k = sk, p.nheads_q = hq, p.nheads_kv = hkv, p.headdim = p.headdim_v = d;
        p.dtype = FA_F32;
        dense(p.q, q.data(), sq, hq, d), dense(p.k, k.data(), sk, hkv, d), dense(p.v, v.data(), sk, hkv, d);
        dense(p.out, out.data(), sq, hq, d), dense(p.dout, dout.data(), sq, hq, d), dense(p.dq, dq.data(), sq, hq, d);
        dense(p.dk, dk.data(), sk, hkv, d), dense(p.dv, dv.data(), sk, hkv, d);
        p.lse = lse.data();
        p.lse_batch_stride = int64_t(hq) * sq, p.lse_head_stride = sq, p.lse_row_stride = 1;
        p.softmax_scale = 1.0 / std::sqrt(double(d));
        if (causal) p.window_right = 0;
        p.num_splits = splits;
        if (with_probs) {
            p.attn_probs = probs.data();
            p.attn_probs_row_stride = sk, p.attn_probs_head_stride = int64_t(sq) * sk;
            p.attn_probs_batch_stride = int64_t(hq) * sq * sk;
        }
        return p;
    }
};

enum class Kind { Forward, Backward, Append };

// Runs one call on `backend` and returns what happened at the hand-off points; the outputs it wrote go to `outputs`.
Call run(Kind kind, fa_backend backend, fa_params *p, const fa_kvcache_update *u, const std::string &what) {
    Call c;
    g_call = &c;
    char err[1024] = "";
    const int rc = kind == Kind::Forward    ? fa_forward(backend, p, err, sizeof err)
                   : kind == Kind::Backward ? fa_backward(backend, p, err, sizeof err)
                                            : fa_kvcache_append(backend, p, u, err, sizeof err);
    g_call = nullptr;
    CHECK(rc == FA_OK, what + ": " + err);
    check_handoff(what, c);
    return c;
}

double max_diff(const std::vector<float> &a, const std::vector<float> &b) {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(double(a[i]) - b[i]));
    return m;
}

// The same call on the simulator and on Metal: one plan each, the same plan (byte for byte), the same results.
void same_plan_both_executors(const std::string &name, Kind kind, int b, int sq, int sk, int hq, int hkv, int d,
                              bool causal, bool probs, int splits = 0, int min_launches = 1) {
    Problem sim(b, sq, sk, hq, hkv, d), metal(b, sq, sk, hq, hkv, d);
    sim.splits = metal.splits = splits;
    if (kind == Kind::Backward) {  // the backward reads the forward's out and LSE
        for (Problem *x : {&sim, &metal}) {
            fa_params f = x->params(causal, false);
            char err[512] = "";
            CHECK(fa_forward(FA_BACKEND_CPU, &f, err, sizeof err) == FA_OK, name + ": forward " + err);
        }
    }
    fa_params ps = sim.params(causal, probs), pm = metal.params(causal, probs);
    const Call cs = run(kind, FA_BACKEND_SIM, &ps, nullptr, name + " [sim]");
    const Call cm = run(kind, FA_BACKEND_METAL, &pm, nullptr, name + " [metal]");
    CHECK(!cs.asked_device && cm.asked_device, name + ": only Metal's plan asks the device");
    CHECK(std::memcmp(cs.snapshot, cm.snapshot, sizeof(fa_plan)) == 0, name + ": the two backends got other plans");
    CHECK(cs.snapshot->kind == (kind == Kind::Forward ? FA_PLAN_FORWARD : FA_PLAN_BACKWARD), name + ": plan kind");
    CHECK(cs.snapshot->nlaunches >= min_launches, name + ": fewer launches than the case is about");
    const double dout = max_diff(sim.out, metal.out), dl = max_diff(sim.lse, metal.lse);
    const double dg = kind == Kind::Backward
                          ? std::fmax(max_diff(sim.dq, metal.dq), std::fmax(max_diff(sim.dk, metal.dk), max_diff(sim.dv, metal.dv)))
                          : 0.0;
    const double dp = probs ? max_diff(sim.probs, metal.probs) : 0.0;
    std::printf("%s: %d launch(es) [%s%s], one plan object per call; |sim - metal| out %g lse %g grads %g probs %g\n",
                name.c_str(), cs.snapshot->nlaunches, cs.snapshot->launches[0].kernel,
                cs.snapshot->nlaunches > 1 ? ", ..." : "", dout, dl, dg, dp);
    // the same kernels on the same simulator from the same plan: the same bits
    CHECK(dout == 0 && dl == 0 && dg == 0 && dp == 0, name + ": the executors' results differ");
}

void kvcache_append_both_executors() {
    const int B = 2, cap = 24, hq = 4, hkv = 2, d = 32, sq = 2, snew = 2;
    const int32_t used[B] = {3, 11};
    std::vector<float> kn(size_t(B) * snew * hkv * d), vn(kn.size());
    fill(kn, 5), fill(vn, 6);
    Problem sim(B, sq, cap, hq, hkv, d), metal(B, sq, cap, hq, hkv, d);
    auto call = [&](Problem &x, fa_backend backend, const std::string &what) {
        fa_params p = x.params(false, false);
        p.seqused_k = used;
        fa_kvcache_update u;
        std::memset(&u, 0, sizeof u);
        dense(u.knew, kn.data(), snew, hkv, d);
        dense(u.vnew, vn.data(), snew, hkv, d);
        u.seqlen_new = snew;
        return run(Kind::Append, backend, &p, &u, what);
    };
    const Call cs = call(sim, FA_BACKEND_SIM, "kvcache append [sim]");
    const Call cm = call(metal, FA_BACKEND_METAL, "kvcache append [metal]");
    CHECK(std::memcmp(cs.snapshot, cm.snapshot, sizeof(fa_plan)) == 0, "kvcache append: other plans");
    CHECK(cs.snapshot->kind == FA_PLAN_KVCACHE_APPEND, "kvcache append: plan kind");
    const double dk = max_diff(sim.k, metal.k), dv = max_diff(sim.v, metal.v);
    const Problem before(B, sq, cap, hq, hkv, d);  // the caches as they were: the append must have written them
    std::printf("kvcache append: %d launch(es) [%s], |sim - metal| k cache %g v cache %g\n", cs.snapshot->nlaunches,
                cs.snapshot->launches[0].kernel, dk, dv);
    CHECK(max_diff(sim.k, before.k) > 0 && max_diff(sim.v, before.v) > 0, "kvcache append wrote the caches");
    CHECK(dk == 0 && dv == 0, "kvcache append: the executors' results differ");
}

// A device whose vector pipeline allows fewer threads than the plan's: the ABI's one build asks the Metal executor
// and plans the fragment kernel; the simulator, asked nothing, keeps the vector kernel.
void limited_vector_pipeline() {
    mock::knobs().limited_prefix = "fa_vec";
    mock::knobs().limited_max_total_threads = 128;
    Problem sim(1, 1, 70, 8, 2, 64), metal(1, 1, 70, 8, 2, 64);
    fa_params ps = sim.params(false, false), pm = metal.params(false, false);
    const Call cs = run(Kind::Forward, FA_BACKEND_SIM, &ps, nullptr, "limited vector pipeline [sim]");
    const Call cm = run(Kind::Forward, FA_BACKEND_METAL, &pm, nullptr, "limited vector pipeline [metal]");
    mock::knobs().limited_prefix.clear();
    CHECK(has_family(*cs.snapshot, FA_KERNEL_VECTOR), "the simulator's plan keeps the vector kernel");
    CHECK(!has_family(*cm.snapshot, FA_KERNEL_VECTOR) && has_family(*cm.snapshot, FA_KERNEL_FRAGMENT),
          "Metal's plan, built once, is on the fragment kernel");
    const double dout = max_diff(sim.out, metal.out);
    std::printf("limited vector pipeline: sim runs %s, metal runs %s (one build each); |sim - metal| out %.3g\n",
                cs.snapshot->launches[0].kernel, cm.snapshot->launches[0].kernel, dout);
    CHECK(dout <= 1e-5, "vector and fragment kernels agree");
}

}  // namespace

// Mode "handoff" of the e2e driver; returns the number of failed checks.
int run_plan_handoff() {
    fa_sim_set_launch_hook(reinterpret_cast<void *>(&sim_hook));
    same_plan_both_executors("forward prefill causal GQA", Kind::Forward, 2, 33, 45, 4, 2, 64, true, false);
    same_plan_both_executors("forward decode split-KV", Kind::Forward, 1, 1, 300, 4, 1, 64, false, false, 3, 2);
    same_plan_both_executors("forward with attention probabilities", Kind::Forward, 1, 9, 13, 2, 2, 32, false, true,
                             0, 2);
    same_plan_both_executors("backward causal", Kind::Backward, 1, 21, 21, 2, 1, 32, true, false, 0, 3);
    kvcache_append_both_executors();
    limited_vector_pipeline();
    fa_sim_set_launch_hook(nullptr);
    return fa_checks_report();
}
