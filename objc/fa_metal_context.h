// fa_metal_context.h - the process-wide Metal state of the shim (Objective-C++ only).
//
// One context per process, created at first use under std::call_once: the system default device (refused unless
// it supports MTLGPUFamilyApple7 and MTLGPUFamilyMetal3, i.e. Apple M1 or newer, on macOS 14 or newer for MSL 3.1,
// so that a paravirtual or older device or OS gives a clear error instead of wrong results), a command queue, the
// kernel library (loaded at first kernel use) and a cache of compute pipelines keyed by kernel name and function
// constants, filled under a mutex.
#pragma once

#import <Metal/Metal.h>

#include <cstddef>
#include <string>

#include "plan/fa_plan.h"

namespace fametal {

struct Context {
    id<MTLDevice> device = nil;       // nil when the machine has no Metal device
    id<MTLCommandQueue> queue = nil;  // nil unless `supported`
    bool supported = false;           // device present and able to run our kernels
    std::string reason;               // why not, when !supported
};

// The process-wide context (never NULL; check `supported`).
Context &context();

// The compute pipeline of a launch's kernel (its name, specialised with the Metal function constants of its
// descriptor, MTLFunctionConstantValues), created on first use (which loads the kernel library on the very first
// use) and cached by pipeline_key(). nil on failure, with an fa_status in *status and the reason (including Metal's
// error text) in err.
id<MTLComputePipelineState> pipeline(Context &ctx, const fa_launch &launch, int *status, char *err, size_t errlen);

// Which kernel library this process uses or will use, for fa_metal_describe.
std::string library_description();

// Why no kernel library is usable ("" when one is found or loaded), for fa_metal_available.
std::string library_problem();

}  // namespace fametal
