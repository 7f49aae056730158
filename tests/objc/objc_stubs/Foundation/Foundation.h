// Declaration-only stand-in for <Foundation/Foundation.h>, used ONLY to compile-check objc/*.mm on Linux
// (tests/objc/test_objc_syntax.py). It declares just what the shim uses, with the selector names, argument types and
// nullability of Apple's documented API (developer.apple.com/documentation/foundation), for the arm64 macOS ABI.
// Nothing here is ever linked or executed; a real macOS build uses the SDK's headers.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifndef __OBJC__
#error "Foundation.h stub: compile as Objective-C++ (-x objective-c++)"
#endif

#define NS_ASSUME_NONNULL_BEGIN _Pragma("clang assume_nonnull begin")
#define NS_ASSUME_NONNULL_END _Pragma("clang assume_nonnull end")
#define NS_RETURNS_RETAINED __attribute__((ns_returns_retained))
#define NS_RETURNS_INNER_POINTER __attribute__((objc_returns_inner_pointer))
// <os/availability.h>: API_AVAILABLE(macos(14.0)) -> clang's availability attribute, as in the SDK. It only takes
// effect when compiling for a macOS target (the real-SDK check does, with an old deployment target), where an
// unguarded use of a newer API is a -Wunguarded-availability warning.
#define FA_STUB_AVAIL_macos(v) __attribute__((availability(macos, introduced = v)))
#define API_AVAILABLE(p) FA_STUB_AVAIL_##p
// In C++ an NS_ENUM is an enum with a fixed underlying type and an NS_OPTIONS is the integer type itself plus
// anonymous enumerators, so `A | B` keeps the options type (as the SDK's CF_OPTIONS does under __cplusplus).
#define NS_ENUM(_type, _name) enum _name : _type _name; enum _name : _type
#define NS_OPTIONS(_type, _name) _type _name; enum : _name

// <objc/objc.h>: in C++11, nil is nullptr.
#define nil nullptr

typedef long NSInteger;
typedef unsigned long NSUInteger;
typedef bool BOOL;  // arm64 macOS: BOOL is bool
#define YES __objc_yes
#define NO __objc_no

NS_ASSUME_NONNULL_BEGIN

@class NSString;

@protocol NSObject
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject> {
    Class isa;  // as in the SDK's NSObject.h (the mock runtime test relies on it being the first ivar)
}
+ (instancetype)alloc;
+ (instancetype)new;
- (instancetype)init;
@end

@protocol NSCopying
- (id)copyWithZone:(nullable void *)zone;
@end

@interface NSString : NSObject <NSCopying>
+ (nullable instancetype)stringWithUTF8String:(const char *)nullTerminatedCString;
@property (nullable, readonly) const char *UTF8String NS_RETURNS_INNER_POINTER;
@end

@interface NSArray<__covariant ObjectType> : NSObject <NSCopying>
@property (readonly) NSUInteger count;
- (ObjectType)objectAtIndex:(NSUInteger)index;
@end

@interface NSURL : NSObject <NSCopying>
+ (NSURL *)fileURLWithPath:(NSString *)path;
@end

@interface NSError : NSObject <NSCopying>
@property (readonly, copy) NSString *localizedDescription;
@end

NS_ASSUME_NONNULL_END
