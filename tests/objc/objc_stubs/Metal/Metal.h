// Declaration-only stand-in for <Metal/Metal.h>, used ONLY to compile-check objc/*.mm on Linux
// (tests/objc/test_objc_syntax.py). It declares just what the shim uses, with the selector names, argument types,
// nullability, enum values and availability (API_AVAILABLE, macOS only) of Apple's Metal API, arm64 macOS, as the
// SDK headers declare them (checked against the macOS 26.4 SDK's MTLDevice.h / MTLComputeCommandEncoder.h and
// Apple's metal-cpp, which spells out every selector). Nothing here is linked or executed; a real macOS build uses
// the SDK's headers. When the shim starts using another Metal call, add it here from Apple's headers or
// documentation, never by guessing.
#pragma once

#include <Foundation/Foundation.h>

NS_ASSUME_NONNULL_BEGIN

// ---- MTLTypes.h ----
typedef struct {
    NSUInteger width, height, depth;
} MTLSize;
// The SDK defines this as an inline function; a declaration is enough for a syntax-only check.
extern "C" MTLSize MTLSizeMake(NSUInteger width, NSUInteger height, NSUInteger depth);

// ---- MTLResource.h ----
typedef NS_OPTIONS(NSUInteger, MTLResourceOptions) {
    MTLResourceStorageModeShared = 0UL << 4,
    MTLResourceStorageModePrivate = 2UL << 4,
};

@protocol MTLDevice;

@protocol MTLResource <NSObject>
@end

// ---- MTLBuffer.h ----
@protocol MTLBuffer <MTLResource>
@property (readonly) NSUInteger length;
- (void *)contents NS_RETURNS_INNER_POINTER;
@end

// ---- MTLDataType.h (MTLArgument.h before macOS 26) ----
typedef NS_ENUM(NSUInteger, MTLDataType) {
    MTLDataTypeFloat = 3,
    MTLDataTypeInt = 29,
    MTLDataTypeUInt = 33,
    MTLDataTypeBool = 53,
} API_AVAILABLE(macos(10.11));

// ---- MTLFunctionConstantValues.h ----
API_AVAILABLE(macos(10.12))
@interface MTLFunctionConstantValues : NSObject <NSCopying>
- (void)setConstantValue:(const void *)value type:(MTLDataType)type atIndex:(NSUInteger)index;
@end

// ---- MTLLibrary.h ----
@protocol MTLFunction <NSObject>
@end

// MTLLanguageVersionX_Y = (X << 16) + Y. bfloat needs 3.1 (macOS 14).
typedef NS_ENUM(NSUInteger, MTLLanguageVersion) {
    MTLLanguageVersion3_1 API_AVAILABLE(macos(14.0)) = (3 << 16) + 1,
} API_AVAILABLE(macos(10.11));

@interface MTLCompileOptions : NSObject <NSCopying>
// Default: the newest version the OS supports (not documented as a fixed value, so the shim sets it).
@property (readwrite, nonatomic) MTLLanguageVersion languageVersion API_AVAILABLE(macos(10.11));
@end

@protocol MTLLibrary <NSObject>
- (nullable id<MTLFunction>)newFunctionWithName:(NSString *)functionName;
- (nullable id<MTLFunction>)newFunctionWithName:(NSString *)name
                                 constantValues:(MTLFunctionConstantValues *)constantValues
                                          error:(__autoreleasing NSError **)error API_AVAILABLE(macos(10.12));
@property (readonly) NSArray<NSString *> *functionNames;
@end

// ---- MTLComputePipeline.h ----
@protocol MTLComputePipelineState <NSObject>
@property (readonly) NSUInteger maxTotalThreadsPerThreadgroup;
@property (readonly) NSUInteger staticThreadgroupMemoryLength API_AVAILABLE(macos(11.0));
@property (readonly) NSUInteger threadExecutionWidth;
@end

// ---- MTLCommandEncoder.h / MTLComputeCommandEncoder.h ----
typedef NS_OPTIONS(NSUInteger, MTLBarrierScope) {
    MTLBarrierScopeBuffers = 1UL << 0,
} API_AVAILABLE(macos(10.14));

@protocol MTLCommandEncoder <NSObject>
- (void)endEncoding;
@end

@protocol MTLComputeCommandEncoder <MTLCommandEncoder>
- (void)setComputePipelineState:(id<MTLComputePipelineState>)state;
- (void)setBytes:(const void *)bytes length:(NSUInteger)length atIndex:(NSUInteger)index;
- (void)setBuffer:(nullable id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index;
- (void)dispatchThreadgroups:(MTLSize)threadgroupsPerGrid threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup;
// "Calling barrier on a serial encoder is allowed, but ignored" (SDK header): ordering comes from the serial encoder.
- (void)memoryBarrierWithScope:(MTLBarrierScope)scope API_AVAILABLE(macos(10.14));
@end

// ---- MTLCommandBuffer.h ----
typedef NS_ENUM(NSUInteger, MTLCommandBufferStatus) {
    MTLCommandBufferStatusNotEnqueued = 0,
    MTLCommandBufferStatusEnqueued = 1,
    MTLCommandBufferStatusCommitted = 2,
    MTLCommandBufferStatusScheduled = 3,
    MTLCommandBufferStatusCompleted = 4,
    MTLCommandBufferStatusError = 5,
};

typedef NS_ENUM(NSUInteger, MTLDispatchType) {
    MTLDispatchTypeSerial = 0,
    MTLDispatchTypeConcurrent = 1,
} API_AVAILABLE(macos(10.14));

@protocol MTLCommandBuffer <NSObject>
@property (nullable, copy, atomic) NSString *label;
@property (readonly) MTLCommandBufferStatus status;
@property (nullable, readonly) NSError *error;
- (nullable id<MTLComputeCommandEncoder>)computeCommandEncoderWithDispatchType:(MTLDispatchType)dispatchType
    API_AVAILABLE(macos(10.14));
- (void)commit;
- (void)waitUntilCompleted;
@end

// ---- MTLCommandQueue.h ----
@protocol MTLCommandQueue <NSObject>
@property (nullable, copy, atomic) NSString *label;
- (nullable id<MTLCommandBuffer>)commandBuffer;
@end

// ---- MTLDevice.h ----
typedef NS_ENUM(NSInteger, MTLGPUFamily) {
    MTLGPUFamilyApple7 = 1007,
    MTLGPUFamilyApple8 = 1008,
    MTLGPUFamilyApple9 = 1009,
    MTLGPUFamilyMetal3 API_AVAILABLE(macos(13.0)) = 5001,
} API_AVAILABLE(macos(10.15));

@protocol MTLDevice <NSObject>
@property (readonly) NSString *name;
@property (readonly) BOOL hasUnifiedMemory API_AVAILABLE(macos(10.15));
@property (readonly) MTLSize maxThreadsPerThreadgroup;
@property (readonly) NSUInteger maxThreadgroupMemoryLength API_AVAILABLE(macos(10.13));
@property (readonly) NSUInteger maxBufferLength API_AVAILABLE(macos(10.14));
- (BOOL)supportsFamily:(MTLGPUFamily)gpuFamily API_AVAILABLE(macos(10.15));
- (nullable id<MTLCommandQueue>)newCommandQueue;
- (nullable id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options;
- (nullable id<MTLBuffer>)newBufferWithBytes:(const void *)pointer
                                      length:(NSUInteger)length
                                     options:(MTLResourceOptions)options;
// SDK header: the pointer must be page-aligned (page size not assumed to be 4 KiB), the memory one VM region
// (typically vm_allocate or mmap; the header says malloc'd memory is disallowed) that outlives the buffer.
- (nullable id<MTLBuffer>)newBufferWithBytesNoCopy:(void *)pointer
                                            length:(NSUInteger)length
                                           options:(MTLResourceOptions)options
                                       deallocator:(void (^_Nullable)(void *pointer, NSUInteger length))deallocator;
- (nullable id<MTLLibrary>)newLibraryWithURL:(NSURL *)url
                                     error:(__autoreleasing NSError **)error API_AVAILABLE(macos(10.13));
- (nullable id<MTLLibrary>)newLibraryWithSource:(NSString *)source
                                        options:(nullable MTLCompileOptions *)options
                                          error:(__autoreleasing NSError **)error;
- (nullable id<MTLComputePipelineState>)newComputePipelineStateWithFunction:(id<MTLFunction>)computeFunction
                                                                      error:(__autoreleasing NSError **)error;
@end

extern "C" id<MTLDevice> _Nullable MTLCreateSystemDefaultDevice(void) NS_RETURNS_RETAINED;

NS_ASSUME_NONNULL_END
