// fa_metal_context.mm - device, queue, kernel library and pipeline cache of the Metal shim; the availability,
// description and user-source entry points. Execution lives in fa_metal_execute.mm, every decision that needs no
// Metal in fa_metal_binding.cpp.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "fa_backends.h"
#include "fa_metal_binding.h"
#include "fa_metal_context.h"
#include "fa_metal_kernel_source.h"
#include "fa_metal_shim.h"

// FA_METAL_MRC_EXECUTION_TEST: tests/objc/test_objc_execute.py runs this file on Linux against a mock Metal on the GNU
// Objective-C runtime, which has no ARC; without ARC the test process merely leaks, which does not matter there.
#if !__has_feature(objc_arc) && !defined(FA_METAL_MRC_EXECUTION_TEST)
#error "objc/*.mm must be compiled with -fobjc-arc (objc/meson.build adds it)"
#endif

namespace fametal {
namespace {

std::string to_string(NSString *s) {
    const char *utf8 = s != nil ? s.UTF8String : nullptr;
    return utf8 != nullptr ? std::string(utf8) : std::string();
}

std::string describe_error(NSError *e) { return e != nil ? to_string(e.localizedDescription) : "no error reported"; }

bool readable(const std::string &path) { return !path.empty() && access(path.c_str(), R_OK) == 0; }

// The installed library sits next to the extension module that contains this code.
std::string metallib_next_to_module() {
    Dl_info info;
    if (dladdr(reinterpret_cast<const void *>(&fa_metal_available), &info) == 0 || info.dli_fname == nullptr)
        return std::string();
    std::string path(info.dli_fname);
    const size_t slash = path.rfind('/');
    return (slash == std::string::npos ? std::string(".") : path.substr(0, slash)) + "/" FA_METALLIB_NAME;
}

// Where the kernel library comes from, in order: $FLASH_ATTN_CY_METALLIB, the metallib installed next to the
// extension, the metallib in the build tree (editable installs), the embedded source. Empty when none exists.
struct LibrarySource {
    std::string metallib;  // path, or empty for embedded source / nothing
    bool embedded = false;
    std::string problem;   // set when nothing usable exists
};

LibrarySource find_library_source() {
    LibrarySource src;
    const char *env = std::getenv("FLASH_ATTN_CY_METALLIB");
    if (env != nullptr && env[0] != '\0') {
        src.metallib = env;
        if (!readable(src.metallib)) src.problem = "FLASH_ATTN_CY_METALLIB=" + src.metallib + " is not a readable file";
        return src;
    }
    for (const std::string &candidate : {metallib_next_to_module(), std::string(fa_metallib_build_path)}) {
        if (readable(candidate)) {
            src.metallib = candidate;
            return src;
        }
    }
    if (fa_embedded_kernel_file_count > 0) {
        src.embedded = true;
        return src;
    }
    src.problem = "no Metal kernel library: " FA_METALLIB_NAME " is not installed next to the extension module (" +
                  metallib_next_to_module() + ") and this build embedded no kernel source; reinstall the package";
    return src;
}

// Kernel libraries and pipelines, filled lazily under one mutex (compiling is rare and the callers need it anyway).
struct KernelCache {
    std::mutex mu;
    bool loaded = false;
    int load_status = FA_OK;
    std::string load_error;
    std::string description;
    std::vector<id<MTLLibrary>> libraries;
    std::unordered_map<std::string, id<MTLComputePipelineState>> pipelines;
};

KernelCache &cache() {
    static KernelCache *c = new KernelCache();  // never destroyed: pipelines may be used until process exit
    return *c;
}

// Options for every run-time compile (the embedded kernels and compile_shaders): the language version is pinned to
// the offline build's (metal_std = '3.1' in objc/meson.build; bfloat needs MSL 3.1), because the default ("the newest
// this OS supports") would make the same source mean different things on different macOS releases. Fast math stays
// at its default (on), as in the offline build; the kernels never compute an inf or NaN (kernels/README.md). nil
// before macOS 14, which has no MSL 3.1 (context() refuses such systems anyway).
MTLCompileOptions *compile_options() {
    if (@available(macOS 14.0, *)) {
        MTLCompileOptions *options = [MTLCompileOptions new];
        options.languageVersion = MTLLanguageVersion3_1;
        return options;
    }
    return nil;
}

// Sorted, newline-separated function names of a library into names[nameslen].
int write_function_names(id<MTLLibrary> lib, char *names, size_t nameslen, char *err, size_t errlen) {
    NSArray<NSString *> *fnames = lib.functionNames;
    std::vector<std::string> sorted;
    for (NSUInteger i = 0; i < fnames.count; ++i) sorted.push_back(to_string([fnames objectAtIndex:i]));
    std::sort(sorted.begin(), sorted.end());
    std::string joined;
    for (const std::string &n : sorted) joined += (joined.empty() ? "" : "\n") + n;
    if (joined.size() + 1 > nameslen)
        return fail(FA_ERR_VALUE, err, errlen, "%zu function names do not fit in %zu bytes", sorted.size(), nameslen);
    std::memcpy(names, joined.c_str(), joined.size() + 1);
    return FA_OK;
}

// Load the library (caller holds cache().mu). The outcome, good or bad, is kept for the process.
void load_libraries(Context &ctx, KernelCache &kc) {
    kc.loaded = true;
    const LibrarySource src = find_library_source();
    if (!src.problem.empty()) {
        kc.load_status = FA_ERR_UNAVAILABLE;
        kc.load_error = src.problem;
        return;
    }
    if (!src.metallib.empty()) {
        NSError *error = nil;
        NSString *path = [NSString stringWithUTF8String:src.metallib.c_str()];
        id<MTLLibrary> lib =
            path != nil ? [ctx.device newLibraryWithURL:[NSURL fileURLWithPath:path] error:&error] : nil;
        if (lib == nil) {
            kc.load_status = FA_ERR_RUNTIME;
            kc.load_error = "metal: cannot load the kernel library " + src.metallib + ": " + describe_error(error);
            return;
        }
        kc.libraries.push_back(lib);
        kc.description = "prebuilt metallib " + src.metallib;
        return;
    }
    // Embedded source: one library per kernel file, as the build would have compiled one .air per file, with the
    // offline build's language version (compile_options).
    MTLCompileOptions *options = compile_options();
    if (options == nil) {
        kc.load_status = FA_ERR_UNAVAILABLE;
        kc.load_error = "metal: the kernels need Metal Shading Language 3.1 (macOS 14 or newer)";
        return;
    }
    for (int i = 0; i < fa_embedded_kernel_file_count; ++i) {
        const fa_embedded_kernel_file &file = fa_embedded_kernel_files[i];
        NSString *text = [NSString stringWithUTF8String:file.source];
        NSError *error = nil;
        id<MTLLibrary> lib = text != nil ? [ctx.device newLibraryWithSource:text options:options error:&error] : nil;
        if (lib == nil) {
            kc.libraries.clear();
            kc.load_status = FA_ERR_RUNTIME;
            kc.load_error = std::string("metal: compiling the embedded kernel source ") + file.name +
                            " failed: " + describe_error(error);
            return;
        }
        kc.libraries.push_back(lib);
    }
    kc.description = "embedded kernel source (" + std::to_string(fa_embedded_kernel_file_count) +
                     " files) compiled at first use";
}

// The newest Apple GPU family the device supports: Apple7 M1, Apple8 M2, Apple9 M3/M4, Apple10 M5 (Apple's Metal
// feature set tables). MTLGPUFamilyApple10 (1010) is declared only by the macOS 26 SDK, so it is named by value here to
// keep older SDKs building; a macOS that does not know the family answers NO. Only called on a supported device,
// which is at least Apple7.
const char *apple_family(id<MTLDevice> device) {
    if ([device supportsFamily:static_cast<MTLGPUFamily>(1010)]) return "Apple10";
    if ([device supportsFamily:MTLGPUFamilyApple9]) return "Apple9";
    if ([device supportsFamily:MTLGPUFamilyApple8]) return "Apple8";
    return "Apple7";
}

// Why this device cannot run our kernels ("" when it can).
std::string unsupported_reason(id<MTLDevice> device, const std::string &name) {
    // The kernels use bfloat, which needs Metal Shading Language 3.1 (macOS 14); the metallib is built for it
    // (objc/meson.build: -std=metal3.1 -mmacosx-version-min=14.0) and would not load on an older macOS. The checks
    // below sit inside the @available block so that the compiler's availability check sees them guarded
    // (MTLGPUFamilyMetal3 is macOS 13+), whatever deployment target the build uses.
    if (@available(macOS 14.0, *)) {
        // simdgroup_matrix and our tile sizes need Apple7 (M1) and Metal 3. GitHub's hosted macOS runners expose an
        // "Apple Paravirtual device" that reports neither and returns zeros from compute kernels, so refusing here
        // is what keeps a wrong answer from ever reaching the caller.
        if (![device supportsFamily:MTLGPUFamilyApple7] || ![device supportsFamily:MTLGPUFamilyMetal3])
            return "Metal device '" + name +
                   "' is not supported: flash_attn_cy's kernels need MTLGPUFamilyApple7 and MTLGPUFamilyMetal3 "
                   "(Apple M1 or newer); paravirtual devices in virtual machines and CI runners do not qualify. Use "
                   "backend='cpu'";
        if (!device.hasUnifiedMemory)
            return "Metal device '" + name + "' has no unified memory, which the shim relies on";
        return std::string();
    }
    return "Metal device '" + name + "' is on a macOS older than 14: flash_attn_cy's kernels need Metal Shading "
           "Language 3.1 (bfloat), which macOS 14 introduced. Use backend='cpu'";
}

}  // namespace

Context &context() {
    static Context ctx;
    static std::once_flag once;
    std::call_once(once, [] {
        @autoreleasepool {
            ctx.device = MTLCreateSystemDefaultDevice();
            if (ctx.device == nil) {
                ctx.reason = "no Metal device: MTLCreateSystemDefaultDevice() returned nil (a Mac without Metal "
                             "support, or a virtual machine without GPU access); use backend='cpu'";
                return;
            }
            const std::string name = to_string(ctx.device.name);
            ctx.reason = unsupported_reason(ctx.device, name);
            if (!ctx.reason.empty()) return;
            ctx.queue = [ctx.device newCommandQueue];
            if (ctx.queue == nil) {
                ctx.reason = "Metal device '" + name + "' could not create a command queue";
                return;
            }
            ctx.queue.label = @"flash_attn_cy";
            ctx.supported = true;
        }
    });
    return ctx;
}

namespace {

MTLDataType metal_data_type(int32_t type) {
    switch (type) {
    case FA_SPEC_INT: return MTLDataTypeInt;
    case FA_SPEC_UINT: return MTLDataTypeUInt;
    case FA_SPEC_BOOL: return MTLDataTypeBool;
    default: return MTLDataTypeFloat;  // FA_SPEC_FLOAT (fa_metal_binding.cpp refuses other types)
    }
}

// The Metal function constants of a kernel descriptor, nil when it has none (today's kernels specialise by name).
MTLFunctionConstantValues *function_constants(const fa_kernel_desc &desc) {
    if (fa_kernel_function_constant_count(&desc) == 0) return nil;
    MTLFunctionConstantValues *values = [MTLFunctionConstantValues new];
    for (int i = 0; i < desc.nspecs && i < FA_PLAN_MAX_SPECS; ++i) {
        const fa_spec_constant &c = desc.specs[i];
        if (c.index == FA_SPEC_TEMPLATE) continue;
        const bool flag = c.value.i != 0;  // a bool function constant is one byte
        const void *value = c.type == FA_SPEC_BOOL ? static_cast<const void *>(&flag)
                                                   : static_cast<const void *>(&c.value);
        [values setConstantValue:value type:metal_data_type(c.type) atIndex:static_cast<NSUInteger>(c.index)];
    }
    return values;
}

// The kernel's function from the first library that has it, specialised with the launch's function constants.
id<MTLFunction> find_function(const KernelCache &kc, const fa_launch &launch, NSError **error) {
    NSString *name = [NSString stringWithUTF8String:launch.kernel];
    if (name == nil) return nil;
    MTLFunctionConstantValues *values = function_constants(launch.desc);
    for (id<MTLLibrary> lib : kc.libraries) {
        id<MTLFunction> function = values == nil ? [lib newFunctionWithName:name]
                                                 : [lib newFunctionWithName:name constantValues:values error:error];
        if (function != nil) return function;
    }
    return nil;
}

}  // namespace

id<MTLComputePipelineState> pipeline(Context &ctx, const fa_launch &launch, int *status, char *err, size_t errlen) {
    KernelCache &kc = cache();
    std::lock_guard<std::mutex> lock(kc.mu);
    if (!kc.loaded) load_libraries(ctx, kc);
    if (kc.load_status != FA_OK) {
        *status = fail(kc.load_status, err, errlen, "%s", kc.load_error.c_str());
        return nil;
    }
    const std::string key = pipeline_key(launch);  // the name, plus the function constants if any
    auto hit = kc.pipelines.find(key);
    if (hit != kc.pipelines.end()) return hit->second;

    NSError *error = nil;
    id<MTLFunction> function = find_function(kc, launch, &error);
    if (function == nil) {
        *status = fail(FA_ERR_RUNTIME, err, errlen, "metal: kernel %s is not in the kernel library (%s)%s%s",
                       launch.kernel, kc.description.c_str(), error != nil ? ": " : "",
                       error != nil ? describe_error(error).c_str() : "");
        return nil;
    }
    id<MTLComputePipelineState> state = [ctx.device newComputePipelineStateWithFunction:function error:&error];
    if (state == nil) {
        *status = fail(FA_ERR_RUNTIME, err, errlen, "metal: creating the pipeline of %s failed: %s", launch.kernel,
                       describe_error(error).c_str());
        return nil;
    }
    kc.pipelines.emplace(key, state);
    return state;
}

std::string library_problem() {
    KernelCache &kc = cache();
    std::lock_guard<std::mutex> lock(kc.mu);
    if (kc.loaded) return kc.load_status == FA_OK ? std::string() : kc.load_error;
    return find_library_source().problem;
}

std::string library_description() {
    KernelCache &kc = cache();
    std::lock_guard<std::mutex> lock(kc.mu);
    if (kc.loaded) return kc.load_status == FA_OK ? kc.description : "unusable: " + kc.load_error;
    const LibrarySource src = find_library_source();
    if (!src.problem.empty()) return "unusable: " + src.problem;
    if (src.embedded)
        return "embedded kernel source (" + std::to_string(fa_embedded_kernel_file_count) +
               " files), compiled at first use (not yet compiled)";
    return "prebuilt metallib " + src.metallib + " (not yet loaded)";
}

}  // namespace fametal

using fametal::fail;

int fa_metal_available(char *why, size_t whylen) {
    try {
        fametal::Context &ctx = fametal::context();
        if (!ctx.supported) {
            fail(0, why, whylen, "%s", ctx.reason.c_str());
            return 0;
        }
        // Without a kernel library the backend cannot run anything: say so here, so that backend="auto" picks
        // another one. (Whether the library loads or compiles is only known at first use.)
        const std::string problem = fametal::library_problem();
        if (!problem.empty()) {
            fail(0, why, whylen, "%s", problem.c_str());
            return 0;
        }
        if (why != nullptr && whylen > 0) why[0] = '\0';
        return 1;
    } catch (...) {
        fail(0, why, whylen, "metal: unexpected exception while probing the Metal device");
        return 0;
    }
}

int fa_metal_describe(char *out, size_t outlen) {
    try {
        @autoreleasepool {
            fametal::Context &ctx = fametal::context();
            if (!ctx.supported) return fail(FA_OK, out, outlen, "unavailable: %s", ctx.reason.c_str());
            const std::string device = fametal::to_string(ctx.device.name);
            const char *family = fametal::apple_family(ctx.device);
            return fail(FA_OK, out, outlen, "%s (MTLGPUFamily%s, Metal3); kernel library: %s", device.c_str(), family,
                        fametal::library_description().c_str());
        }
    } catch (...) {
        return fail(FA_ERR_RUNTIME, out, outlen, "metal: unexpected exception while describing the device");
    }
}

// Compiling needs a Metal device but not a supported one: a CI runner's paravirtual device can still prove that a
// source compiles with Apple's run-time compiler, even though we never execute kernels on it.
int fa_metal_compile_source(const char *source, char *names, size_t nameslen, char *err, size_t errlen) {
    if (names != nullptr && nameslen > 0) names[0] = '\0';
    if (source == nullptr) return fail(FA_ERR_VALUE, err, errlen, "compile_shaders: source is NULL");
    try {
        @autoreleasepool {
            fametal::Context &ctx = fametal::context();
            if (ctx.device == nil) return fail(FA_ERR_UNAVAILABLE, err, errlen, "%s", ctx.reason.c_str());
            NSString *text = [NSString stringWithUTF8String:source];
            if (text == nil) return fail(FA_ERR_VALUE, err, errlen, "compile_shaders: source is not valid UTF-8");
            MTLCompileOptions *options = fametal::compile_options();
            if (options == nil)
                return fail(FA_ERR_UNAVAILABLE, err, errlen, "compile_shaders: needs Metal Shading Language 3.1 "
                            "(macOS 14 or newer)");
            NSError *error = nil;
            id<MTLLibrary> lib = [ctx.device newLibraryWithSource:text options:options error:&error];
            if (lib == nil)
                return fail(FA_ERR_VALUE, err, errlen, "Metal compile error: %s",
                            fametal::describe_error(error).c_str());
            return fametal::write_function_names(lib, names, nameslen, err, errlen);
        }
    } catch (...) {
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: unexpected exception while compiling the source");
    }
}

int fa_metal_library_functions(char *path, size_t pathlen, char *names, size_t nameslen, char *err, size_t errlen) {
    if (path != nullptr && pathlen > 0) path[0] = '\0';
    if (names != nullptr && nameslen > 0) names[0] = '\0';
    if (path == nullptr || names == nullptr) return fail(FA_ERR_VALUE, err, errlen, "library_functions: NULL buffer");
    try {
        @autoreleasepool {
            fametal::Context &ctx = fametal::context();
            if (ctx.device == nil) return fail(FA_ERR_UNAVAILABLE, err, errlen, "%s", ctx.reason.c_str());
            const fametal::LibrarySource src = fametal::find_library_source();
            if (!src.problem.empty()) return fail(FA_ERR_UNAVAILABLE, err, errlen, "%s", src.problem.c_str());
            if (src.metallib.empty())
                return fail(FA_ERR_UNAVAILABLE, err, errlen, "this build has no " FA_METALLIB_NAME ": it embeds the "
                            "kernel source, compiled at first use");
            if (src.metallib.size() + 1 > pathlen)
                return fail(FA_ERR_VALUE, err, errlen, "library_functions: path does not fit in %zu bytes", pathlen);
            std::memcpy(path, src.metallib.c_str(), src.metallib.size() + 1);
            NSError *error = nil;
            NSString *p = [NSString stringWithUTF8String:src.metallib.c_str()];
            id<MTLLibrary> lib =
                p != nil ? [ctx.device newLibraryWithURL:[NSURL fileURLWithPath:p] error:&error] : nil;
            if (lib == nil)
                return fail(FA_ERR_RUNTIME, err, errlen, "metal: cannot load the kernel library %s: %s",
                            src.metallib.c_str(), fametal::describe_error(error).c_str());
            return fametal::write_function_names(lib, names, nameslen, err, errlen);
        }
    } catch (...) {
        return fail(FA_ERR_RUNTIME, err, errlen, "metal: unexpected exception while loading the kernel library");
    }
}
