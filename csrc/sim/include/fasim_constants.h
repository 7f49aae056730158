// fasim_constants.h - the MSL library's float constants (INFINITY, FLT_MAX, M_PI_F, ...), for the simulator's
// metal_stdlib (fasim_math.h) and the strict check's declarations (fasim_check.h) alike.
#pragma once

#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif
#ifndef NAN
#define NAN (__builtin_nanf(""))
#endif
#ifndef HUGE_VALF
#define HUGE_VALF (__builtin_huge_valf())
#endif
#ifndef FLT_MAX
#define FLT_MAX 3.40282346638528859812e+38F
#endif
#ifndef FLT_MIN
#define FLT_MIN 1.17549435082228750797e-38F
#endif
#ifndef FLT_EPSILON
#define FLT_EPSILON 1.1920928955078125e-07F
#endif
#define MAXFLOAT FLT_MAX
#define METAL_FUNC inline  // <metal_stdlib>'s spelling of an always-inlined helper
#define HALF_MAX 65504.0f
#define MAXHALF HALF_MAX
#define HALF_MIN 6.103515625e-05f
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.44269504088896340736f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.693147180559945309417f
#define M_LN10_F 2.30258509299404568402f
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f
