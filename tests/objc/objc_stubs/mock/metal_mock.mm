// metal_mock.mm - a mock of the Foundation/Metal subset the shim uses, on the GNU Objective-C runtime (manual
// reference counting; objects are never freed, which is fine for a short test process). See metal_mock.h.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>

#include "metal_mock.h"

// From the GNU runtime's <objc/runtime.h>, which cannot be included next to the stubs (it defines BOOL itself).
extern "C" id class_createInstance(Class class_, size_t extraBytes);
extern "C" size_t class_getInstanceSize(Class class_);
extern "C" Class objc_getClass(const char *name);

namespace mock {
Knobs &knobs() {
    static Knobs k;
    return k;
}
std::vector<std::string> &journal() {
    static std::vector<std::string> j;
    return j;
}
std::vector<DispatchRecord> &dispatch_log() {
    static std::vector<DispatchRecord> d;
    return d;
}
bool journal_has(const std::string &prefix) {
    for (const std::string &line : journal())
        if (line.compare(0, prefix.size(), prefix) == 0) return true;
    return false;
}
static std::map<std::string, Kernel> &kernels() {
    static std::map<std::string, Kernel> k;
    return k;
}
void register_kernel(const std::string &name, Kernel k) { kernels()[name] = std::move(k); }
static FallbackRunner &fallback() {
    static FallbackRunner f;
    return f;
}
void set_fallback(FallbackRunner runner) { fallback() = std::move(runner); }
static void note(const std::string &s) { journal().push_back(s); }
}  // namespace mock

extern "C" MTLSize MTLSizeMake(NSUInteger w, NSUInteger h, NSUInteger d) {
    MTLSize s;
    s.width = w;
    s.height = h;
    s.depth = d;
    return s;
}

// ---------------------------------------------------------------- Foundation
@implementation NSObject
+ (instancetype)alloc { return class_createInstance(self, 0); }
+ (instancetype)new { return [[self alloc] init]; }
- (instancetype)init { return self; }
@end

// @autoreleasepool on the GNU runtime without ARC: [[NSAutoreleasePool alloc] init] ... [pool drain].
@interface NSAutoreleasePool : NSObject
- (void)drain;
- (void)release;
@end
@implementation NSAutoreleasePool
- (void)drain {}
- (void)release {}
@end

@interface FAMockString : NSString {
@public
    char *text;
}
@end
@implementation FAMockString
- (const char *)UTF8String { return text; }
- (NSUInteger)length { return std::strlen(text); }
@end

@implementation NSString
+ (instancetype)stringWithUTF8String:(const char *)s {
    FAMockString *m = [FAMockString alloc];
    m->text = strdup(s);
    return (id)m;
}
- (const char *)UTF8String { return nullptr; }
- (NSUInteger)length { return 0; }
- (id)copyWithZone:(void *)zone { (void)zone; return self; }
@end

// Class of @"..." literals on the GNU runtime.
@interface NXConstantString : NSString {
    char *c_string;
    unsigned int len;
}
@end
@implementation NXConstantString
- (const char *)UTF8String { return c_string; }
- (NSUInteger)length { return len; }
@end

@interface FAMockArray : NSArray {
@public
    std::vector<id> *items;
}
@end
@implementation FAMockArray
- (NSUInteger)count { return items->size(); }
- (id)objectAtIndex:(NSUInteger)i { return (*items)[i]; }
@end
@implementation NSArray
- (NSUInteger)count { return 0; }
- (id)objectAtIndex:(NSUInteger)i { (void)i; return nil; }
- (id)copyWithZone:(void *)zone { (void)zone; return self; }
@end

@interface FAMockURL : NSURL {
@public
    std::string *path;
}
@end
@implementation FAMockURL
@end
@implementation NSURL
+ (NSURL *)fileURLWithPath:(NSString *)path {
    FAMockURL *u = [FAMockURL new];
    u->path = new std::string(path.UTF8String);
    return u;
}
- (id)copyWithZone:(void *)zone { (void)zone; return self; }
@end

@interface FAMockError : NSError {
@public
    NSString *message;
}
@end
@implementation FAMockError
- (NSString *)localizedDescription { return message; }
@end
@implementation NSError
- (NSString *)localizedDescription { return (NSString *)[NSString stringWithUTF8String:""]; }
- (id)copyWithZone:(void *)zone { (void)zone; return self; }
@end

static NSError *mock_error(const std::string &text) {
    FAMockError *e = [FAMockError new];
    e->message = [NSString stringWithUTF8String:text.c_str()];
    return e;
}

// ---------------------------------------------------------------- Metal
// languageVersion starts at 0 ("not set"): Apple documents no fixed default, so the mock assumes nothing about it.
// Kept in a side table: the GNU runtime's fragile ivars cannot be added to the stub's @interface.
static std::map<const void *, MTLLanguageVersion> &compile_versions() {
    static std::map<const void *, MTLLanguageVersion> m;
    return m;
}
@implementation MTLCompileOptions
- (id)copyWithZone:(void *)zone { (void)zone; return self; }
- (MTLLanguageVersion)languageVersion {
    auto it = compile_versions().find((__bridge const void *)self);
    return it != compile_versions().end() ? it->second : MTLLanguageVersion(0);
}
- (void)setLanguageVersion:(MTLLanguageVersion)v { compile_versions()[(__bridge const void *)self] = v; }
@end

// A pointer into a mock MTLBuffer object is not an MTLBuffer: PyTorch 2.9.0/2.9.1's DLPack export of a sliced MPS
// view puts exactly that (buffer + byte offset) in `data`, and a shim that bound it would message a bogus object
// (on a Mac: a crash, or another object's methods). Every FAMockBuffer is allocated with kPoisonBytes of trailing
// memory filled with this class's pointer, so a pointer 8-aligned and at least the object's size into it reads as a
// FAMockNotABuffer, and whatever the shim sends it fails loudly (FAIL line, then abort) instead of reading garbage.
static constexpr size_t kPoisonBytes = 64 * 1024;

@interface FAMockNotABuffer : NSObject
@end
@implementation FAMockNotABuffer
static void not_a_buffer(const char *message, id self) {
    std::printf("FAIL: the shim sent -%s to %p, which is not an MTLBuffer: a pointer into a mock MTLBuffer "
                "(buffer + offset, as a PyTorch 2.9 DLPack export of a sliced MPS view)\n", message, (void *)self);
    std::fprintf(stderr, "metal mock: -%s sent to %p, a pointer into an MTLBuffer, not an MTLBuffer\n", message,
                 (void *)self);
    std::fflush(stdout);
    std::abort();
}
- (NSUInteger)length { not_a_buffer("length", self); return 0; }
- (void *)contents { not_a_buffer("contents", self); return nullptr; }
- (NSString *)label { not_a_buffer("label", self); return nil; }
- (void)setLabel:(NSString *)l { (void)l; not_a_buffer("setLabel:", self); }
- (id)retain { not_a_buffer("retain", self); return self; }
- (void)release { not_a_buffer("release", self); }
- (id)autorelease { not_a_buffer("autorelease", self); return self; }
@end

@interface FAMockBuffer : NSObject <MTLBuffer> {
@public
    NSString *lbl;
    char *data;
    NSUInteger len;
}
@end
@implementation FAMockBuffer
+ (instancetype)alloc {
    id o = class_createInstance(self, kPoisonBytes);
    const size_t start = (class_getInstanceSize(self) + 7) / 8 * 8;
    Class poison = objc_getClass("FAMockNotABuffer");
    for (size_t at = start; at + sizeof(Class) <= start + kPoisonBytes - 8; at += sizeof(Class))
        std::memcpy(reinterpret_cast<char *>(o) + at, &poison, sizeof(Class));
    return o;
}
- (NSString *)label { return lbl; }
- (void)setLabel:(NSString *)l { lbl = l; }
- (NSUInteger)length { return len; }
- (void *)contents { return data; }
@end

@interface FAMockFunction : NSObject <MTLFunction> {
@public
    NSString *fname;
}
@end
@implementation FAMockFunction
- (NSString *)name { return fname; }
@end

// Function constants: the values set on each MTLFunctionConstantValues object, as "index:type=value" words (kept
// beside the object: the stub declares the class without ivars, as the SDK does).
static std::map<const void *, std::string> &constant_values() {
    static std::map<const void *, std::string> m;
    return m;
}

@implementation MTLFunctionConstantValues
- (void)setConstantValue:(const void *)value type:(MTLDataType)type atIndex:(NSUInteger)index {
    std::ostringstream os;
    os << " " << index << ":" << static_cast<unsigned long>(type) << "=";
    switch (type) {
    case MTLDataTypeBool: os << int(*static_cast<const bool *>(value)); break;
    case MTLDataTypeInt: os << *static_cast<const int32_t *>(value); break;
    case MTLDataTypeUInt: os << *static_cast<const uint32_t *>(value); break;
    case MTLDataTypeFloat: os << *static_cast<const float *>(value); break;
    default: os << "?"; break;
    }
    constant_values()[(__bridge const void *)self] += os.str();
}
- (id)copyWithZone:(void *)zone {
    (void)zone;
    return self;
}
@end

@interface FAMockLibrary : NSObject <MTLLibrary> {
@public
    std::vector<std::string> *names;
}
@end
@implementation FAMockLibrary
- (id<MTLFunction>)newFunctionWithName:(NSString *)functionName {
    for (const std::string &n : *names) {
        if (n == functionName.UTF8String) {
            FAMockFunction *f = [FAMockFunction new];
            f->fname = functionName;
            return f;
        }
    }
    return nil;
}
// Journal "specialize <name><constants>"; the function is found as without constants.
- (id<MTLFunction>)newFunctionWithName:(NSString *)name
                        constantValues:(MTLFunctionConstantValues *)constantValues
                                 error:(NSError **)error {
    id<MTLFunction> f = [self newFunctionWithName:name];
    if (f == nil) {
        if (error) *error = mock_error(std::string("no function ") + name.UTF8String);
        return nil;
    }
    mock::note(std::string("specialize ") + name.UTF8String + constant_values()[(__bridge const void *)constantValues]);
    return f;
}
- (NSArray<NSString *> *)functionNames {
    FAMockArray *a = [FAMockArray new];
    a->items = new std::vector<id>();
    for (const std::string &n : *names) a->items->push_back([NSString stringWithUTF8String:n.c_str()]);
    return (NSArray<NSString *> *)a;
}
@end

@interface FAMockPipeline : NSObject <MTLComputePipelineState> {
@public
    std::string *kname;
}
@end
@implementation FAMockPipeline
- (NSUInteger)maxTotalThreadsPerThreadgroup {
    const mock::Knobs &k = mock::knobs();
    if (!k.limited_prefix.empty() && kname->rfind(k.limited_prefix, 0) == 0) return k.limited_max_total_threads;
    return k.max_total_threads;
}
- (NSUInteger)staticThreadgroupMemoryLength { return 0; }
- (NSUInteger)threadExecutionWidth { return mock::knobs().thread_execution_width; }
@end

namespace {
struct Binding {
    FAMockBuffer *buffer = nil;
    NSUInteger offset = 0;
    std::vector<char> bytes;
    bool is_bytes = false;
};
struct Dispatch {
    std::string kernel;
    std::map<NSUInteger, Binding> args;
    uint32_t grid[3], threads[3];
};
}  // namespace

@interface FAMockCommandBuffer : NSObject <MTLCommandBuffer> {
@public
    NSString *lbl;
    std::vector<Dispatch> *dispatches;
    MTLCommandBufferStatus st;
    NSError *err;
}
@end

@interface FAMockEncoder : NSObject <MTLComputeCommandEncoder> {
@public
    NSString *lbl;
    FAMockCommandBuffer *owner;
    std::string *pipeline;
    std::map<NSUInteger, Binding> *args;
    mock::DispatchRecord *pending;  // this dispatch's calls so far (mock::dispatch_log)
    bool ended;
}
@end
@implementation FAMockEncoder
- (NSString *)label { return lbl; }
- (void)setLabel:(NSString *)l { lbl = l; }
- (void)endEncoding {
    ended = true;
    mock::note("endEncoding");
}
- (void)setComputePipelineState:(id<MTLComputePipelineState>)state {
    *pipeline = *((FAMockPipeline *)state)->kname;
}
- (void)setBytes:(const void *)bytes length:(NSUInteger)length atIndex:(NSUInteger)index {
    Binding b;
    b.is_bytes = true;
    b.bytes.assign(static_cast<const char *>(bytes), static_cast<const char *>(bytes) + length);
    (*args)[index] = b;
    pending->bytes_sources.push_back(bytes);
    pending->bytes_lengths.push_back(length);
    mock::note("setbytes " + std::to_string(index) + " " + std::to_string(length));
}
- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index {
    Binding b;
    b.buffer = (FAMockBuffer *)buffer;
    b.offset = offset;
    (*args)[index] = b;
    pending->buffer_indices.push_back(int(index));
    mock::note("setbuffer " + std::to_string(index) + " " + std::to_string(offset));
}
- (void)dispatchThreadgroups:(MTLSize)g threadsPerThreadgroup:(MTLSize)t {
    Dispatch d;
    d.kernel = *pipeline;
    d.args = *args;
    d.grid[0] = g.width, d.grid[1] = g.height, d.grid[2] = g.depth;
    d.threads[0] = t.width, d.threads[1] = t.height, d.threads[2] = t.depth;
    owner->dispatches->push_back(d);
    pending->kernel = d.kernel;
    for (int i = 0; i < 3; ++i) pending->grid[i] = d.grid[i], pending->threads[i] = d.threads[i];
    mock::dispatch_log().push_back(*pending);
    *pending = mock::DispatchRecord();
    std::ostringstream os;
    os << "dispatch " << d.kernel << " " << g.width << "," << g.height << "," << g.depth << "/" << t.width << ","
       << t.height << "," << t.depth;
    mock::note(os.str());
}
- (void)memoryBarrierWithScope:(MTLBarrierScope)scope {
    mock::note(scope == MTLBarrierScopeBuffers ? "barrier" : "barrier?");
}
@end

@implementation FAMockCommandBuffer
- (NSString *)label { return lbl; }
- (void)setLabel:(NSString *)l { lbl = l; }
- (MTLCommandBufferStatus)status { return st; }
- (NSError *)error { return err; }
- (id<MTLComputeCommandEncoder>)computeCommandEncoderWithDispatchType:(MTLDispatchType)dispatchType {
    mock::note(dispatchType == MTLDispatchTypeSerial ? "encoder serial" : "encoder concurrent");
    FAMockEncoder *e = [FAMockEncoder new];
    e->owner = self;
    e->pipeline = new std::string();
    e->args = new std::map<NSUInteger, Binding>();
    e->pending = new mock::DispatchRecord();
    return e;
}
// Runs the recorded dispatches in order, as the GPU would after commit.
- (void)commit {
    mock::note("commit");
    st = MTLCommandBufferStatusCommitted;
    if (mock::knobs().fail_command_buffer) {
        st = MTLCommandBufferStatusError;
        err = mock_error("Internal Error (0000000e:Internal Error)");
        return;
    }
    for (const Dispatch &d : *dispatches) {
        auto k = mock::kernels().find(d.kernel);
        if (k == mock::kernels().end() && !mock::fallback()) {
            st = MTLCommandBufferStatusError;
            err = mock_error("mock: no test kernel " + d.kernel);
            return;
        }
        std::vector<mock::Arg> args(31);
        for (const auto &kv : d.args) {
            if (kv.second.is_bytes) {
                args[kv.first].data = const_cast<char *>(kv.second.bytes.data());
                args[kv.first].bytes = kv.second.bytes.size();
                args[kv.first].is_bytes = true;
            } else if (kv.second.buffer != nil) {
                if (kv.second.offset >= kv.second.buffer->len) {
                    st = MTLCommandBufferStatusError;
                    err = mock_error("mock: buffer offset past its end");
                    return;
                }
                args[kv.first].data = kv.second.buffer->data + kv.second.offset;
                args[kv.first].bytes = kv.second.buffer->len - kv.second.offset;
            }
        }
        std::string fault = k != mock::kernels().end() ? k->second(args, d.grid, d.threads)
                                                       : mock::fallback()(d.kernel, args, d.grid, d.threads);
        if (!fault.empty()) {
            st = MTLCommandBufferStatusError;
            err = mock_error("mock kernel fault: " + fault);
            return;
        }
    }
    st = MTLCommandBufferStatusCompleted;
}
- (void)waitUntilCompleted { mock::note("wait"); }
@end

@interface FAMockQueue : NSObject <MTLCommandQueue> {
    NSString *lbl;
}
@end
@implementation FAMockQueue
- (NSString *)label { return lbl; }
- (void)setLabel:(NSString *)l { lbl = l; }
- (id<MTLCommandBuffer>)commandBuffer {
    FAMockCommandBuffer *c = [FAMockCommandBuffer new];
    c->dispatches = new std::vector<Dispatch>();
    c->st = MTLCommandBufferStatusNotEnqueued;
    return c;
}
@end

static FAMockBuffer *mock_buffer(char *data, NSUInteger len) {
    FAMockBuffer *b = [FAMockBuffer new];
    b->data = data;
    b->len = len;
    return b;
}

static std::vector<std::string> *kernel_names_in(const std::string &source) {
    auto *names = new std::vector<std::string>();
    std::regex re("kernel\\s+void\\s+([A-Za-z_][A-Za-z0-9_]*)");
    for (std::sregex_iterator it(source.begin(), source.end(), re), end; it != end; ++it) names->push_back((*it)[1]);
    return names;
}

@interface FAMockDevice : NSObject <MTLDevice>
@end
@implementation FAMockDevice
- (NSString *)name { return [NSString stringWithUTF8String:mock::knobs().device_name.c_str()]; }
- (BOOL)hasUnifiedMemory { return YES; }
- (MTLSize)maxThreadsPerThreadgroup { return MTLSizeMake(1024, 1024, 1024); }
- (NSUInteger)maxThreadgroupMemoryLength { return 32768; }
- (NSUInteger)maxBufferLength { return mock::knobs().max_buffer_length; }
- (BOOL)supportsFamily:(MTLGPUFamily)f {
    mock::note("supportsFamily " + std::to_string(static_cast<long>(f)));
    const long v = static_cast<long>(f);
    if (v > 1000 && v < 2000) return mock::knobs().families_ok && v <= mock::knobs().apple_family;  // Apple1..
    return mock::knobs().families_ok;
}
- (id<MTLCommandQueue>)newCommandQueue { return [FAMockQueue new]; }
- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options {
    mock::note("length " + std::to_string(length) + (options == MTLResourceStorageModePrivate ? " private" : " shared"));
    return mock_buffer(static_cast<char *>(std::calloc(length, 1)), length);
}
- (id<MTLBuffer>)newBufferWithBytes:(const void *)pointer length:(NSUInteger)length options:(MTLResourceOptions)options {
    mock::note("bytes " + std::to_string(length) + (options == MTLResourceStorageModeShared ? " shared" : " ?"));
    char *copy = static_cast<char *>(std::malloc(length));
    std::memcpy(copy, pointer, length);
    return mock_buffer(copy, length);
}
- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void *)pointer
                                   length:(NSUInteger)length
                                  options:(MTLResourceOptions)options
                              deallocator:(void (^)(void *, NSUInteger))deallocator {
    (void)deallocator;
    std::ostringstream os;
    os << "nocopy " << pointer << " " << length << (options == MTLResourceStorageModeShared ? " shared" : " ?");
    // Metal's rule, with the host page size (16 KiB on Apple Silicon, 4 KiB on a Linux test machine).
    const uintptr_t page = static_cast<uintptr_t>(getpagesize());
    const bool aligned = reinterpret_cast<uintptr_t>(pointer) % page == 0 && length % page == 0;
    if (mock::knobs().refuse_nocopy || !aligned) {
        mock::note(os.str() + (aligned ? " refused" : " misaligned"));
        return nil;
    }
    mock::note(os.str());
    return mock_buffer(static_cast<char *>(pointer), length);
}
// A mock "metallib" is a text file listing its function names, one per line.
- (id<MTLLibrary>)newLibraryWithURL:(NSURL *)url error:(NSError **)error {
    const std::string &path = *((FAMockURL *)url)->path;
    mock::note("library url " + path);
    std::ifstream in(path);
    std::string magic;
    if (!in || !std::getline(in, magic) || magic != "MOCK METALLIB") {
        if (error) *error = mock_error("invalid metallib " + path);
        return nil;
    }
    FAMockLibrary *lib = [FAMockLibrary new];
    lib->names = new std::vector<std::string>();
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) lib->names->push_back(line);
    return lib;
}
- (id<MTLLibrary>)newLibraryWithSource:(NSString *)source options:(MTLCompileOptions *)options error:(NSError **)error {
    const std::string text = source.UTF8String;
    const unsigned long version = options != nil ? static_cast<unsigned long>(options.languageVersion) : 0;
    mock::note("library source " + std::to_string(text.size()) + " msl " + std::to_string(version >> 16) + "." +
               std::to_string(version & 0xffff));
    // Apple's compiler: bfloat exists from Metal Shading Language 3.1 on.
    if (text.find("bfloat") != std::string::npos && version < ((3ul << 16) + 1)) {
        if (error) *error = mock_error("program_source:1:1: error: unknown type name 'bfloat' (MSL < 3.1)");
        return nil;
    }
    if (text.find("#error") != std::string::npos) {
        if (error) *error = mock_error("program_source:3:2: error: " + text.substr(text.find("#error") + 7, 20));
        return nil;
    }
    FAMockLibrary *lib = [FAMockLibrary new];
    lib->names = kernel_names_in(text);
    return lib;
}
- (id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)fn error:(NSError **)error {
    (void)error;
    mock::note(std::string("pipeline ") + ((FAMockFunction *)fn)->fname.UTF8String);
    FAMockPipeline *p = [FAMockPipeline new];
    p->kname = new std::string(((FAMockFunction *)fn)->fname.UTF8String);
    return p;
}
@end

extern "C" id<MTLDevice> MTLCreateSystemDefaultDevice(void) {
    mock::note("MTLCreateSystemDefaultDevice");
    if (!mock::knobs().device_present) return nil;
    return [FAMockDevice new];
}

namespace mock {
void *new_device_buffer(size_t bytes, void **contents) {
    FAMockBuffer *b = mock_buffer(static_cast<char *>(std::calloc(bytes, 1)), bytes);
    *contents = b->data;
    return (void *)b;
}
}  // namespace mock
