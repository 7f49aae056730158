// constants.cpp - a launch's specialisation of a kernel: function constant values matched to the declarations of the
// kernel's file and the optional arguments they gate (MSL specification §5.8.1, "Specifying program scope function
// constants"), and the kernel's [[max_total_threads_per_threadgroup]] (§5.1, compute function attributes), all
// checked before any simulated thread runs.
#include "constants.h"

#include <stdio.h>
#include <string.h>

namespace fasim {

namespace {

// MTLDataType codes of the types a function constant can have (an N-vector is the scalar's code + N - 1).
const char *mtl_type_name(uint32_t code) {
    static const struct { uint32_t code; const char *name; } kScalars[] = {
        {3, "float"}, {16, "half"}, {29, "int"}, {33, "uint"}, {37, "short"}, {41, "ushort"}, {45, "char"},
        {49, "uchar"}, {53, "bool"}, {81, "long"}, {85, "ulong"}, {121, "bfloat"},
    };
    static thread_local char buf[32];
    for (const auto &s : kScalars)
        if (code >= s.code && code < s.code + 4) {
            if (code == s.code) return s.name;
            snprintf(buf, sizeof buf, "%s%u", s.name, code - s.code + 1);
            return buf;
        }
    snprintf(buf, sizeof buf, "MTLDataType %u", code);
    return buf;
}

std::string describe(const FcDecl *d) {
    return std::string("function constant '") + d->name + "' (index " + std::to_string(d->index) + ", declared " +
           mtl_type_name(d->mtl_type) + " at " + d->file + ":" + std::to_string(d->line) + ")";
}

}  // namespace

void fc_undefined(const FcDecl *d, const char *file, unsigned line) {
    static thread_local char msg[512];  // kernel_error does not return: nothing on this stack is destroyed
    snprintf(msg, sizeof msg, "%s is read but the launch gave it no value (Metal cannot create the pipeline; pass it, "
             "or test is_function_constant_defined first)", describe(d).c_str());
    kernel_error("error", file, line, msg);
}

namespace detail {

std::string resolve_constants(const KernelInfo *k, const std::vector<FunctionConstantValue> &given,
                              std::vector<FcValue> &values) {
    values.assign(k->n_fc, FcValue{});
    for (const FunctionConstantValue &g : given) {
        int slot = -1;
        for (uint32_t i = 0; i < k->n_fc && slot < 0; i++)
            if (g.index >= 0 && k->fc[i]->index == g.index) slot = (int)i;
        for (uint32_t i = 0; i < k->n_fc && slot < 0; i++)
            if (!g.name.empty() && g.name == k->fc[i]->name) slot = (int)i;
        if (slot < 0) continue;  // as in Metal: values for constants the function does not have are ignored
        const FcDecl *d = k->fc[slot];
        if (g.mtl_type != d->mtl_type)
            return "launch of '" + std::string(k->name) + "': " + describe(d) + " is given a value of type " +
                   mtl_type_name(g.mtl_type);
        if (g.value.size() != d->bytes)
            return "launch of '" + std::string(k->name) + "': " + describe(d) + " takes " + std::to_string(d->bytes) +
                   " bytes, given " + std::to_string(g.value.size());
        FcValue &v = values[slot];
        v.defined = true;
        memcpy(v.bytes, g.value.data(), d->bytes);
        if (d->mtl_type >= 53 && d->mtl_type <= 56)  // bool: any nonzero byte is true, stored as 1
            for (uint32_t b = 0; b < d->bytes; b++) v.bytes[b] = v.bytes[b] != 0;
    }
    return "";
}

std::string required_buffers(const KernelInfo *k, const std::vector<FcValue> &values, uint32_t *mask) {
    *mask = k->buffer_mask;
    for (uint32_t i = 0; i < k->n_gates; i++) {
        const GatedBuffer &g = k->gates[i];
        const FcValue &v = values[g.fc];
        if (!v.defined)
            return "launch of '" + std::string(k->name) + "': [[buffer(" + std::to_string(g.buffer) +
                   ")]] exists only if " + describe(k->fc[g.fc]) + " is true, and the launch gave it no value";
        if (v.bytes[0]) *mask |= 1u << g.buffer;
    }
    return "";
}

std::string threadgroup_memory(const KernelInfo *k, const std::vector<ThreadgroupMemoryArg> &given,
                               LaunchValues *values) {
    const std::string who = "launch of '" + std::string(k->name) + "': ";
    for (int i = 0; i < kMaxBuffers; i++) values->tg_mem[i] = 0;
    for (const ThreadgroupMemoryArg &g : given) {
        if (g.index < 0 || g.index >= kMaxBuffers || !(k->tg_mem_mask >> g.index & 1u))
            return who + "threadgroup memory length given for index " + std::to_string(g.index) +
                   ", but the kernel has no [[threadgroup(" + std::to_string(g.index) + ")]] argument";
        // setThreadgroupMemoryLength:atIndex: takes multiples of 16 bytes, at most the 32 KiB Apple GPUs have
        if (g.bytes == 0 || g.bytes % 16 != 0 || g.bytes > 32768)
            return who + "[[threadgroup(" + std::to_string(g.index) + ")]] length " + std::to_string(g.bytes) +
                   " bytes: Metal takes a positive multiple of 16, at most 32768";
        values->tg_mem[g.index] = (uint32_t)g.bytes;
    }
    for (int i = 0; i < kMaxBuffers; i++)
        if ((k->tg_mem_mask >> i & 1u) && !values->tg_mem[i])
            return who + "[[threadgroup(" + std::to_string(i) + ")]] has no length (setThreadgroupMemoryLength)";
    return "";
}

std::string check_threadgroup_size(const KernelInfo *k, uint64_t nthreads) {
    if (!k->max_threads || nthreads <= k->max_threads) return "";
    return "launch of '" + std::string(k->name) + "': a threadgroup of " + std::to_string(nthreads) +
           " threads exceeds the kernel's [[max_total_threads_per_threadgroup(" + std::to_string(k->max_threads) +
           ")]] (declared at " + k->file + ":" + std::to_string(k->line) + "; Metal's pipeline has at most that many)";
}

}  // namespace detail
}  // namespace fasim
