// fa_metal_execute.mm - fa_metal_execute: carry out the dispatch plan the C ABI built (csrc/fa_abi.cpp, one per
// call): give every logical buffer an MTLBuffer, encode the whole plan into one command buffer, wait, check, copy
// results back. The decisions (storage of each buffer, offsets, copy-back, launch order and limits) are made by the
// portable code in fa_metal_binding.cpp; this file only carries them out with Metal. It answers the plan's one
// question about the device (fa_metal_launch_fits) but never builds or changes a plan.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <unistd.h>

#include <cstring>
#include <new>

#include "fa_backends.h"
#include "fa_metal_binding.h"
#include "fa_metal_context.h"

// FA_METAL_MRC_EXECUTION_TEST: tests/objc/test_objc_execute.py runs this file on Linux against a mock Metal on the GNU
// Objective-C runtime, which has no ARC; without ARC the test process merely leaks, which does not matter there.
#if !__has_feature(objc_arc) && !defined(FA_METAL_MRC_EXECUTION_TEST)
#error "objc/*.mm must be compiled with -fobjc-arc (objc/meson.build adds it)"
#endif

namespace fametal {
namespace {

// The Encoder of the portable walk, on a Metal compute command encoder.
class MetalEncoder : public Encoder {
public:
    MetalEncoder(Context &ctx, id<MTLComputeCommandEncoder> enc, __strong id<MTLBuffer> *buffers)
        : ctx_(ctx), enc_(enc), buffers_(buffers) {}

    int pipeline(const fa_launch &launch, PipelineLimits *limits, char *err, size_t errlen) override {
        int status = FA_OK;
        id<MTLComputePipelineState> state = fametal::pipeline(ctx_, launch, &status, err, errlen);
        if (state == nil) return status;
        [enc_ setComputePipelineState:state];
        const MTLSize most = ctx_.device.maxThreadsPerThreadgroup;
        limits->max_total_threads = state.maxTotalThreadsPerThreadgroup;
        limits->max_threads[0] = most.width;
        limits->max_threads[1] = most.height;
        limits->max_threads[2] = most.depth;
        limits->max_threadgroup_memory = ctx_.device.maxThreadgroupMemoryLength;
        limits->static_threadgroup_memory = state.staticThreadgroupMemoryLength;
        limits->simd_width = state.threadExecutionWidth;
        return FA_OK;
    }
    void buffer(int buffer_id, int64_t offset, int32_t index) override {
        [enc_ setBuffer:buffers_[buffer_id] offset:static_cast<NSUInteger>(offset) atIndex:static_cast<NSUInteger>(index)];
    }
    void bytes(const void *data, uint32_t size, int32_t index) override {
        [enc_ setBytes:data length:size atIndex:static_cast<NSUInteger>(index)];
    }
    void dispatch(const uint32_t grid[3], const uint32_t threads[3]) override {
        [enc_ dispatchThreadgroups:MTLSizeMake(grid[0], grid[1], grid[2])
             threadsPerThreadgroup:MTLSizeMake(threads[0], threads[1], threads[2])];
    }
    // The encoder is serial (dispatches run in order and the buffers are hazard-tracked); the barrier states the
    // plan's contract - each launch sees the previous launch's writes - explicitly.
    void barrier() override { [enc_ memoryBarrierWithScope:MTLBarrierScopeBuffers]; }
    // One 16-byte buffer per call, never read (the flags that would read its argument are clear). Not shared across
    // calls: a buffer bound by several command buffers makes Metal's hazard tracking order them.
    void placeholder(int32_t index) override {
        if (placeholder_ == nil)
            placeholder_ = [ctx_.device newBufferWithLength:16 options:MTLResourceStorageModeShared];
        [enc_ setBuffer:placeholder_ offset:0 atIndex:static_cast<NSUInteger>(index)];
    }

private:
    Context &ctx_;
    id<MTLComputeCommandEncoder> enc_;
    __strong id<MTLBuffer> *buffers_;
    id<MTLBuffer> placeholder_ = nil;
};

// Give buffer `id` an MTLBuffer according to its binding (which may turn from Wrap into Copy).
int make_buffer(Context &ctx, int buf_id, BufferBinding &b, __strong id<MTLBuffer> *out, char *err, size_t errlen) {
    *out = nil;
    id<MTLDevice> device = ctx.device;
    const uint64_t max_length = device.maxBufferLength;
    switch (b.storage) {
    case Storage::Unused:
        return FA_OK;
    case Storage::Device: {
        id<MTLBuffer> buf = (__bridge id<MTLBuffer>)b.handle;
        if (static_cast<uint64_t>(b.base_offset) + static_cast<uint64_t>(b.bytes) > buf.length)
            return fail(FA_ERR_VALUE, err, errlen,
                        "metal: the MTLBuffer given for %s holds %llu bytes; the call needs %lld from offset %lld",
                        buffer_name(buf_id), static_cast<unsigned long long>(buf.length), static_cast<long long>(b.bytes),
                        static_cast<long long>(b.base_offset));
        *out = buf;
        return FA_OK;
    }
    case Storage::Wrap:
        if (static_cast<uint64_t>(b.wrap_bytes) <= max_length) {
            *out = [device newBufferWithBytesNoCopy:b.wrap_base
                                             length:static_cast<NSUInteger>(b.wrap_bytes)
                                            options:MTLResourceStorageModeShared
                                        deallocator:nil];
            if (*out != nil) return FA_OK;
        }
        fallback_to_copy(&b);  // memory Metal will not wrap (not one VM region, read-only, ...): copy instead
        return make_buffer(ctx, buf_id, b, out, err, errlen);
    case Storage::Copy:
        if (static_cast<uint64_t>(b.bytes) <= max_length)
            *out = [device newBufferWithBytes:b.host length:static_cast<NSUInteger>(b.bytes)
                                      options:MTLResourceStorageModeShared];
        break;
    case Storage::Scratch:
        if (static_cast<uint64_t>(b.bytes) <= max_length)
            *out = [device newBufferWithLength:static_cast<NSUInteger>(b.bytes) options:MTLResourceStorageModePrivate];
        break;
    }
    if (*out == nil)
        return fail(FA_ERR_RUNTIME, err, errlen,
                    "metal: could not allocate a %lld-byte buffer for %s (device maximum %llu bytes)",
                    static_cast<long long>(b.bytes), buffer_name(buf_id), static_cast<unsigned long long>(max_length));
    return FA_OK;
}

// Whether a launch's threadgroup fits its pipeline: Metal lowers a pipeline's maxTotalThreadsPerThreadgroup when its
// kernel needs many registers, which the 4-row vector kernel at head dim 256 may. A pipeline that cannot be made is
// not decided here (encoding reports it).
bool launch_fits(const fa_launch &l) {
    Context &ctx = context();
    if (!ctx.supported) return true;
    int status = FA_OK;
    char ignored[256];
    id<MTLComputePipelineState> state = fametal::pipeline(ctx, l, &status, ignored, sizeof ignored);
    if (state == nil) return true;
    const uint64_t threads = static_cast<uint64_t>(l.threads[0]) * l.threads[1] * l.threads[2];
    return threads <= state.maxTotalThreadsPerThreadgroup;
}

int execute(const fa_plan &plan, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    Context &ctx = context();
    if (!ctx.supported) return fail(FA_ERR_UNAVAILABLE, err, errlen, "%s", ctx.reason.c_str());
    if (plan.kind < FA_PLAN_FORWARD || plan.kind > FA_PLAN_KVCACHE_APPEND)
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: the plan has an unknown kind %d", plan.kind);
    if (plan.nlaunches == 0) return FA_OK;  // nothing to compute (empty shapes): no command buffer at all
    const fa_plan_kind kind = static_cast<fa_plan_kind>(plan.kind);

    BindingPlan bindings;
    int status = plan_bindings(kind, p, u, &plan, static_cast<uint64_t>(getpagesize()), kWrapMinBytes, &bindings,
                               err, errlen);
    if (status != FA_OK) return status;

    __strong id<MTLBuffer> buffers[FA_BUF_COUNT] = {};  // released (ARC) when this function returns
    for (int buf_id = 0; buf_id < FA_BUF_COUNT; ++buf_id) {
        status = make_buffer(ctx, buf_id, bindings.buf[buf_id], &buffers[buf_id], err, errlen);
        if (status != FA_OK) return status;
    }

    id<MTLCommandBuffer> cmd = [ctx.queue commandBuffer];
    id<MTLComputeCommandEncoder> enc = cmd != nil ? [cmd computeCommandEncoderWithDispatchType:MTLDispatchTypeSerial] : nil;
    if (enc == nil) return fail(FA_ERR_RUNTIME, err, errlen, "metal: could not create a command buffer and encoder");
    cmd.label = @"flash_attn_cy";
    MetalEncoder encoder(ctx, enc, buffers);
    status = encode_plan(plan, bindings, encoder, err, errlen);
    [enc endEncoding];
    if (status != FA_OK) return status;  // never committed: nothing ran

    [cmd commit];
    [cmd waitUntilCompleted];
    if (cmd.status != MTLCommandBufferStatusCompleted) {
        NSError *error = cmd.error;
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: the command buffer failed (status %lu): %s",
                    static_cast<unsigned long>(cmd.status),
                    error != nil && error.localizedDescription.UTF8String != nullptr
                        ? error.localizedDescription.UTF8String
                        : "no error description");
    }

    for (int buf_id = 0; buf_id < FA_BUF_COUNT; ++buf_id) {
        const BufferBinding &b = bindings.buf[buf_id];
        if (b.storage == Storage::Copy && b.copy_back)
            std::memcpy(const_cast<void *>(b.host), buffers[buf_id].contents, static_cast<size_t>(b.bytes));
    }
    return FA_OK;
}

}  // namespace
}  // namespace fametal

int fa_metal_execute(const fa_plan *plan, const fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen) {
    // Nothing may escape the C ABI: C++ exceptions and (in the Apple runtime, where they share one mechanism)
    // Objective-C exceptions become error codes.
    try {
        @autoreleasepool {
            return fametal::execute(*plan, p, u, err, errlen);
        }
    } catch (const std::bad_alloc &) {
        return fametal::fail(FA_ERR_RUNTIME, err, errlen, "metal: out of host memory");
    } catch (...) {
        return fametal::fail(FA_ERR_RUNTIME, err, errlen, "metal: unexpected exception while running the plan");
    }
}

int fa_metal_launch_fits(const fa_launch *launch) {
    // Asked while the C ABI builds the plan; "cannot tell" is "fits" (the encoding of the launch then says why not).
    try {
        @autoreleasepool {
            return fametal::launch_fits(*launch) ? 1 : 0;
        }
    } catch (...) {
        return 1;
    }
}
