// fasim_matrix_types.h - MSL's matrix types (MSL specification 3.1, §2.3 "Matrix Data Types"): matrix<T, Cols, Rows>
// with T float, half or bfloat and 2-4 columns and rows, named TCxR (float4x4, half2x4, ...). llama.cpp's
// ggml-metal.metal dequantises blocks into half4x4/float4x4 registers and moves 16-element tiles as half4x4.
//
// As the specification lays them out: Cols column vectors of type vec<T, Rows> (a 3-row column is padded to four
// elements), so sizeof(float4x4) == 64 and sizeof(half2x4) == 16, and `m[i]` is column i, `m[i][j]` row j of it.
// Constructors: none (uninitialised, like any thread variable), a scalar (that value on the diagonal, zeros
// elsewhere), Cols column vectors, Cols*Rows scalars in column-major order, and an explicit conversion from a matrix
// of the same shape and another element type (`(half4x4) reg_f`). Operators: + and - element by element, * by a
// scalar, matrix * vector, vector * matrix and matrix * matrix as linear algebra (each result element a sum of
// products in index order, computed in float and rounded once to T), the compound forms, and unary -.
#pragma once

#include "fasim_types.h"

namespace metal {

template <class T, int C, int R> struct matrix {
    static_assert(std::is_same<T, float>::value || std::is_same<T, half>::value || std::is_same<T, bfloat>::value,
                  "MSL §2.3: matrix elements are float, half or bfloat");
    static_assert(C >= 2 && C <= 4 && R >= 2 && R <= 4, "MSL §2.3: matrices have 2 to 4 columns and rows");
    vec<T, R> columns[C];

    matrix() = default;
    explicit matrix(T diagonal) {
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++) columns[c][r] = c == r ? diagonal : T(0);
    }
    template <class... V, std::enable_if_t<sizeof...(V) == C && C != 1 &&
                                           (std::is_convertible<V, vec<T, R>>::value && ...), int> = 0>
    matrix(const V &...cols) : columns{vec<T, R>(cols)...} {}
    template <class... S, std::enable_if_t<sizeof...(S) == C * R && (fasim::is_scalar_v<S> && ...), int> = 0>
    matrix(S... s) {
        T v[C * R] = {T(s)...};
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++) columns[c][r] = v[c * R + r];
    }
    template <class U, std::enable_if_t<!std::is_same<U, T>::value, int> = 0>
    explicit matrix(const matrix<U, C, R> &o) {
        for (int c = 0; c < C; c++)
            for (int r = 0; r < R; r++) columns[c][r] = T((typename fasim_conv<U>::type)o.columns[c][r]);
    }

    vec<T, R> &operator[](int c) { return columns[c]; }
    const vec<T, R> &operator[](int c) const { return columns[c]; }

    matrix &operator+=(const matrix &o) { return *this = *this + o; }
    matrix &operator-=(const matrix &o) { return *this = *this - o; }
    template <class S, class = std::enable_if_t<fasim::is_scalar_v<S>>> matrix &operator*=(S s) {
        return *this = *this * s;
    }
    template <int K = C, class = std::enable_if_t<K == R>> matrix &operator*=(const matrix &o) {
        return *this = *this * o;
    }
};

template <class T, int C, int R> inline matrix<T, C, R> operator+(const matrix<T, C, R> &a, const matrix<T, C, R> &b) {
    matrix<T, C, R> m;
    for (int c = 0; c < C; c++) m.columns[c] = a.columns[c] + b.columns[c];
    return m;
}
template <class T, int C, int R> inline matrix<T, C, R> operator-(const matrix<T, C, R> &a, const matrix<T, C, R> &b) {
    matrix<T, C, R> m;
    for (int c = 0; c < C; c++) m.columns[c] = a.columns[c] - b.columns[c];
    return m;
}
template <class T, int C, int R> inline matrix<T, C, R> operator-(const matrix<T, C, R> &a) {
    matrix<T, C, R> m;
    for (int c = 0; c < C; c++) m.columns[c] = -a.columns[c];
    return m;
}
template <class T, int C, int R, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>
inline matrix<T, C, R> operator*(const matrix<T, C, R> &a, S s) {
    matrix<T, C, R> m;
    for (int c = 0; c < C; c++) m.columns[c] = a.columns[c] * s;
    return m;
}
template <class T, int C, int R, class S, class = std::enable_if_t<fasim::is_scalar_v<S>>>
inline matrix<T, C, R> operator*(S s, const matrix<T, C, R> &a) {
    return a * s;
}
// (R x C) * (C-vector) -> R-vector: sum over columns.
template <class T, int C, int R> inline vec<T, R> operator*(const matrix<T, C, R> &a, const vec<T, C> &v) {
    FASIM_COUNT_FLOPS_OF(T, 2 * C * R);
    vec<T, R> out;
    for (int r = 0; r < R; r++) {
        float s = 0.0f;
        for (int c = 0; c < C; c++) s += (float)a.columns[c][r] * (float)v[c];
        out[r] = T(s);
    }
    return out;
}
// (R-vector) * (R x C) -> C-vector: the dot product of v with each column.
template <class T, int C, int R> inline vec<T, C> operator*(const vec<T, R> &v, const matrix<T, C, R> &a) {
    FASIM_COUNT_FLOPS_OF(T, 2 * C * R);
    vec<T, C> out;
    for (int c = 0; c < C; c++) {
        float s = 0.0f;
        for (int r = 0; r < R; r++) s += (float)v[r] * (float)a.columns[c][r];
        out[c] = T(s);
    }
    return out;
}
// (R x K) * (K x C) -> R x C.
template <class T, int K, int R, int C>
inline matrix<T, C, R> operator*(const matrix<T, K, R> &a, const matrix<T, C, K> &b) {
    matrix<T, C, R> m;
    for (int c = 0; c < C; c++) m.columns[c] = a * b.columns[c];
    return m;
}

template <class T, int C, int R> inline matrix<T, R, C> transpose(const matrix<T, C, R> &a) {
    matrix<T, R, C> m;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) m.columns[r][c] = a.columns[c][r];
    return m;
}

FASIM_MATRIX_NAMES  // float2x2 ... bfloat4x4 (fasim_vec_names.h)

static_assert(sizeof(float4x4) == 64 && alignof(float4x4) == 16 && sizeof(half4x4) == 32 && sizeof(half2x4) == 16 &&
                  sizeof(float3x3) == 48,
              "MSL matrix layout (§2.3, Table 2.4)");

}  // namespace metal

// Like the vector types, the matrix names are global names too (headers use them before `using namespace metal;`).
#define FASIM_MATRIX_GLOBAL(T)                                                                               \
    using metal::T##2x2; using metal::T##2x3; using metal::T##2x4; using metal::T##3x2; using metal::T##3x3;  \
    using metal::T##3x4; using metal::T##4x2; using metal::T##4x3; using metal::T##4x4;
FASIM_MATRIX_GLOBAL(float) FASIM_MATRIX_GLOBAL(half) FASIM_MATRIX_GLOBAL(bfloat)
#undef FASIM_MATRIX_GLOBAL
