// fasim_simd.h - barriers, SIMD-group functions and simdgroup_matrix for the Metal simulator.
//
// A SIMD-group function is a collective: each lane writes its value into its slot of the SIMD group's exchange area,
// waits (fasim::simd_sync) until every lane that must take part has arrived, then computes its own result from all
// slots. simdgroup_matrix<T, 8, 8> keeps in each lane exactly the two elements Apple's layout gives it
// (thread_elements()); load/store are per lane, multiply is a collective over all 32 lanes.
#pragma once

#include "fasim_math.h"
#include "fasim_rt.h"

namespace metal {

enum class mem_flags : int {
    mem_none = 0,
    mem_device = 1,
    mem_threadgroup = 2,
    mem_texture = 4,
    mem_threadgroup_imageblock = 8,
};
inline constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags((int)a | (int)b); }
inline constexpr mem_flags operator&(mem_flags a, mem_flags b) { return mem_flags((int)a & (int)b); }

inline void threadgroup_barrier(mem_flags flags, FASIM_SITE_PARAMS) {
    fasim::tg_barrier(fasim::ctx(), fasim_file, fasim_line, "threadgroup_barrier", (int)flags);
}
inline void simdgroup_barrier(mem_flags flags, FASIM_SITE_PARAMS) {
    fasim::simd_sync(fasim::ctx(), fasim_file, fasim_line, "simdgroup_barrier", fasim::kSyncSimd, (int)flags);
}

namespace fasim_detail {

template <class T> FASIM_NO_HAZARD_CHECK inline T *slot(fasim::ThreadCtx &c, uint32_t par, uint32_t lane) {
    static_assert(sizeof(T) <= fasim::kExchangeBytes, "SIMD-group function on a type larger than the exchange slot");
    return reinterpret_cast<T *>(c.sg->xbuf[par][lane]);
}

// Publish v, wait for the group, return the parity whose slots hold everyone's values.
template <class T>
FASIM_NO_HAZARD_CHECK inline uint32_t exchange(fasim::ThreadCtx &c, const T &v, const char *file, unsigned line,
                                               const char *what) {
    uint32_t par = c.coll++ & 1u;
    *slot<T>(c, par, c.lane) = v;
    fasim::simd_sync(c, file, line, what, fasim::kSyncSimd);
    return par;
}

template <class T> inline T zero() { return T(0); }

}  // namespace fasim_detail

#define FASIM_SIMD_REDUCE(NAME, INIT, COMBINE)                                                              \
    template <class T> FASIM_NO_HAZARD_CHECK inline T NAME(T v, FASIM_SITE_PARAMS) {                       \
        fasim::ThreadCtx &c = fasim::ctx();                                                                 \
        uint32_t par = fasim_detail::exchange(c, v, fasim_file, fasim_line, #NAME);                         \
        uint32_t m = c.sg->mask[par];                                                                       \
        T acc = INIT;                                                                                       \
        bool first = true;                                                                                  \
        for (uint32_t l = 0; l < (uint32_t)fasim::kSimdWidth; l++) {                                        \
            if (!(m >> l & 1u)) continue;                                                                   \
            T x = *fasim_detail::slot<T>(c, par, l);                                                        \
            if (first) { acc = x; first = false; } else { acc = COMBINE; }                                 \
        }                                                                                                   \
        return acc;                                                                                         \
    }
FASIM_SIMD_REDUCE(simd_sum, v, acc + x)
FASIM_SIMD_REDUCE(simd_product, v, acc * x)
FASIM_SIMD_REDUCE(simd_max, v, max(acc, x))
FASIM_SIMD_REDUCE(simd_min, v, min(acc, x))
FASIM_SIMD_REDUCE(simd_and, v, acc & x)
FASIM_SIMD_REDUCE(simd_or, v, acc | x)
FASIM_SIMD_REDUCE(simd_xor, v, acc ^ x)
#undef FASIM_SIMD_REDUCE

template <class T> FASIM_NO_HAZARD_CHECK inline T simd_prefix_inclusive_sum(T v, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, v, fasim_file, fasim_line, "simd_prefix_inclusive_sum");
    uint32_t m = c.sg->mask[par];
    T acc = fasim_detail::zero<T>();
    for (uint32_t l = 0; l <= c.lane; l++)
        if (m >> l & 1u) acc = acc + *fasim_detail::slot<T>(c, par, l);
    return acc;
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_prefix_exclusive_sum(T v, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, v, fasim_file, fasim_line, "simd_prefix_exclusive_sum");
    uint32_t m = c.sg->mask[par];
    T acc = fasim_detail::zero<T>();
    for (uint32_t l = 0; l < c.lane; l++)
        if (m >> l & 1u) acc = acc + *fasim_detail::slot<T>(c, par, l);
    return acc;
}

// Reads lane `src`'s value; an out-of-range or inactive source yields the caller's own value.
template <class T>
FASIM_NO_HAZARD_CHECK inline T fasim_shuffle_from(fasim::ThreadCtx &c, const T &v, long src, const char *file, unsigned line,
                            const char *what) {
    uint32_t par = fasim_detail::exchange(c, v, file, line, what);
    if (src < 0 || src >= fasim::kSimdWidth || !(c.sg->mask[par] >> src & 1u)) return v;
    return *fasim_detail::slot<T>(c, par, (uint32_t)src);
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_shuffle(T v, ushort lane, FASIM_SITE_PARAMS) {
    return fasim_shuffle_from(fasim::ctx(), v, (long)lane, fasim_file, fasim_line, "simd_shuffle");
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_broadcast(T v, ushort lane, FASIM_SITE_PARAMS) {
    return fasim_shuffle_from(fasim::ctx(), v, (long)lane, fasim_file, fasim_line, "simd_broadcast");
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_shuffle_xor(T v, ushort mask, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    return fasim_shuffle_from(c, v, (long)(c.lane ^ (mask & 31u)), fasim_file, fasim_line, "simd_shuffle_xor");
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_shuffle_down(T v, ushort delta, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    return fasim_shuffle_from(c, v, (long)c.lane + delta, fasim_file, fasim_line, "simd_shuffle_down");
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_shuffle_up(T v, ushort delta, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    return fasim_shuffle_from(c, v, (long)c.lane - delta, fasim_file, fasim_line, "simd_shuffle_up");
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_broadcast_first(T v, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, v, fasim_file, fasim_line, "simd_broadcast_first");
    return *fasim_detail::slot<T>(c, par, (uint32_t)__builtin_ctz(c.sg->mask[par]));
}
FASIM_NO_HAZARD_CHECK inline bool simd_is_first(FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, (int)1, fasim_file, fasim_line, "simd_is_first");
    return (uint32_t)__builtin_ctz(c.sg->mask[par]) == c.lane;
}

struct simd_vote {
    ulong v;
    explicit operator ulong() const { return v; }
    explicit operator bool() const { return v != 0; }
    bool all() const { return false; }
    bool any() const { return v != 0; }
};
FASIM_NO_HAZARD_CHECK inline simd_vote simd_ballot(bool b, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, (int)b, fasim_file, fasim_line, "simd_ballot");
    ulong r = 0;
    for (uint32_t l = 0; l < (uint32_t)fasim::kSimdWidth; l++)
        if ((c.sg->mask[par] >> l & 1u) && *fasim_detail::slot<int>(c, par, l)) r |= (ulong)1 << l;
    return simd_vote{r};
}
FASIM_NO_HAZARD_CHECK inline bool simd_all(bool b, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, (int)b, fasim_file, fasim_line, "simd_all");
    for (uint32_t l = 0; l < (uint32_t)fasim::kSimdWidth; l++)
        if ((c.sg->mask[par] >> l & 1u) && !*fasim_detail::slot<int>(c, par, l)) return false;
    return true;
}
FASIM_NO_HAZARD_CHECK inline bool simd_any(bool b, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, (int)b, fasim_file, fasim_line, "simd_any");
    for (uint32_t l = 0; l < (uint32_t)fasim::kSimdWidth; l++)
        if ((c.sg->mask[par] >> l & 1u) && *fasim_detail::slot<int>(c, par, l)) return true;
    return false;
}

// ---------------------------------------------------------------------------------------------------------------
// simdgroup_matrix<T, 8, 8>

namespace fasim_detail {
// Apple's lane layout (see kernels/README.md): lane l holds (row, col) and (row, col + 1).
constexpr uint32_t mat_row(uint32_t l) { return ((l / 4) & 4u) + (l / 2) % 4; }
constexpr uint32_t mat_col(uint32_t l) { return ((l / 4) & 2u) * 2 + (l % 2) * 2; }
// owner[r][c] = 2 * lane + element index of element (r, c).
struct MatOwner {
    unsigned char at[8][8];
    constexpr MatOwner() : at() {
        for (uint32_t l = 0; l < 32; l++) {
            at[mat_row(l)][mat_col(l)] = (unsigned char)(2 * l);
            at[mat_row(l)][mat_col(l) + 1] = (unsigned char)(2 * l + 1);
        }
    }
};
constexpr MatOwner kMatOwner{};
}  // namespace fasim_detail

// Element types: MSL specification §2.4 "SIMD-group matrix data types" (float, half; bfloat from MSL 3.1). The
// operations below accept independent element types for d, a, b and c: the specification's table (§6.7, "SIMD-group
// matrix functions") prints one T for all four, but Apple's metal_simdgroup_matrix header - what the compiler
// enforces - declares `template <typename R, typename T, typename U, typename V, int K, int Rows, int Cols>
// enable_if_t<_valid_simdgroup_multiply_accumulate_v<R, T, U, V, K>> simdgroup_multiply_accumulate(thread
// simdgroup_matrix<R, Cols, Rows> &d, simdgroup_matrix<T, K, Rows> a, simdgroup_matrix<U, Cols, K> b,
// simdgroup_matrix<V, Cols, Rows> c)`, the condition being that all four are floating-point (toolchain metal
// 32023.864, metal_simdgroup_matrix lines 197-211, as transcribed in several public repositories), and kernels that
// build on a Mac rely on it (llama.cpp's flash_attn_ext multiplies half Q/K fragments into a float accumulator;
// run unmodified here, README "Real-world kernels"). Decision: mixed element types stay accepted. Anything else, e.g.
// an integer matrix, fails here as there.
template <class T, int Rows, int Cols> struct simdgroup_matrix {
    static_assert(std::is_same<T, float>::value || std::is_same<T, half>::value || std::is_same<T, bfloat>::value,
                  "MSL §2.4: simdgroup_matrix elements are float, half or bfloat");
    static_assert(Rows == 8 && Cols == 8, "the simulator supports 8x8 simdgroup_matrix only");
    vec<T, 2> elems;
    simdgroup_matrix() = default;
    // MSL: a diagonal matrix with `diagonal` on the diagonal and zeros elsewhere.
    explicit simdgroup_matrix(T diagonal) {
        uint32_t l = fasim::ctx().lane, r = fasim_detail::mat_row(l), c = fasim_detail::mat_col(l);
        elems = vec<T, 2>(r == c ? diagonal : T(0), r == c + 1 ? diagonal : T(0));
    }
    vec<T, 2> &thread_elements() { return elems; }
    const vec<T, 2> &thread_elements() const { return elems; }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

// MSL declares `template <typename T, int Cols, int Rows = Cols>` (llama.cpp writes make_filled_simdgroup_matrix<float, 8>).
template <class T, int R, int C = R> inline simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T v) {
    simdgroup_matrix<T, R, C> m;
    m.elems = vec<T, 2>(v);
    return m;
}

// matrix_origin is (column, row) of the 8x8 block inside the stored matrix; with transpose the block is read
// (written) transposed: element (r, c) of the simdgroup_matrix is stored at (row c, column r) of the block.
inline ulong fasim_mat_index(uint32_t r, uint32_t c, ulong epr, vec<ulong, 2> origin, bool transpose) {
    return transpose ? (origin.y + c) * epr + origin.x + r : (origin.y + r) * epr + origin.x + c;
}

// MSL declares load and store with the matrix's own element type (`const device T *src` for a
// simdgroup_matrix<T, ...>), so a float matrix cannot be loaded from half memory: neither can it here.
template <class T>
inline void simdgroup_load(simdgroup_matrix<T, 8, 8> &d, const T *src, ulong elements_per_row = 8,
                           vec<ulong, 2> matrix_origin = vec<ulong, 2>(0, 0), bool transpose_matrix = false) {
    uint32_t l = fasim::ctx().lane, r = fasim_detail::mat_row(l), c = fasim_detail::mat_col(l);
    d.elems.x = src[fasim_mat_index(r, c, elements_per_row, matrix_origin, transpose_matrix)];
    d.elems.y = src[fasim_mat_index(r, c + 1, elements_per_row, matrix_origin, transpose_matrix)];
}

template <class T>
inline void simdgroup_store(const simdgroup_matrix<T, 8, 8> &m, T *dst, ulong elements_per_row = 8,
                            vec<ulong, 2> matrix_origin = vec<ulong, 2>(0, 0), bool transpose_matrix = false) {
    uint32_t l = fasim::ctx().lane, r = fasim_detail::mat_row(l), c = fasim_detail::mat_col(l);
    dst[fasim_mat_index(r, c, elements_per_row, matrix_origin, transpose_matrix)] = m.elems.x;
    dst[fasim_mat_index(r, c + 1, elements_per_row, matrix_origin, transpose_matrix)] = m.elems.y;
}

// D = A * B + C over the whole SIMD group: a chain of fused multiply-adds over k starting from C (a double-precision
// step instead was measurably less faithful: fp32 backward tests at 2x the reference error failed by one ulp).
template <class TD, class TA, class TB, class TC>
FASIM_NO_HAZARD_CHECK inline void fasim_mma(simdgroup_matrix<TD, 8, 8> &d, const simdgroup_matrix<TA, 8, 8> &a,
                      const simdgroup_matrix<TB, 8, 8> &b, const simdgroup_matrix<TC, 8, 8> *c, const char *file,
                      unsigned line, const char *what) {
    fasim::ThreadCtx &x = fasim::ctx();
    uint32_t par = x.coll++ & 1u;
    float *mine = fasim_detail::slot<float>(x, par, x.lane);
    mine[0] = (float)a.elems.x;
    mine[1] = (float)a.elems.y;
    mine[2] = (float)b.elems.x;
    mine[3] = (float)b.elems.y;
    float c0 = c ? (float)c->elems.x : 0.0f, c1 = c ? (float)c->elems.y : 0.0f;
    fasim::simd_sync(x, file, line, what, fasim::kSyncSimdFull);
    if (x.lane == 0) FASIM_COUNT_MMA((fasim::mma_kind<TA, TB>()));  // once per SIMD group (all 32 lanes take part)
    uint32_t r = fasim_detail::mat_row(x.lane), col = fasim_detail::mat_col(x.lane);
    float acc[2] = {c0, c1};
    for (uint32_t j = 0; j < 2; j++) {
        for (uint32_t k = 0; k < 8; k++) {
            uint32_t oa = fasim_detail::kMatOwner.at[r][k], ob = fasim_detail::kMatOwner.at[k][col + j];
            float av = fasim_detail::slot<float>(x, par, oa >> 1)[oa & 1u];
            float bv = fasim_detail::slot<float>(x, par, ob >> 1)[2 + (ob & 1u)];
            acc[j] = __builtin_fmaf(av, bv, acc[j]);
        }
    }
    d.elems.x = TD(acc[0]);
    d.elems.y = TD(acc[1]);
}

// The MSL specification declares every operand as a non-const `thread simdgroup_matrix&`; so do we, so that code
// the simulator accepts (no const matrices, no temporaries as operands) compiles whatever Apple's header allows
// beyond that. Element types: see simdgroup_matrix above (any of float/half/bfloat per operand, as Apple's header).
template <class TD, class TA, class TB, class TC>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8> &d, simdgroup_matrix<TA, 8, 8> &a,
                                          simdgroup_matrix<TB, 8, 8> &b, simdgroup_matrix<TC, 8, 8> &c,
                                          FASIM_SITE_PARAMS) {
    fasim_mma(d, a, b, &c, fasim_file, fasim_line, "simdgroup_multiply_accumulate");
}
template <class TD, class TA, class TB>
inline void simdgroup_multiply(simdgroup_matrix<TD, 8, 8> &d, simdgroup_matrix<TA, 8, 8> &a,
                               simdgroup_matrix<TB, 8, 8> &b, FASIM_SITE_PARAMS) {
    fasim_mma(d, a, b, (const simdgroup_matrix<TD, 8, 8> *)nullptr, fasim_file, fasim_line, "simdgroup_multiply");
}

}  // namespace metal
