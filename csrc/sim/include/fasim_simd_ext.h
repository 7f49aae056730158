// fasim_simd_ext.h - the SIMD-group permutes of MSL 2.4+ that fasim_simd.h does not cover: simd_shuffle_rotate_up/
// down, simd_shuffle_and_fill_up/down (with and without `modulo`), and the prefix products (MSL specification 3.1,
// §6.9.2 "SIMD-Group Functions", Table 6.13). llama.cpp's ggml-metal.metal and MLX's bf16_math.h use them.
//
// As in fasim_simd.h, each call is one collective: every lane publishes its operands in its exchange slot, waits for
// the group, then reads the lane the specification names. A source lane that is not active yields the caller's own
// `data` (the value is undefined on a GPU; fasim_shuffle_from does the same for simd_shuffle).
#pragma once

#include "fasim_simd.h"

namespace metal {

namespace fasim_detail {
template <class T> struct FillPair {
    T data, fill;
};
// Lane `src` of the group's published (data, filling_data) pairs, taking `fill` when from_fill; inactive -> own data.
template <class T>
FASIM_NO_HAZARD_CHECK inline T fill_from(fasim::ThreadCtx &c, uint32_t par, long src, bool from_fill, const T &own) {
    if (src < 0 || src >= fasim::kSimdWidth || !(c.sg->mask[par] >> src & 1u)) return own;
    const FillPair<T> *p = slot<FillPair<T>>(c, par, (uint32_t)src);
    return from_fill ? p->fill : p->data;
}
}  // namespace fasim_detail

// The specification: "Returns data or filling_data for each vector from the thread whose SIMD lane ID is the
// difference from the caller's SIMD lane ID minus delta. If the difference is negative, the function copies values
// from the upper delta lanes of filling_data to the lower delta lanes of data. [...] The modulo parameter defines the
// vector width that splits the SIMD group into separate vectors", i.e. each segment of `modulo` lanes is shuffled on
// its own: lane l of segment base b takes data[b + l%modulo - delta], or filling_data[b + l%modulo - delta + modulo]
// when that index falls below the segment. delta must be below modulo (a larger one is undefined in MSL: an error
// fault here).
// For _down: "... the sum of the caller's SIMD lane ID and delta. If the sum is greater than the SIMD-group size, the
// function copies values from the lower delta lanes of filling_data into the upper delta lanes of data"; per segment
// as above. The two directions differ only in the sign of delta and in which end of the segment wraps into
// filling_data, so one collective serves both (`up` picks the direction, `fn` names the call in faults).
namespace fasim_detail {
template <class T>
FASIM_NO_HAZARD_CHECK inline T shuffle_and_fill(T data, T filling_data, ushort delta, ushort modulo, bool up,
                                                const char *fasim_file, unsigned fasim_line, const char *fn,
                                                const char *bad_modulo) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = exchange(c, FillPair<T>{data, filling_data}, fasim_file, fasim_line, fn);
    if (modulo == 0 || modulo > fasim::kSimdWidth || delta >= modulo)
        fasim::kernel_error("error", fasim_file, fasim_line, bad_modulo);
    long base = (long)(c.lane - c.lane % modulo), idx = (long)(c.lane % modulo) + (up ? -(long)delta : (long)delta);
    if (idx < 0) return fill_from(c, par, base + idx + modulo, true, data);
    if (idx >= (long)modulo) return fill_from(c, par, base + idx - modulo, true, data);
    return fill_from(c, par, base + idx, false, data);
}
}  // namespace fasim_detail

// Each direction with and without `modulo` (32, the whole group, when left out); NAME also names it in faults.
#define FASIM_SHUFFLE_AND_FILL(NAME, UP)                                                                     \
    template <class T>                                                                                       \
    FASIM_NO_HAZARD_CHECK inline T NAME(T data, T filling_data, ushort delta, ushort modulo, FASIM_SITE_PARAMS) { \
        return fasim_detail::shuffle_and_fill(data, filling_data, delta, modulo, UP, fasim_file, fasim_line, #NAME, \
                                              #NAME ": delta must be below modulo (<= 32)");                 \
    }                                                                                                        \
    template <class T>                                                                                       \
    FASIM_NO_HAZARD_CHECK inline T NAME(T data, T filling_data, ushort delta, FASIM_SITE_PARAMS) {           \
        return NAME(data, filling_data, delta, (ushort)fasim::kSimdWidth, fasim_file, fasim_line);           \
    }
FASIM_SHUFFLE_AND_FILL(simd_shuffle_and_fill_up, true)
FASIM_SHUFFLE_AND_FILL(simd_shuffle_and_fill_down, false)
#undef FASIM_SHUFFLE_AND_FILL

// "Returns data from the thread whose SIMD lane ID is the caller's minus (plus) delta, wrapping around the group."
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_shuffle_rotate_up(T v, ushort delta, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    long src = ((long)c.lane - (long)(delta % fasim::kSimdWidth) + fasim::kSimdWidth) % fasim::kSimdWidth;
    return fasim_shuffle_from(c, v, src, fasim_file, fasim_line, "simd_shuffle_rotate_up");
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_shuffle_rotate_down(T v, ushort delta, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    long src = ((long)c.lane + (long)(delta % fasim::kSimdWidth)) % fasim::kSimdWidth;
    return fasim_shuffle_from(c, v, src, fasim_file, fasim_line, "simd_shuffle_rotate_down");
}

// Products over the active lanes below (exclusive) or up to (inclusive) the caller; the empty product is 1.
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_prefix_inclusive_product(T v, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, v, fasim_file, fasim_line, "simd_prefix_inclusive_product");
    T acc = T(1);
    for (uint32_t l = 0; l <= c.lane; l++)
        if (c.sg->mask[par] >> l & 1u) acc = acc * *fasim_detail::slot<T>(c, par, l);
    return acc;
}
template <class T> FASIM_NO_HAZARD_CHECK inline T simd_prefix_exclusive_product(T v, FASIM_SITE_PARAMS) {
    fasim::ThreadCtx &c = fasim::ctx();
    uint32_t par = fasim_detail::exchange(c, v, fasim_file, fasim_line, "simd_prefix_exclusive_product");
    T acc = T(1);
    for (uint32_t l = 0; l < c.lane; l++)
        if (c.sg->mask[par] >> l & 1u) acc = acc * *fasim_detail::slot<T>(c, par, l);
    return acc;
}

}  // namespace metal
