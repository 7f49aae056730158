// cpu_dtype.h - scalar element conversions for the CPU backend.
//
// fp16 and bf16 travel through the ABI as raw uint16_t bit patterns. These helpers convert them to and from fp32
// with IEEE round-to-nearest-even, so the portable path needs no compiler support for _Float16/__bf16.
#pragma once

#include <cstdint>
#include <cstring>

#include "fa_abi.h"

namespace fa_cpu {

// One kernel set's table for dtype dt, among its fp32, fp16 and bf16 tables (nullptr for another dtype, or where the
// set has no table for it): the per-ISA avx512_kernels / avx2_kernels / portable_kernels and their decode twins.
template <class Table>
inline const Table *table_for(fa_dtype dt, const Table *f32, const Table *f16, const Table *bf16) {
    switch (dt) {
        case FA_F32: return f32;
        case FA_F16: return f16;
        case FA_BF16: return bf16;
        default: return nullptr;
    }
}

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float bits_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                           // round to nearest even
    return uint16_t(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / NaN
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        // subnormal: value = man * 2^-24, exact in fp32
        float v = float(man) * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: overflow to inf
    if (a < 0x38800000u) {
        // result is subnormal (or zero) in fp16: quantum 2^-24. Adding 0.5 (=2^-1) as a float aligns the
        // mantissa so the FPU's own round-to-nearest-even does the rounding.
        float v = bits_f32(a) + 0.5f;
        return uint16_t(sign | uint16_t(f32_bits(v) - 0x3f000000u));
    }
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return uint16_t(sign | uint16_t(a >> 13));
}

// Load element `idx` of a row in dtype `dt` as float/double.
template <typename Acc>
inline Acc load_elem(const void *base, int64_t idx, fa_dtype dt) {
    switch (dt) {
        case FA_F32: return Acc(static_cast<const float *>(base)[idx]);
        case FA_F16: return Acc(f16_to_f32(static_cast<const uint16_t *>(base)[idx]));
        case FA_BF16: return Acc(bf16_to_f32(static_cast<const uint16_t *>(base)[idx]));
        case FA_F64: return Acc(static_cast<const double *>(base)[idx]);
    }
    return Acc(0);
}

template <typename Acc>
inline void store_elem(void *base, int64_t idx, fa_dtype dt, Acc v) {
    switch (dt) {
        case FA_F32: static_cast<float *>(base)[idx] = float(v); break;
        case FA_F16: static_cast<uint16_t *>(base)[idx] = f32_to_f16(float(v)); break;
        case FA_BF16: static_cast<uint16_t *>(base)[idx] = f32_to_bf16(float(v)); break;
        case FA_F64: static_cast<double *>(base)[idx] = double(v); break;
    }
}

inline int64_t dtype_size(fa_dtype dt) { return dt == FA_F64 ? 8 : (dt == FA_F32 ? 4 : 2); }

// Pointer arithmetic in elements of dtype `dt`.
inline const void *elem_ptr(const void *base, int64_t off, fa_dtype dt) {
    return static_cast<const char *>(base) + off * dtype_size(dt);
}
inline void *elem_ptr(void *base, int64_t off, fa_dtype dt) { return static_cast<char *>(base) + off * dtype_size(dt); }

}  // namespace fa_cpu
