// fasim_vec_names.h - MSL's vector element types and matrix type names, listed once for the headers that declare
// them: fasim_types.h and fasim_matrix_types.h (the simulator's class types) and fasim_check.h / fasim_check_ext.h
// (clang builtin vectors and bodiless matrices for the strict syntax check).
#pragma once

// X(T) for every element type T that has the MSL vectors T2, T3, T4.
#define FASIM_VEC_ELEMENTS(X) X(float) X(half) X(bfloat) X(int) X(uint) X(short) X(ushort) X(char) X(uchar) X(bool) X(long) X(ulong)

// MSL's vector types are names of the global namespace too (headers use half2 before `using namespace metal;`).
#define FASIM_VEC_GLOBAL_(P) using metal::P##2; using metal::P##3; using metal::P##4;
#define FASIM_VEC_GLOBAL_NAMES FASIM_VEC_ELEMENTS(FASIM_VEC_GLOBAL_)

// MSL's matrix type names (§2.3): TCxR is matrix<T, C, R> for 2-4 columns and rows; the element types are float,
// half and bfloat. Expanded inside namespace metal, after the header's own `matrix` template.
#define FASIM_MATRIX_NAMES_OF(T)                                                                             \
    typedef matrix<T, 2, 2> T##2x2; typedef matrix<T, 2, 3> T##2x3; typedef matrix<T, 2, 4> T##2x4;          \
    typedef matrix<T, 3, 2> T##3x2; typedef matrix<T, 3, 3> T##3x3; typedef matrix<T, 3, 4> T##3x4;          \
    typedef matrix<T, 4, 2> T##4x2; typedef matrix<T, 4, 3> T##4x3; typedef matrix<T, 4, 4> T##4x4;
#define FASIM_MATRIX_NAMES FASIM_MATRIX_NAMES_OF(float) FASIM_MATRIX_NAMES_OF(half) FASIM_MATRIX_NAMES_OF(bfloat)
