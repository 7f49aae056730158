// sim_profile_hook.cpp - see sim_profile_hook.h.
#include "sim_profile_hook.h"

#include <atomic>
#include <string>

#include "fa_mask.h"

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
    std::vector<int> bidx, bwr, cidx;
    std::vector<void *> bdata;
    std::vector<size_t> blen, clen;
    std::vector<const void *> cdata;
    for (const BufferArg &b : buffers) {
        bidx.push_back(b.index);
        bdata.push_back(b.data);
        blen.push_back(b.bytes);
        bwr.push_back(b.writable ? 1 : 0);
    }
    for (const BytesArg &c : bytes) {
        cidx.push_back(c.index);
        cdata.push_back(c.data);
        clen.push_back(c.bytes);
    }
    std::string out(1 << 16, '\0');
    const int n = hook(name, cfg.grid, cfg.threads, int(buffers.size()), bidx.data(), bdata.data(), blen.data(),
                       bwr.data(), int(bytes.size()), cidx.data(), cdata.data(), clen.data(), cfg.schedules, cfg.cancel,
                       fa_useful_flops(kind_, p_), id_, &out[0], out.size());
    out.resize(out.find('\0') == std::string::npos ? out.size() : out.find('\0'));
    if (n < 0) return {{"error", "profile: " + out}};
    std::vector<Fault> faults;
    size_t pos = 0;
    while (pos < out.size()) {
        size_t nl = out.find('\n', pos);
        if (nl == std::string::npos) nl = out.size();
        const std::string line = out.substr(pos, nl - pos);
        const size_t tab = line.find('\t');
        if (!line.empty()) faults.push_back({line.substr(0, tab), tab == std::string::npos ? "" : line.substr(tab + 1)});
        pos = nl + 1;
    }
    if (n > 0 && faults.empty()) faults.push_back({"error", "profile: the launch reported faults without text"});
    return faults;
}

}  // namespace fasim
