// sim_backend.cpp - the `sim` backend: build the dispatch plan and execute it on the Metal simulator.
//
// Exactly what the Metal shim does on a Mac, with the simulator in place of the GPU: every launch of the plan runs
// in order, with the plan's grid, threadgroup size, buffer bindings and setBytes constants. Buffers are bound with
// their exact byte sizes so the simulator reports any access outside a tensor; p->sim_schedules > 1 reruns each
// launch under other thread schedules and reports differences (races); FLASH_ATTN_CY_SIM_HAZARDS=1 runs the launches
// under the hazard detector (csrc/sim/hazard.h: races found on the first run). Any fault becomes FA_ERR_FAULT.
// Cancellation (fa_params.cancel) is checked between launches and by the simulator inside them, except for the
// KV-cache append plan: a started append writes every row (fa_abi.h).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fa_backends.h"
#include "plan/fa_plan.h"
#include "sim/hazard_module.h"
#include "sim/sim_api.h"

namespace {

int fail(char *err, size_t errlen, int code, const std::string &msg) {
    if (err && errlen) std::snprintf(err, errlen, "%s", msg.c_str());
    return code;
}

// Host memory behind each logical buffer, and whether kernels of this plan kind may write it.
struct BufferMap {
    void *data[FA_BUF_COUNT] = {};
    bool writable[FA_BUF_COUNT] = {};
};

BufferMap map_buffers(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                      std::vector<std::vector<unsigned char>> &scratch) {
    BufferMap m;
    m.data[FA_BUF_Q] = p->q.data;
    m.data[FA_BUF_K] = p->k.data;
    m.data[FA_BUF_V] = p->v.data;
    m.data[FA_BUF_OUT] = p->out.data;
    m.data[FA_BUF_LSE] = p->lse;
    m.data[FA_BUF_ALIBI] = const_cast<float *>(p->alibi_slopes);
    m.data[FA_BUF_CU_SEQLENS_Q] = const_cast<int32_t *>(p->cu_seqlens_q);
    m.data[FA_BUF_CU_SEQLENS_K] = const_cast<int32_t *>(p->cu_seqlens_k);
    m.data[FA_BUF_SEQUSED_K] = const_cast<int32_t *>(p->seqused_k);
    m.data[FA_BUF_LEFTPAD_K] = const_cast<int32_t *>(p->leftpad_k);
    m.data[FA_BUF_CACHE_BATCH_IDX] = const_cast<int32_t *>(p->cache_batch_idx);
    m.data[FA_BUF_BLOCK_TABLE] = const_cast<int32_t *>(p->block_table);
    m.data[FA_BUF_DOUT] = p->dout.data;
    m.data[FA_BUF_DQ] = p->dq.data;
    m.data[FA_BUF_DK] = p->dk.data;
    m.data[FA_BUF_DV] = p->dv.data;
    m.data[FA_BUF_ATTN_PROBS] = p->attn_probs;
    if (u) {
        m.data[FA_BUF_KNEW] = u->knew.data;
        m.data[FA_BUF_VNEW] = u->vnew.data;
        m.data[FA_BUF_ROTARY_COS] = const_cast<void *>(u->rotary_cos);
        m.data[FA_BUF_ROTARY_SIN] = const_cast<void *>(u->rotary_sin);
    }
    for (int i = 0; i < FA_PLAN_SCRATCH_COUNT; ++i) m.data[FA_BUF_SCRATCH0 + i] = scratch[i].data();
    // Outputs per kind; the simulator restores writable buffers between schedules, so mark only those.
    const fa_buffer_id always[] = {FA_BUF_OUT, FA_BUF_LSE, FA_BUF_DQ, FA_BUF_DK, FA_BUF_DV, FA_BUF_ATTN_PROBS,
                                   FA_BUF_SCRATCH0, FA_BUF_SCRATCH1, FA_BUF_SCRATCH2};  // SCRATCH3: the dummy (never written)
    for (fa_buffer_id id : always) m.writable[id] = true;
    if (kind == FA_PLAN_KVCACHE_APPEND) m.writable[FA_BUF_Q] = m.writable[FA_BUF_K] = m.writable[FA_BUF_V] = true;
    return m;
}

}  // namespace

int fa_sim_available(char *why, size_t whylen) {
    if (fasim::find_kernel("fa_fwd_f32_d64") && fasim::find_kernel("fa_dec_f32_d64") && fasim::find_kernel("fa_vec1_f32_d64") &&
        fasim::find_kernel("fa_vec4_f32_d64") &&
        fasim::find_kernel("fa_merge_f32") && fasim::find_kernel("fa_kvcache_append_f32"))
        return 1;
    if (why && whylen)
        std::snprintf(why, whylen, "the simulator build does not contain the attention kernels (kernels/*.metal)");
    return 0;
}

int fa_sim_execute(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    static_assert(sizeof(fa_plan) < (1u << 20), "plan is built on the heap");
    std::vector<fa_plan> plan_storage(1);
    fa_plan &plan = plan_storage[0];
    int rc = fa_plan_build(kind, p, u, &plan, err, errlen);
    if (rc != FA_OK) return rc;

    std::vector<std::vector<unsigned char>> scratch(FA_PLAN_SCRATCH_COUNT);
    for (int i = 0; i < FA_PLAN_SCRATCH_COUNT; ++i) {
        const int64_t n = plan.scratch_bytes[i];
        if (n < 0) return fail(err, errlen, FA_ERR_RUNTIME, "plan: negative scratch size");
        try {
            scratch[i].assign(size_t(n), 0);
        } catch (...) {
            return fail(err, errlen, FA_ERR_RUNTIME,
                        "sim: cannot allocate " + std::to_string(n) + " bytes of scratch memory");
        }
    }
    for (int i = 0; i < FA_PLAN_SCRATCH_COUNT; ++i) plan.buffer_bytes[FA_BUF_SCRATCH0 + i] = plan.scratch_bytes[i];
    const BufferMap map = map_buffers(kind, p, u, scratch);

    const fa_cancel *cancel = kind == FA_PLAN_KVCACHE_APPEND ? nullptr : p->cancel;
    const bool hazards = fasim::hazards_requested();
    for (int li = 0; li < plan.nlaunches; ++li) {
        if (fa_cancel_rt::check(cancel)) return fail(err, errlen, FA_ERR_CANCELLED, "sim: cancelled");
        const fa_launch &l = plan.launches[li];
        const fasim::KernelInfo *kernel = fasim::find_kernel(l.kernel);
        if (!kernel)
            return fail(err, errlen, FA_ERR_UNAVAILABLE,
                        std::string("sim: kernel ") + l.kernel + " is not in this build of the simulator");
        std::vector<fasim::BufferArg> buffers;
        for (int bi = 0; bi < l.nbindings; ++bi) {
            const fa_binding &b = l.bindings[bi];
            if (b.buffer < 0 || b.buffer >= FA_BUF_COUNT)
                return fail(err, errlen, FA_ERR_RUNTIME, std::string("plan: bad buffer id in launch ") + l.kernel);
            const int64_t size = plan.buffer_bytes[b.buffer];
            unsigned char *base = static_cast<unsigned char *>(map.data[b.buffer]);
            if (!base || size <= 0 || b.byte_offset < 0 || b.byte_offset >= size)
                return fail(err, errlen, FA_ERR_RUNTIME,
                            std::string("plan: launch ") + l.kernel + " binds buffer " + std::to_string(b.buffer) +
                                " at index " + std::to_string(b.index) + " with no memory or an offset out of range");
            fasim::BufferArg a;
            a.index = b.index;
            a.data = base + b.byte_offset;
            a.bytes = size_t(size - b.byte_offset);
            a.writable = map.writable[b.buffer];
            buffers.push_back(a);
        }
        std::vector<fasim::BytesArg> bytes;
        if (l.constants_index >= 0) bytes.push_back({l.constants_index, l.constants, l.constants_size});
        fasim::LaunchConfig cfg;
        for (int i = 0; i < 3; ++i) {
            cfg.grid[i] = l.grid[i];
            cfg.threads[i] = l.threads[i];
        }
        cfg.schedules = p->sim_schedules > 1 ? p->sim_schedules : 1;
        cfg.cancel = cancel;
        std::vector<fasim::Fault> faults;
        std::string why;
        if (!hazards) faults = fasim::launch(kernel, cfg, buffers, bytes);
        else if (!fasim::launch_with_hazards(l.kernel, cfg, buffers, bytes, &faults, &why))
            return fail(err, errlen, FA_ERR_UNAVAILABLE, "sim: FLASH_ATTN_CY_SIM_HAZARDS is set, but " + why);
        if (fa_cancel_rt::requested(cancel)) return fail(err, errlen, FA_ERR_CANCELLED, "sim: cancelled");
        if (!faults.empty()) {
            std::string msg = std::string("sim: ") + std::to_string(faults.size()) + " fault(s) in " + l.kernel + ":";
            for (size_t f = 0; f < faults.size() && f < 8; ++f) msg += "\n" + faults[f].kind + ": " + faults[f].message;
            return fail(err, errlen, FA_ERR_FAULT, msg);
        }
    }
    return FA_OK;
}
