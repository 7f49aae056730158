// tile_kernels_portable.cpp - reference-quality portable kernels in the query-lane layout (see tile_kernels.h).
//
// Plain loops whose innermost axis runs over the contiguous query lanes, so any optimizing compiler vectorizes them
// for the baseline ISA (SSE2 on x86-64, NEON on arm64). Used for fp64 (gradient checks) and on CPUs without AVX-512.
#include <cmath>
#include <cstring>

#include "cpu_dtype.h"
#include "tile_kernels.h"

namespace fa_cpu {
namespace {

// Element access for each storage type.
template <fa_dtype DT> struct Elem;
template <> struct Elem<FA_F32> { static float get(const void *p, int64_t i) { return static_cast<const float *>(p)[i]; } };
template <> struct Elem<FA_F64> { static double get(const void *p, int64_t i) { return static_cast<const double *>(p)[i]; } };
template <> struct Elem<FA_F16> { static float get(const void *p, int64_t i) { return f16_to_f32(static_cast<const uint16_t *>(p)[i]); } };
template <> struct Elem<FA_BF16> { static float get(const void *p, int64_t i) { return bf16_to_f32(static_cast<const uint16_t *>(p)[i]); } };

template <fa_dtype DT, typename Acc>
void pack_qT(const void *const *rows, int nrows, int d, int nv, void *qT_) {
    Acc *qT = static_cast<Acc *>(qT_);
    const int lanes = nv * LANES;
    for (int k = 0; k < d; ++k) {
        for (int r = 0; r < nrows; ++r) qT[k * BLOCK_M + r] = Acc(Elem<DT>::get(rows[r], k));
        for (int r = nrows; r < lanes; ++r) qT[k * BLOCK_M + r] = Acc(0);
    }
}

template <fa_dtype DT, typename Acc>
void scores(const KvTile &kt, int j0, int nk, int d, const void *qT_, int nv, Acc *sT, void *) {
    const Acc *qT = static_cast<const Acc *>(qT_);
    const int64_t kstride = kt.stride;
    const void *k = elem_ptr(kt.rows, j0 * kstride, DT);
    const int lanes = nv * LANES;
    for (int j = 0; j < nk; ++j) {
        Acc *s = sT + j * BLOCK_M;
        for (int r = 0; r < lanes; ++r) s[r] = Acc(0);
        for (int c = 0; c < d; ++c) {
            const Acc kv = Acc(Elem<DT>::get(k, j * kstride + c));
            const Acc *q = qT + c * BLOCK_M;
            for (int r = 0; r < lanes; ++r) s[r] += kv * q[r];
        }
    }
}

template <typename Acc>
void softmax(Acc *sT, int nk, int nv, Acc mul, Acc *m, Acc *l, Acc *alpha) {
    const int lanes = nv * LANES;
    const Acc neg_inf = -INFINITY;
    Acc m_new[BLOCK_M];
    for (int r = 0; r < lanes; ++r) m_new[r] = m[r];
    for (int j = 0; j < nk; ++j) {
        Acc *s = sT + j * BLOCK_M;
        for (int r = 0; r < lanes; ++r) {
            s[r] *= mul;
            m_new[r] = s[r] > m_new[r] ? s[r] : m_new[r];
        }
    }
    Acc m_use[BLOCK_M], sum[BLOCK_M];
    for (int r = 0; r < lanes; ++r) {
        // A row that has seen only masked keys keeps m = -inf; use 0 so exp2(-inf - 0) = 0 instead of NaN.
        m_use[r] = m_new[r] == neg_inf ? Acc(0) : m_new[r];
        alpha[r] = std::exp2(m[r] - m_use[r]);
        m[r] = m_new[r];
        sum[r] = Acc(0);
    }
    for (int j = 0; j < nk; ++j) {
        Acc *s = sT + j * BLOCK_M;
        for (int r = 0; r < lanes; ++r) {
            s[r] = std::exp2(s[r] - m_use[r]);
            sum[r] += s[r];
        }
    }
    for (int r = 0; r < lanes; ++r) l[r] = l[r] * alpha[r] + sum[r];
}

template <fa_dtype DT, typename Acc>
void pv(const KvTile &vt, int j0, int nk, int d, const void *p_, int nv, const Acc *alpha, Acc *oT, void *) {
    const Acc *pT = static_cast<const Acc *>(p_);
    const int lanes = nv * LANES;
    const int64_t vstride = vt.stride;
    const void *v = elem_ptr(vt.rows, j0 * vstride, DT);
    for (int c = 0; c < d; ++c) {
        Acc *o = oT + c * BLOCK_M;
        for (int r = 0; r < lanes; ++r) o[r] *= alpha[r];
        for (int j = 0; j < nk; ++j) {
            const Acc vv = Acc(Elem<DT>::get(v, j * vstride + c));
            const Acc *p = pT + j * BLOCK_M;
            for (int r = 0; r < lanes; ++r) o[r] += vv * p[r];
        }
    }
}

template <fa_dtype DT, typename Acc>
TileKernels<Acc> make_table(const char *name) {
    return TileKernels<Acc>{name, &pack_qT<DT, Acc>, &scores<DT, Acc>, &softmax<Acc>, &pv<DT, Acc>,
                            nullptr, nullptr, nullptr,       // no row layout
                            nullptr, nullptr, nullptr, nullptr, nullptr};  // K/V in place, fp32 P, scalar write-out
}

const TileKernels<float> k_f32 = make_table<FA_F32, float>("portable-f32");
const TileKernels<float> k_f16 = make_table<FA_F16, float>("portable-f16");
const TileKernels<float> k_bf16 = make_table<FA_BF16, float>("portable-bf16");
const TileKernels<double> k_f64 = make_table<FA_F64, double>("portable-f64");

}  // namespace

const TileKernels<float> *portable_kernels_f32(fa_dtype dt) {
    return table_for(dt, &k_f32, &k_f16, &k_bf16);
}
const TileKernels<double> *portable_kernels_f64() { return &k_f64; }

}  // namespace fa_cpu
