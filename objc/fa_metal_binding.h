// fa_metal_binding.h - the portable half of the Metal shim: every decision that does not need Metal.
//
// The Objective-C++ files in this folder only create Metal objects and call Metal; what to bind, where, at which
// byte offset, what to copy in and out, and the order of the encoder calls are decided here, in plain C++ that the
// Linux test suite compiles and runs (tests/objc/test_objc_binding.py). The shim follows the dispatch plan
// (csrc/plan/fa_plan.h) exactly, the same plan the simulator executes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fa_abi.h"
#include "fa_kernel_args.h"
#include "plan/fa_plan.h"

namespace fametal {

// Host page size on Apple Silicon macOS. newBufferWithBytesNoCopy needs a page-aligned pointer and a length that
// is a whole number of pages; the shim passes the real value (getpagesize()) at run time.
constexpr uint64_t kApplePageBytes = 16384;

// Host regions smaller than this are copied rather than wrapped: copying a few KiB costs less than wiring pages.
constexpr int64_t kWrapMinBytes = 16384;

// How one logical buffer (fa_buffer_id) reaches the GPU for one call.
enum class Storage {
    Unused,   // no launch of the plan binds it
    Device,   // caller's own MTLBuffer (fa_device_buffers): bound directly at its byte offset
    Wrap,     // host memory wrapped without a copy: pages [wrap_base, wrap_base + wrap_bytes) of unified memory, only
              // inside a region the package allocated itself with mmap (csrc/fa_host_memory.h), never a caller's
    Copy,     // host memory copied into a new shared buffer before the call (and back after it, if written): the
              // caller's arrays, which may come from malloc (Apple forbids wrapping those)
    Scratch   // plan-owned temporary, GPU only
};

struct BufferBinding {
    Storage storage = Storage::Unused;
    const void *host = nullptr;  // Wrap/Copy: the caller's pointer (start of the logical buffer)
    int64_t bytes = 0;           // bytes the plan may touch from the start of the logical buffer
    void *handle = nullptr;      // Device: the caller's id<MTLBuffer> (bridged)
    int64_t base_offset = 0;     // byte offset of the logical buffer's start inside the MTLBuffer that holds it
    void *wrap_base = nullptr;   // Wrap: page-aligned start of the wrapped region
    int64_t wrap_bytes = 0;      // Wrap: whole pages
    bool written = false;        // a launch of this kind may write it
    bool copy_back = false;      // Copy and written: copy the buffer's contents back to `host` after completion
};

struct BindingPlan {
    BufferBinding buf[FA_BUF_COUNT];
};

// The facts of a logical buffer, read from the buffer table (csrc/plan/fa_buffers.h):
// Short stable name ("q", "alibi_slopes", "scratch0", ...) for messages; "?" when out of range.
const char *buffer_name(int buffer_id);

// The host pointer fa_params / fa_kvcache_update give for a logical buffer (NULL for scratch or absent tensors; the
// update only for a KV-cache plan).
const void *host_pointer(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, int buffer_id);

// Whether a plan of this kind may write the buffer (outputs; in-place cache and rotary updates; scratch).
bool buffer_written(fa_plan_kind kind, int buffer_id);

// Bytes of one element of a logical buffer as its kernels read it: the call's dtype for the tensors, 4 for the fp32
// and int32 side buffers. Metal requires setBuffer:offset:atIndex: offsets of device buffers to be aligned to the
// type the kernel reads (Apple's documentation of that method), so a binding must start at a multiple of it.
int64_t element_bytes(const fa_params *p, int buffer_id);

// The key of a launch's compute pipeline: the kernel name, plus index, type and value of each Metal function
// constant of its descriptor (two launches of one function with other function constants need other pipelines).
std::string pipeline_key(const fa_launch &launch);

// Page arithmetic for newBufferWithBytesNoCopy: the smallest page-aligned region holding [ptr, ptr + bytes).
// page must be a power of two. Returns false (nothing written) when the arithmetic would overflow.
bool page_region(const void *ptr, int64_t bytes, uint64_t page, void **base, int64_t *region_bytes,
                 int64_t *offset_in_region);

// Decide the storage of every buffer the plan binds. Fails (FA_ERR_VALUE / FA_ERR_RUNTIME with a message naming
// the buffer) when the plan binds a buffer that has no memory, a device buffer is too short for the plan, or a
// launch is malformed (grid/threads of zero, binding past the buffer, constants larger than the block).
int plan_bindings(fa_plan_kind kind, const fa_params *p, const fa_kvcache_update *u, const fa_plan *plan,
                  uint64_t page, int64_t wrap_min_bytes, BindingPlan *out, char *err, size_t errlen);

// When newBufferWithBytesNoCopy refuses a region (memory outside one VM region, read-only pages, ...) the shim
// falls back to copying: this turns a Wrap binding into a Copy binding with the same bytes.
void fallback_to_copy(BufferBinding *b);

// The offset to pass to setBuffer:offset:atIndex: for a plan binding at `byte_offset` into logical buffer `b`.
int64_t metal_offset(const BufferBinding &b, int64_t byte_offset);

// Limits of one compiled pipeline and its device, as Metal reports them.
struct PipelineLimits {
    uint64_t max_total_threads;        // pipeline.maxTotalThreadsPerThreadgroup
    uint64_t max_threads[3];           // device.maxThreadsPerThreadgroup (width, height, depth)
    uint64_t max_threadgroup_memory;   // device.maxThreadgroupMemoryLength
    uint64_t static_threadgroup_memory;// pipeline.staticThreadgroupMemoryLength
    uint64_t simd_width = 32;          // pipeline.threadExecutionWidth: the kernels' SIMD groups are 32 lanes
};

// FA_OK or FA_ERR_RUNTIME with the launch's sizes and the limits in the message.
int check_launch_limits(const fa_launch &launch, const PipelineLimits &limits, char *err, size_t errlen);

// What the walk asks of the encoder; the shim implements it with a Metal compute encoder, the tests record calls.
class Encoder {
public:
    virtual ~Encoder() = default;
    // Select the compute pipeline of a launch's kernel (launch.kernel, specialised with the function constants of
    // launch.desc); fills limits. Non-zero return = fa_status (message in err).
    virtual int pipeline(const fa_launch &launch, PipelineLimits *limits, char *err, size_t errlen) = 0;
    virtual void buffer(int buffer_id, int64_t offset, int32_t index) = 0;
    virtual void bytes(const void *data, uint32_t size, int32_t index) = 0;
    virtual void dispatch(const uint32_t grid[3], const uint32_t threads[3]) = 0;
    // Make the writes of everything dispatched so far visible to what follows (between launches).
    virtual void barrier() = 0;
    // Bind a small placeholder buffer at a buffer index no launch of this encoder has bound yet. The kernels declare
    // optional buffers (ALiBi slopes, cu_seqlens, ... behind a clear flag) that a plan leaves unbound; Metal expects
    // every buffer argument of the function bound, and its API validation layer aborts the process otherwise.
    virtual void placeholder(int32_t index) = 0;
};

// Buffer indices 0 .. kKernelBufferIndices - 1 may be declared by the kernels (kernels/fa_kernel_args.h; the constant
// block at FA_KERNEL_PARAMS_INDEX is the last).
constexpr int32_t kKernelBufferIndices = FA_KERNEL_ARG_SLOTS;

// Encode every launch of the plan in order: pipeline, limit check, buffers at their Metal offsets, constants,
// dispatch, and a barrier between consecutive launches. Stops at the first error.
int encode_plan(const fa_plan &plan, const BindingPlan &bindings, Encoder &enc, char *err, size_t errlen);

// printf into err (always NUL-terminated, never overflows); returns `status`.
int fail(int status, char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

}  // namespace fametal
