// sim_backend.cpp - the `sim` backend: execute the dispatch plan the C ABI built on the Metal simulator.
//
// Exactly what the Metal shim does on a Mac, with the simulator in place of the GPU: every launch of the plan runs
// in order, with the plan's grid, threadgroup size, buffer bindings, function constants and setBytes constants. The
// plan comes from csrc/fa_abi.cpp (one per call); this file decides nothing about it. Buffers are bound with their
// exact byte sizes so the simulator reports any access outside a tensor; p->sim_schedules > 1 reruns each launch
// under other thread schedules and reports differences (races); FLASH_ATTN_CY_SIM_HAZARDS=1 runs the launches under
// the hazard detector (csrc/sim/hazard.h: races found on the first run). Any fault becomes FA_ERR_FAULT.
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
#include "sim_profile_hook.h"

namespace {

int fail(char *err, size_t errlen, int code, const std::string &msg) {
    if (err && errlen) std::snprintf(err, errlen, "%s", msg.c_str());
    return code;
}

// Host memory behind each logical buffer (fa_buffers.h), and whether kernels of this plan kind may write it.
struct BufferMap {
    void *data[FA_BUF_COUNT] = {};
    bool writable[FA_BUF_COUNT] = {};
};

BufferMap map_buffers(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u,
                      std::vector<std::vector<unsigned char>> &scratch) {
    BufferMap m;
    for (int id = 0; id < FA_BUF_COUNT; ++id) {
        // the simulator restores writable buffers between schedules and compares them, so mark only those
        m.writable[id] = fa_buffer_written(kind, id) != 0;
        m.data[id] = fa_buffer_is_scratch(id) ? scratch[id - FA_BUF_FIRST_SCRATCH].data()
                                              : const_cast<void *>(fa_buffer_host_pointer(id, p, u));
    }
    return m;
}

// Bytes of logical buffer `id` the plan lets its launches reach: the scratch the plan sizes, or the caller's tensor.
int64_t buffer_size(const fa_plan &plan, int id) {
    return fa_buffer_is_scratch(id) ? plan.scratch_bytes[id - FA_BUF_FIRST_SCRATCH] : plan.buffer_bytes[id];
}

// The launch's Metal function constants (the descriptor's specialisation constants that are not template
// parameters), as the simulator takes them: the same (index, name, MTLDataType, bytes) the Metal shim passes to
// MTLFunctionConstantValues (objc/fa_metal_context.mm). An element-type constant has no MTLDataType here either.
int specialization(const fa_launch &l, std::vector<fasim::FunctionConstantValue> *out, char *err, size_t errlen) {
    enum : uint32_t { kMtlFloat = 3, kMtlInt = 29, kMtlUInt = 33, kMtlBool = 53 };  // MTLDataType codes
    for (int i = 0; i < l.desc.nspecs && i < FA_PLAN_MAX_SPECS; ++i) {
        const fa_spec_constant &c = l.desc.specs[i];
        if (c.index == FA_SPEC_TEMPLATE) continue;
        fasim::FunctionConstantValue v;
        v.index = c.index;
        v.name.assign(c.name, strnlen(c.name, FA_SPEC_NAME_LEN));
        const unsigned char *bytes = reinterpret_cast<const unsigned char *>(&c.value);
        switch (c.type) {
            case FA_SPEC_INT: v.mtl_type = kMtlInt; v.value.assign(bytes, bytes + 4); break;
            case FA_SPEC_UINT: v.mtl_type = kMtlUInt; v.value.assign(bytes, bytes + 4); break;
            case FA_SPEC_FLOAT: v.mtl_type = kMtlFloat; v.value.assign(bytes, bytes + 4); break;
            case FA_SPEC_BOOL: v.mtl_type = kMtlBool; v.value.assign(1, c.value.i != 0 ? 1 : 0); break;
            default:
                return fail(err, errlen, FA_ERR_RUNTIME, std::string("plan: function constant ") + v.name + " of " +
                                                             l.kernel + " has a type no function constant can have");
        }
        out->push_back(std::move(v));
    }
    return FA_OK;
}

}  // namespace

int fa_sim_has_kernel(const char *name) { return name != nullptr && fasim::find_kernel(name) != nullptr; }

int fa_sim_execute(const fa_plan *plan_in, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    const fa_plan &plan = *plan_in;
    if (plan.kind < FA_PLAN_FORWARD || plan.kind > FA_PLAN_KVCACHE_APPEND)
        return fail(err, errlen, FA_ERR_RUNTIME, "plan: unknown plan kind " + std::to_string(plan.kind));
    const fa_plan_kind kind = static_cast<fa_plan_kind>(plan.kind);

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
    const BufferMap map = map_buffers(kind, p, u, scratch);

    const fa_cancel *cancel = kind == FA_PLAN_KVCACHE_APPEND ? nullptr : p->cancel;
    const fasim::ProfiledCall call(kind, p);  // flash_attn_cy.sim.profile() runs the launches when active
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
            const int64_t size = buffer_size(plan, b.buffer);
            unsigned char *base = static_cast<unsigned char *>(map.data[b.buffer]);
            if (!base || size <= 0 || b.byte_offset < 0 || b.byte_offset >= size)
                return fail(err, errlen, FA_ERR_RUNTIME,
                            std::string("plan: launch ") + l.kernel + " binds buffer " + fa_buffer_name(b.buffer) +
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
        if (const int st = specialization(l, &cfg.constants, err, errlen)) return st;
        cfg.schedules = p->sim_schedules > 1 ? p->sim_schedules : 1;
        cfg.cancel = cancel;
        std::vector<fasim::Fault> faults;
        std::string why;
        if (!hazards || call.profiling()) faults = call.launch(l.kernel, kernel, cfg, buffers, bytes);
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
