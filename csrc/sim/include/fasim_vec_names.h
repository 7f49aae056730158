// fasim_vec_names.h - MSL's vector element types, listed once for the two headers that declare the vector type names:
// fasim_types.h (the simulator's class types) and fasim_check.h (clang builtin vectors for the strict syntax check).
#pragma once

// X(T) for every element type T that has the MSL vectors T2, T3, T4.
#define FASIM_VEC_ELEMENTS(X) X(float) X(half) X(bfloat) X(int) X(uint) X(short) X(ushort) X(char) X(uchar) X(bool) X(long) X(ulong)

// MSL's vector types are names of the global namespace too (headers use half2 before `using namespace metal;`).
#define FASIM_VEC_GLOBAL_(P) using metal::P##2; using metal::P##3; using metal::P##4;
#define FASIM_VEC_GLOBAL_NAMES FASIM_VEC_ELEMENTS(FASIM_VEC_GLOBAL_)
