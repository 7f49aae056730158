// fa_plan_launch.cpp - the kernel families (FA_KERNEL_FAMILIES in fa_plan.h) expanded into their function-name
// patterns, buffer signatures (kernels/fa_kernel_args.h) and constant-block sizes; the one function that names a
// kernel from its descriptor; and add_launch, which every plan file uses to append a launch.
#include <cstdio>
#include <cstring>
#include <string>

#include "fa_bwd_params.h"
#include "fa_tiles.h"  // FA_VEC_ROWS
#include "fa_kernel_params.h"
#include "fa_plan_internal.h"

namespace {

using faplan::fail;

// One buffer argument of a kernel: its [[buffer(index)]] and the logical buffer the plan binds there.
struct KernelArg {
    int32_t index;
    int32_t buffer;  // fa_buffer_id
};

struct Family {
    const char *name;
    const char *pattern;  // Metal function name with {CONSTANT} for each template constant
    const KernelArg *args;
    int nargs;
    uint32_t block_bytes;  // size of the constant block the kernel reads
};

#define FA_ARG_FWD_(ARG, param, BUFFER) {FA_FWD_BUF_##ARG, FA_BUF_##BUFFER},
#define FA_ARG_MERGE_(ARG, param, BUFFER) {FA_MERGE_BUF_##ARG, FA_BUF_##BUFFER},
#define FA_ARG_APPEND_(ARG, param, BUFFER) {FA_APPEND_BUF_##ARG, FA_BUF_##BUFFER},
#define FA_ARG_BWD_(ARG, param, BUFFER) {FA_BWD_BUF_##ARG, FA_BUF_##BUFFER},
#define FA_FAMILY_ARGS_(ID, name, pattern, signature, space, block) \
    constexpr KernelArg k##ID##Args[] = {signature(FA_ARG_##space##_)};
FA_KERNEL_FAMILIES(FA_FAMILY_ARGS_)
#undef FA_FAMILY_ARGS_

// A signature binds each index once, below the constant block, each logical buffer once, and fits a launch.
template <size_t N>
constexpr bool signature_valid(const KernelArg (&args)[N]) {
    if (N > FA_PLAN_MAX_BINDINGS) return false;
    for (size_t i = 0; i < N; ++i) {
        if (args[i].index < 0 || args[i].index >= FA_KERNEL_PARAMS_INDEX) return false;
        const int32_t b = args[i].buffer;
        if (b < 0 || b >= FA_BUF_COUNT || b == FA_PLAN_DUMMY_BUFFER) return false;
        for (size_t j = 0; j < i; ++j)
            if (args[j].index == args[i].index || args[j].buffer == args[i].buffer) return false;
    }
    return true;
}
#define FA_FAMILY_CHECK_(ID, name, pattern, signature, space, block)                                        \
    static_assert(signature_valid(k##ID##Args), #signature ": each index once, below FA_KERNEL_PARAMS_INDEX, " \
                                                "each logical buffer once, at most FA_PLAN_MAX_BINDINGS");
FA_KERNEL_FAMILIES(FA_FAMILY_CHECK_)
#undef FA_FAMILY_CHECK_

#define FA_FAMILY_(ID, name, pattern, signature, space, block) \
    {name, pattern, k##ID##Args, int(sizeof(k##ID##Args) / sizeof(KernelArg)), uint32_t(sizeof(block))},
constexpr Family kFamilies[FA_KERNEL_FAMILY_COUNT] = {FA_KERNEL_FAMILIES(FA_FAMILY_)};
#undef FA_FAMILY_
#undef FA_ARG_FWD_
#undef FA_ARG_MERGE_
#undef FA_ARG_APPEND_
#undef FA_ARG_BWD_

static_assert(FA_KERNEL_PARAMS_INDEX < FA_KERNEL_ARG_SLOTS, "the constant block takes the last argument slot");
#define FA_FAMILY_BLOCK_FITS_(ID, name, pattern, signature, space, block) \
    static_assert(sizeof(block) <= FA_PLAN_MAX_CONSTANT_BYTES, #block " fits a launch's constant block");
FA_KERNEL_FAMILIES(FA_FAMILY_BLOCK_FITS_)
#undef FA_FAMILY_BLOCK_FITS_

bool valid_family(int family) { return family >= 0 && family < FA_KERNEL_FAMILY_COUNT; }

void add_spec(fa_kernel_desc *d, const char *name, fa_spec_type type, int32_t value) {
    fa_spec_constant &c = d->specs[d->nspecs++];
    std::snprintf(c.name, sizeof(c.name), "%s", name);
    c.index = FA_SPEC_TEMPLATE;
    c.type = type;
    c.value.i = value;
}

// The text of a template constant in a function name: the dtype tag for T, the decimal value otherwise.
bool spec_text(const fa_spec_constant &c, std::string *out) {
    if (c.type == FA_SPEC_DTYPE) {
        const char *tag = faplan::dtype_tag(static_cast<fa_dtype>(c.value.i));
        if (!tag) return false;
        *out += tag;
    } else {
        *out += std::to_string(c.type == FA_SPEC_UINT ? int64_t(c.value.u) : int64_t(c.value.i));
    }
    return true;
}

// Index of the template constant `key` in the descriptor, or -1.
int find_template_spec(const fa_kernel_desc &d, const std::string &key) {
    for (int i = 0; i < d.nspecs && i < FA_PLAN_MAX_SPECS; ++i)
        if (d.specs[i].index == FA_SPEC_TEMPLATE && key == d.specs[i].name) return i;
    return -1;
}

// Binds the signature of the launch's family (see add_launch).
void bind_signature(fa_plan *plan, fa_launch *l, uint64_t placeholder) {
    const Family &f = kFamilies[l->desc.family];
    for (int i = 0; i < f.nargs; ++i) {
        const int id = f.args[i].buffer;
        const int64_t bytes =
            fa_buffer_is_scratch(id) ? plan->scratch_bytes[id - FA_BUF_FIRST_SCRATCH] : plan->buffer_bytes[id];
        const bool bind = bytes > 0 && !(placeholder & faplan::buffer_bit(static_cast<fa_buffer_id>(id)));
        l->bindings[l->nbindings++] = fa_binding{f.args[i].index, bind ? id : FA_PLAN_DUMMY_BUFFER, 0};
        if (!bind) plan->scratch_bytes[FA_PLAN_DUMMY_BUFFER - FA_BUF_FIRST_SCRATCH] = FA_PLAN_DUMMY_BYTES;
    }
}

}  // namespace

extern "C" const char *fa_kernel_family_name(int family) {
    return valid_family(family) ? kFamilies[family].name : "invalid";
}

extern "C" int fa_kernel_name(const fa_kernel_desc *d, char *out, size_t outlen) {
    if (!valid_family(d->family) || d->nspecs < 0 || d->nspecs > FA_PLAN_MAX_SPECS)
        return fail(out, outlen, FA_ERR_RUNTIME, "plan: kernel descriptor of family %d with %d constants", d->family,
                    d->nspecs);
    std::string name;
    unsigned used = 0;
    for (const char *c = kFamilies[d->family].pattern; *c;) {
        const char *close = *c == '{' ? std::strchr(c, '}') : nullptr;
        if (!close) {
            name += *c++;
            continue;
        }
        const std::string key(c + 1, close);
        const int at = find_template_spec(*d, key);
        if (at < 0 || !spec_text(d->specs[at], &name))
            return fail(out, outlen, FA_ERR_RUNTIME, "plan: %s kernel without a valid template constant %s",
                        kFamilies[d->family].name, key.c_str());
        used |= 1u << at;
        c = close + 1;
    }
    for (int i = 0; i < d->nspecs; ++i)
        if (d->specs[i].index == FA_SPEC_TEMPLATE && !(used >> i & 1u))
            return fail(out, outlen, FA_ERR_RUNTIME, "plan: template constant %s is not part of the %s kernel names",
                        d->specs[i].name, kFamilies[d->family].name);
    if (name.size() + 1 > outlen) return fail(out, outlen, FA_ERR_RUNTIME, "plan: kernel name too long");
    std::memcpy(out, name.c_str(), name.size() + 1);
    return FA_OK;
}

namespace faplan {

fa_kernel_desc kernel_desc(fa_kernel_family family, fa_dtype dtype, int bd, int rows) {
    fa_kernel_desc d;
    std::memset(&d, 0, sizeof(d));
    d.family = family;
    add_spec(&d, "T", FA_SPEC_DTYPE, dtype);
    if (bd > 0) add_spec(&d, "BD", FA_SPEC_INT, bd);
    if (rows > 0) add_spec(&d, "ROWS", FA_SPEC_INT, rows);
    return d;
}

int add_launch(fa_plan *plan, const LaunchSpec &s, const void *constants, uint32_t constants_size, char *err,
               size_t errlen) {
    if (plan->nlaunches >= FA_PLAN_MAX_LAUNCHES)
        return fail(err, errlen, FA_ERR_RUNTIME, "plan: more than %d launches", FA_PLAN_MAX_LAUNCHES);
    if (!valid_family(s.desc.family) || constants_size != kFamilies[s.desc.family].block_bytes)
        return fail(err, errlen, FA_ERR_RUNTIME, "plan: a %u-byte constant block for a kernel of family %s",
                    constants_size, fa_kernel_family_name(s.desc.family));
    fa_launch *l = &plan->launches[plan->nlaunches];
    std::memset(l, 0, sizeof(*l));
    l->desc = s.desc;
    if (const int rc = fa_kernel_name(&l->desc, l->kernel, sizeof(l->kernel)))
        return fail(err, errlen, rc, "%s", l->kernel);
    l->tile = s.tile;
    for (int i = 0; i < 3; ++i) {
        l->grid[i] = s.grid[i];
        l->threads[i] = i == 0 ? s.threads : 1;
    }
    l->threadgroup_memory_bytes = s.threadgroup_bytes;
    bind_signature(plan, l, s.placeholder);
    l->constants_index = FA_KERNEL_PARAMS_INDEX;
    l->constants_size = constants_size;
    std::memcpy(l->constants, constants, constants_size);
    ++plan->nlaunches;
    return FA_OK;
}

}  // namespace faplan

// One kernel of every forward and KV-cache family (fp32, head dim 64), named as the plan names them: the C ABI asks
// the simulator for each (fa_sim_has_kernel) before it reports that backend able to serve plans.
extern "C" int fa_plan_probe_kernel_name(int i, char *out, size_t outlen) {
    const fa_kernel_desc probes[] = {faplan::kernel_desc(FA_KERNEL_PREFILL, FA_F32, 64),
                                     faplan::kernel_desc(FA_KERNEL_FRAGMENT, FA_F32, 64),
                                     faplan::kernel_desc(FA_KERNEL_VECTOR, FA_F32, 64, 1),
                                     faplan::kernel_desc(FA_KERNEL_VECTOR, FA_F32, 64, FA_VEC_ROWS),
                                     faplan::kernel_desc(FA_KERNEL_MERGE, FA_F32),
                                     faplan::kernel_desc(FA_KERNEL_KVCACHE_APPEND, FA_F32)};
    if (i < 0 || i >= int(sizeof(probes) / sizeof(probes[0]))) return -1;
    return fa_kernel_name(&probes[i], out, outlen);
}
