// sim_profile_hook.cpp - see sim_profile_hook.h.
#include "sim_profile_hook.h"

#include <atomic>
#include <string>

#include "fa_mask.h"
#include "sim/launch_args.h"

namespace {

std::atomic<fasim_launch_hook> g_hook{nullptr};
std::atomic<unsigned long long> g_next_call{1};

}  // namespace

extern "C" void fa_sim_set_launch_hook(void *hook) {
    g_hook.store(reinterpret_cast<fasim_launch_hook>(hook), std::memory_order_release);
}

namespace fasim {

double fa_useful_flops(fa_plan_kind kind, const fa_params *p) {
    if (kind == FA_PLAN_KVCACHE_APPEND || !p) return 0.0;
    double pairs = 0.0;  // visible (query, key) pairs of one head, over the batch
    for (int64_t b = 0; b < p->batch; ++b) {
        const int64_t sq = p->cu_seqlens_q ? int64_t(p->cu_seqlens_q[b + 1]) - p->cu_seqlens_q[b] : p->seqlen_q;
        int64_t sk = p->cu_seqlens_k ? int64_t(p->cu_seqlens_k[b + 1]) - p->cu_seqlens_k[b] : p->seqlen_k;
        if (p->seqused_k) sk = p->seqused_k[b];
        if (sq <= 0 || sk <= 0) continue;
        for (int64_t i = 0; i < sq; ++i) {
            const int64_t lo = fa_mask_key_lo(i, sq, sk, p->window_left), hi = fa_mask_key_hi(i, sq, sk, p->window_right);
            if (hi > lo) pairs += double(hi - lo);
        }
    }
    const double per_pair = (kind == FA_PLAN_BACKWARD ? 10.0 : 4.0) * p->headdim;
    return pairs * per_pair * p->nheads_q;
}

ProfiledCall::ProfiledCall(fa_plan_kind kind, const fa_params *p) : kind_(kind), p_(p), id_(0) {
    if (g_hook.load(std::memory_order_acquire)) id_ = g_next_call.fetch_add(1);
}

std::vector<Fault> ProfiledCall::launch(const char *name, const KernelInfo *kernel, const LaunchConfig &cfg,
                                        const std::vector<BufferArg> &buffers,
                                        const std::vector<BytesArg> &bytes) const {
    const fasim_launch_hook hook = g_hook.load(std::memory_order_acquire);
    if (!hook || !id_) return fasim::launch(kernel, cfg, buffers, bytes);
    const FlatLaunchArgs a(cfg, buffers, bytes);
    std::string out(1 << 16, '\0');
    const int n = hook(name, cfg.grid, cfg.threads, int(buffers.size()), a.buf_index.data(), a.buf_data.data(),
                       a.buf_bytes.data(), a.buf_writable.data(), int(bytes.size()), a.bytes_index.data(),
                       a.bytes_data.data(), a.bytes_len.data(), int(cfg.constants.size()), a.const_index.data(),
                       a.const_name.data(), a.const_type.data(), a.const_value.data(), a.const_bytes.data(),
                       cfg.schedules, cfg.cancel, fa_useful_flops(kind_, p_),
                       id_, &out[0], out.size());
    if (n < 0) return {{"error", "profile: " + std::string(out.c_str())}};
    std::vector<Fault> faults = parse_fault_lines(out.c_str());
    if (n > 0 && faults.empty()) faults.push_back({"error", "profile: the launch reported faults without text"});
    return faults;
}

}  // namespace fasim
