// row_output.h - writing a finished query row: where its output row is, 1/l, and its LSE. Shared by the general
// forward (attention_forward.cpp) and decode (decode_forward.cpp) so both treat empty and NaN rows alike.
#pragma once

#include <cmath>
#include <cstdint>

#include "cpu_dtype.h"
#include "score_features.h"
#include "seq_geometry.h"

namespace fa_cpu {

// 1/l of a row, 0 for a row that saw no key. !(l <= 0) rather than l > 0: a NaN row sum (NaN/inf input) must give
// NaN, not the zeros of an empty row.
template <typename Acc>
inline Acc row_inv_sum(Acc l) { return !(l <= 0) ? Acc(1) / l : Acc(0); }

inline void *out_row_ptr(const fa_params *p, const SeqGeometry &g, const RowInfo &row) {
    return elem_ptr(p->out.data, g.out_row0 + int64_t(row.i) * p->out.row_stride + int64_t(row.head) * p->out.head_stride,
                    p->dtype);
}

// The row's LSE (natural log; +inf when the row saw no key), if the caller asked for LSEs. m and l are in log2 units.
template <typename Acc>
inline void write_row_lse(const fa_params *p, const SeqGeometry &g, const RowInfo &row, Acc m, Acc l) {
    if (!p->lse) return;
    const float lse = !(l <= 0) ? float((double(m) + std::log2(double(l))) * LN2) : INFINITY;
    p->lse[g.lse_row0 + int64_t(row.head) * p->lse_head_stride + int64_t(row.i) * p->lse_row_stride] = lse;
}

}  // namespace fa_cpu
