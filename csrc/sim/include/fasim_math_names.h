// fasim_math_names.h - the names of MSL's float math functions, listed once for the headers that must agree on them:
// fasim_math.h (the definitions of those that are a C library function of the same name), fasim_builtins.h (Apple's
// __metal_NAME builtins, one per function), fasim_check.h and fasim_check_ext.h (the strict syntax check's
// declarations). The other definitions are in fasim_math.h and fasim_math_ext.h, each with its own expression; a
// name listed here without a definition there fails to compile in fasim_builtins.h.
#pragma once

// X(NAME) for the one-argument functions with a fast form and a precise:: form (fasim_math.h, FASIM_MATH_T); the
// _LIBM part are those whose float form is the C library's NAMEf (fasim_math.h defines them from this list).
#define FASIM_MATH_PRECISE1_LIBM_NAMES(X)                                                                     \
    X(exp) X(exp2) X(log) X(log2) X(log10) X(sqrt) X(sin) X(cos) X(tan) X(tanh) X(sinh) X(cosh) X(asin)      \
    X(acos) X(atan)
#define FASIM_MATH_PRECISE1_NAMES(X) FASIM_MATH_PRECISE1_LIBM_NAMES(X) X(exp10) X(rsqrt)
// X(NAME) for the two-argument functions with a fast form and a precise:: form (fasim_math.h, FASIM_MATH2_T).
#define FASIM_MATH_PRECISE2_NAMES(X) X(pow) X(powr) X(fmod) X(divide)
// X(NAME) for fasim_math_ext.h's one-argument functions (one exact form, in every namespace).
#define FASIM_MATH_EXT1_NAMES(X) X(acosh) X(asinh) X(atanh) X(sinpi) X(cospi) X(tanpi)
// X(NAME) for the exact one-argument functions that have a __metal_ builtin (fasim_math.h, FASIM_MATH1; saturate
// and sign have none); the _LIBM part as above.
#define FASIM_MATH_EXACT1_LIBM_NAMES(X) X(floor) X(ceil) X(round) X(rint) X(trunc) X(fabs)
#define FASIM_MATH_EXACT1_NAMES(X) FASIM_MATH_EXACT1_LIBM_NAMES(X) X(fract)
