// fa_metal_binding.cpp - portable decisions of the Metal shim (see fa_metal_binding.h). No Metal in here.
#include "fa_metal_binding.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "fa_host_memory.h"    // fa_host::owned_region
#include "fa_kernel_args.h"    // FA_KERNEL_PARAMS_INDEX
#include "fa_tiles.h"          // FA_SIMD_WIDTH

namespace fametal {

static_assert(FA_KERNEL_PARAMS_INDEX < kKernelBufferIndices,
              "every buffer index a kernel declares (fa_kernel_args.h) gets a placeholder when unbound");

// setBytes:length:atIndex: is documented for single-use data of less than 4 KB (larger constants need a buffer).
static_assert(FA_PLAN_MAX_CONSTANT_BYTES < 4096, "a plan's constant block must fit setBytes' 4 KB");

// Metal's buffer argument table has 31 entries per stage (indices 0..30) on Apple GPUs.
constexpr int32_t kMaxBufferIndex = 30;

int fail(int status, char *err, size_t errlen, const char *fmt, ...) {
    if (err != nullptr && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

const char *buffer_name(int id) { return fa_buffer_message_name(id); }

const void *host_pointer(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, int id) {
    // the update's tensors exist only for a KV-cache plan
    return fa_buffer_host_pointer(id, p, kind == FA_PLAN_KVCACHE_APPEND ? u : nullptr);
}

int64_t element_bytes(const fa_params *p, int id) { return fa_buffer_element_bytes(id, p->dtype); }

bool buffer_written(fa_plan_kind kind, int id) { return fa_buffer_written(kind, id) != 0; }

std::string pipeline_key(const fa_launch &l) {
    std::string key(l.kernel, strnlen(l.kernel, sizeof l.kernel));
    for (int i = 0; i < l.desc.nspecs && i < FA_PLAN_MAX_SPECS; ++i) {
        const fa_spec_constant &c = l.desc.specs[i];
        if (c.index == FA_SPEC_TEMPLATE) continue;  // already in the name
        char part[64];
        std::snprintf(part, sizeof part, "|%d:%d:%08x", c.index, c.type, c.value.u);
        key += part;
    }
    return key;
}

bool page_region(const void *ptr, int64_t bytes, uint64_t page, void **base, int64_t *region_bytes,
                 int64_t *offset_in_region) {
    if (ptr == nullptr || bytes <= 0 || page == 0 || (page & (page - 1)) != 0) return false;
    const uintptr_t start = reinterpret_cast<uintptr_t>(ptr);
    const uintptr_t mask = static_cast<uintptr_t>(page - 1);
    const uintptr_t room = UINTPTR_MAX - start;  // start + bytes + mask must not wrap around
    if (room < mask || static_cast<uint64_t>(bytes) > room - mask) return false;
    const uintptr_t lo = start & ~mask;
    const uintptr_t hi = (start + static_cast<uintptr_t>(bytes) + mask) & ~mask;
    if (hi - lo > static_cast<uintptr_t>(INT64_MAX)) return false;
    *base = reinterpret_cast<void *>(lo);
    *region_bytes = static_cast<int64_t>(hi - lo);
    *offset_in_region = static_cast<int64_t>(start - lo);
    return true;
}

void fallback_to_copy(BufferBinding *b) {
    if (b->storage != Storage::Wrap) return;
    b->storage = Storage::Copy;
    b->base_offset = 0;
    b->wrap_base = nullptr;
    b->wrap_bytes = 0;
    b->copy_back = b->written;
}

int64_t metal_offset(const BufferBinding &b, int64_t byte_offset) { return b.base_offset + byte_offset; }

// Structural checks of one launch that do not depend on buffer storage.
static int check_launch_shape(int li, const fa_launch &l, char *err, size_t errlen) {
    if (memchr(l.kernel, '\0', sizeof l.kernel) == nullptr || l.kernel[0] == '\0')
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: launch %d of the plan has no valid kernel name", li);
    if (l.desc.nspecs < 0 || l.desc.nspecs > FA_PLAN_MAX_SPECS)
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: launch %d (%s) has %d specialisation constants (at most %d)",
                    li, l.kernel, l.desc.nspecs, FA_PLAN_MAX_SPECS);
    for (int i = 0; i < l.desc.nspecs; ++i) {
        const fa_spec_constant &c = l.desc.specs[i];
        // Metal specialises scalars only (MTLFunctionConstantValues); an element type selects a template instance
        if (c.index != FA_SPEC_TEMPLATE && (c.index < 0 || c.type <= FA_SPEC_DTYPE || c.type > FA_SPEC_FLOAT))
            return fail(FA_ERR_RUNTIME, err, errlen,
                        "metal: launch %d (%s) has function constant %.*s at index %d of type %d, which Metal cannot "
                        "take", li, l.kernel, FA_SPEC_NAME_LEN, c.name, c.index, c.type);
    }
    for (int d = 0; d < 3; ++d) {
        if (l.grid[d] == 0 || l.threads[d] == 0)
            return fail(FA_ERR_RUNTIME, err, errlen,
                        "metal: launch %d (%s) has an empty grid or threadgroup: grid (%u, %u, %u), threads (%u, %u, "
                        "%u)",
                        li, l.kernel, l.grid[0], l.grid[1], l.grid[2], l.threads[0], l.threads[1], l.threads[2]);
    }
    if (l.nbindings < 0 || l.nbindings > FA_PLAN_MAX_BINDINGS)
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: launch %d (%s) has %d bindings (at most %d)", li, l.kernel,
                    l.nbindings, FA_PLAN_MAX_BINDINGS);
    if (l.constants_size > FA_PLAN_MAX_CONSTANT_BYTES ||
        (l.constants_size > 0 && (l.constants_index < 0 || l.constants_index > kMaxBufferIndex)))
        return fail(FA_ERR_RUNTIME, err, errlen,
                    "metal: launch %d (%s) has a constant block of %u bytes at index %d (at most %d bytes, index "
                    "0..%d)",
                    li, l.kernel, l.constants_size, l.constants_index, FA_PLAN_MAX_CONSTANT_BYTES, kMaxBufferIndex);
    bool used[kMaxBufferIndex + 1] = {};
    if (l.constants_size > 0) used[l.constants_index] = true;
    for (int i = 0; i < l.nbindings; ++i) {
        const fa_binding &b = l.bindings[i];
        if (b.buffer < 0 || b.buffer >= FA_BUF_COUNT || b.index < 0 || b.index > kMaxBufferIndex)
            return fail(FA_ERR_RUNTIME, err, errlen, "metal: launch %d (%s) binds buffer id %d at index %d", li,
                        l.kernel, b.buffer, b.index);
        if (used[b.index])
            return fail(FA_ERR_RUNTIME, err, errlen, "metal: launch %d (%s) binds two arguments at buffer index %d",
                        li, l.kernel, b.index);
        used[b.index] = true;
    }
    return FA_OK;
}

// Which logical buffers the plan binds, checking every launch's shape on the way.
static int bound_buffers(const fa_plan *plan, bool bound[FA_BUF_COUNT], char *err, size_t errlen) {
    if (plan->nlaunches < 0 || plan->nlaunches > FA_PLAN_MAX_LAUNCHES)
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: the plan has %d launches (at most %d)", plan->nlaunches,
                    FA_PLAN_MAX_LAUNCHES);
    for (int li = 0; li < plan->nlaunches; ++li) {
        const fa_launch &l = plan->launches[li];
        const int st = check_launch_shape(li, l, err, errlen);
        if (st != FA_OK) return st;
        for (int i = 0; i < l.nbindings; ++i) bound[l.bindings[i].buffer] = true;
    }
    return FA_OK;
}

// A tensor handed over in an MTLBuffer that no launch binds would be silently ignored: an output never written,
// an input (ALiBi slopes, say) never applied. Refuse instead of returning a wrong answer.
static int check_unbound_device_tensors(fa_plan_kind kind, const fa_device_buffers *dev, const bool bound[],
                                        char *err, size_t errlen) {
    static_assert(FA_BUF_COUNT <= FA_DEVICE_BUFFER_SLOTS, "every logical buffer needs a device-buffer slot");
    for (int id = 0; dev != nullptr && id < FA_BUF_COUNT; ++id) {
        if (dev->handle[id] != nullptr && !bound[id])
            return fail(FA_ERR_RUNTIME, err, errlen,
                        "metal: %s was given as a Metal buffer but the dispatch plan does not use it, so it "
                        "would be silently %s",
                        buffer_name(id), buffer_written(kind, id) ? "left unwritten" : "ignored");
    }
    return FA_OK;
}

// The caller's own MTLBuffer, bound at its offset: aligned to the element the kernel reads and long enough.
static int device_storage(const fa_device_buffers *dev, int id, int64_t elem, BufferBinding &b, char *err,
                          size_t errlen) {
    if (dev->byte_offset[id] >= 0 && dev->byte_offset[id] % elem != 0)
        return fail(FA_ERR_VALUE, err, errlen,
                    "metal: %s starts at byte offset %lld of its MTLBuffer, not a multiple of its %lld-byte "
                    "element (Metal needs buffer offsets aligned to the type the kernel reads)",
                    buffer_name(id), static_cast<long long>(dev->byte_offset[id]), static_cast<long long>(elem));
    if (dev->byte_offset[id] < 0 || dev->byte_length[id] < b.bytes)
        return fail(FA_ERR_VALUE, err, errlen,
                    "metal: device buffer for %s is too small: %lld bytes from offset %lld, the call needs %lld",
                    buffer_name(id), static_cast<long long>(dev->byte_length[id]),
                    static_cast<long long>(dev->byte_offset[id]), static_cast<long long>(b.bytes));
    b.storage = Storage::Device;
    b.handle = dev->handle[id];
    b.base_offset = dev->byte_offset[id];
    return FA_OK;
}

// Host memory is COPIED unless this package allocated it itself, page-aligned from mmap (csrc/fa_host_memory.h):
// Apple forbids wrapping malloc'd memory, which every caller's array may be. Memory not aligned to its element (a
// NumPy view at an odd byte, say) is copied too, which realigns it: wrapped, it would give Metal a buffer offset the
// kernel cannot read its type at.
static void host_storage(int64_t elem, uint64_t page, int64_t wrap_min_bytes, BufferBinding &b) {
    int64_t offset = 0;
    const bool aligned = reinterpret_cast<uintptr_t>(b.host) % static_cast<uint64_t>(elem) == 0;
    if (aligned && b.bytes >= wrap_min_bytes && fa_host::owned_region(b.host, static_cast<size_t>(b.bytes)) &&
        page_region(b.host, b.bytes, page, &b.wrap_base, &b.wrap_bytes, &offset)) {
        b.storage = Storage::Wrap;
        b.base_offset = offset;
    } else {
        b.storage = Storage::Copy;
        b.copy_back = b.written;
    }
}

// Storage of one buffer the plan binds: plan scratch, the caller's MTLBuffer, or host memory.
static int buffer_storage(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, const fa_plan *plan,
                          int id, uint64_t page, int64_t wrap_min_bytes, BufferBinding &b, char *err, size_t errlen) {
    b.written = buffer_written(kind, id);
    const bool scratch = fa_buffer_is_scratch(id);
    b.bytes = scratch ? plan->scratch_bytes[id - FA_BUF_FIRST_SCRATCH] : plan->buffer_bytes[id];
    if (b.bytes <= 0)
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: the plan binds %s but gives %s %lld bytes", buffer_name(id),
                    scratch ? "it" : "its size as", static_cast<long long>(b.bytes));
    if (scratch) {
        b.storage = Storage::Scratch;
        return FA_OK;
    }
    const int64_t elem = element_bytes(p, id);
    const fa_device_buffers *dev = p->device_buffers;
    if (dev != nullptr && dev->handle[id] != nullptr) return device_storage(dev, id, elem, b, err, errlen);
    b.host = host_pointer(kind, p, u, id);
    if (b.host == nullptr)
        return fail(FA_ERR_VALUE, err, errlen, "metal: the plan reads %s but no memory was given for it",
                    buffer_name(id));
    host_storage(elem, page, wrap_min_bytes, b);
    return FA_OK;
}

// Every binding must start inside its buffer (Metal requires offset < length), at a whole element.
static int check_binding_offsets(const fa_params *p, const fa_plan *plan, const BindingPlan &bp, char *err,
                                 size_t errlen) {
    for (int li = 0; li < plan->nlaunches; ++li) {
        const fa_launch &l = plan->launches[li];
        for (int i = 0; i < l.nbindings; ++i) {
            const fa_binding &fb = l.bindings[i];
            const BufferBinding &b = bp.buf[fb.buffer];
            if (fb.byte_offset < 0 || fb.byte_offset >= b.bytes)
                return fail(FA_ERR_RUNTIME, err, errlen,
                            "metal: launch %d (%s) binds %s at byte %lld, outside its %lld bytes", li, l.kernel,
                            buffer_name(fb.buffer), static_cast<long long>(fb.byte_offset),
                            static_cast<long long>(b.bytes));
            if (fb.byte_offset % element_bytes(p, fb.buffer) != 0)
                return fail(FA_ERR_RUNTIME, err, errlen,
                            "metal: launch %d (%s) binds %s at byte %lld, not a multiple of its %lld-byte element",
                            li, l.kernel, buffer_name(fb.buffer), static_cast<long long>(fb.byte_offset),
                            static_cast<long long>(element_bytes(p, fb.buffer)));
        }
    }
    return FA_OK;
}

int plan_bindings(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, const fa_plan *plan,
                  uint64_t page, int64_t wrap_min_bytes, BindingPlan *out, char *err, size_t errlen) {
    *out = BindingPlan{};
    bool bound[FA_BUF_COUNT] = {};
    int st = bound_buffers(plan, bound, err, errlen);
    if (st == FA_OK) st = check_unbound_device_tensors(kind, p->device_buffers, bound, err, errlen);
    for (int id = 0; st == FA_OK && id < FA_BUF_COUNT; ++id)
        if (bound[id]) st = buffer_storage(kind, p, u, plan, id, page, wrap_min_bytes, out->buf[id], err, errlen);
    return st == FA_OK ? check_binding_offsets(p, plan, *out, err, errlen) : st;
}

int check_launch_limits(const fa_launch &l, const PipelineLimits &lim, char *err, size_t errlen) {
    // Every kernel is written for 32-lane SIMD groups (FA_SIMD_WIDTH: simdgroup_matrix lane layout, shuffles over
    // lane bits, simdgroup index = thread index / 32). All Apple GPUs report 32; anything else would be silently
    // wrong, so it is refused.
    if (lim.simd_width != FA_SIMD_WIDTH)
        return fail(FA_ERR_RUNTIME, err, errlen,
                    "metal: kernel %s is written for %d-lane SIMD groups; this pipeline's threadExecutionWidth is %llu",
                    l.kernel, FA_SIMD_WIDTH, static_cast<unsigned long long>(lim.simd_width));
    const uint64_t total = static_cast<uint64_t>(l.threads[0]) * l.threads[1] * l.threads[2];
    if (total > lim.max_total_threads || l.threads[0] > lim.max_threads[0] || l.threads[1] > lim.max_threads[1] ||
        l.threads[2] > lim.max_threads[2])
        return fail(FA_ERR_RUNTIME, err, errlen,
                    "metal: kernel %s wants threadgroups of (%u, %u, %u) = %llu threads; this pipeline allows at "
                    "most %llu threads per threadgroup and the device (%llu, %llu, %llu)",
                    l.kernel, l.threads[0], l.threads[1], l.threads[2], static_cast<unsigned long long>(total),
                    static_cast<unsigned long long>(lim.max_total_threads),
                    static_cast<unsigned long long>(lim.max_threads[0]),
                    static_cast<unsigned long long>(lim.max_threads[1]),
                    static_cast<unsigned long long>(lim.max_threads[2]));
    const uint64_t tg_mem = lim.static_threadgroup_memory > l.threadgroup_memory_bytes ? lim.static_threadgroup_memory
                                                                                        : l.threadgroup_memory_bytes;
    if (tg_mem > lim.max_threadgroup_memory)
        return fail(FA_ERR_RUNTIME, err, errlen,
                    "metal: kernel %s needs %llu bytes of threadgroup memory; the device allows %llu", l.kernel,
                    static_cast<unsigned long long>(tg_mem), static_cast<unsigned long long>(lim.max_threadgroup_memory));
    return FA_OK;
}

int encode_plan(const fa_plan &plan, const BindingPlan &bindings, Encoder &enc, char *err, size_t errlen) {
    bool ever_bound[kKernelBufferIndices] = {};  // binding state persists across the dispatches of one encoder
    for (int li = 0; li < plan.nlaunches; ++li) {
        const fa_launch &l = plan.launches[li];
        if (li > 0) enc.barrier();
        PipelineLimits limits{};
        int st = enc.pipeline(l, &limits, err, errlen);
        if (st != FA_OK) return st;
        st = check_launch_limits(l, limits, err, errlen);
        if (st != FA_OK) return st;
        for (int i = 0; i < l.nbindings; ++i) {
            const fa_binding &fb = l.bindings[i];
            const BufferBinding &b = bindings.buf[fb.buffer];
            if (b.storage == Storage::Unused)
                return fail(FA_ERR_RUNTIME, err, errlen, "metal: launch %d (%s) binds %s, which has no storage", li,
                            l.kernel, buffer_name(fb.buffer));
            enc.buffer(fb.buffer, metal_offset(b, fb.byte_offset), fb.index);
            if (fb.index < kKernelBufferIndices) ever_bound[fb.index] = true;
        }
        if (l.constants_size > 0) {
            enc.bytes(l.constants, l.constants_size, l.constants_index);
            if (l.constants_index < kKernelBufferIndices) ever_bound[l.constants_index] = true;
        }
        for (int32_t index = 0; index < kKernelBufferIndices; ++index) {
            if (!ever_bound[index]) enc.placeholder(index);
            ever_bound[index] = true;
        }
        enc.dispatch(l.grid, l.threads);
    }
    return FA_OK;
}

}  // namespace fametal
