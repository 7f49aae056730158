// bwd_dtype.h - element conversions between the storage dtypes of fa_params (fp16, bf16, fp32, fp64) and the
// accumulation type of the CPU backward (float, or double for FA_F64).
//
// Conversions happen once per tile load/store, never in the inner products, so plain portable bit manipulation is
// enough (no dependence on _Float16 or F16C support). Rounding is to nearest even, as numpy/torch do.
#pragma once

#include <cstdint>
#include <cstring>

namespace fa_bwd {

struct half_bits { uint16_t bits; };   // IEEE binary16 as stored in memory
struct bf16_bits { uint16_t bits; };   // bfloat16 as stored in memory

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: value = man * 2^-24
        float v = (float)man * 5.9604644775390625e-08f;
        return (h & 0x8000u) ? -v : v;
    }
    if (exp == 31) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
    return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_half(float f) {
    const uint32_t u = float_to_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));  // inf / nan
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: overflow to inf
    if (a < 0x38800000u) {
        // result is subnormal (or zero): round a * 2^24 to an integer, ties to even
        const float v = bits_to_float(a) * 16777216.0f;  // exact scaling by a power of two
        uint32_t m = (uint32_t)v;
        const float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
        return (uint16_t)(sign | m);
    }
    // normal: drop 13 mantissa bits with round-to-nearest-even
    uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
    r += 0x0fffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

inline float bf16_to_float(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

inline uint16_t float_to_bf16(float f) {
    uint32_t u = float_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet nan
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// load/store one element of storage type T as accumulation type A
template <typename T, typename A> struct elem;
template <typename A> struct elem<float, A> {
    static A load(const float *p) { return (A)*p; }
    static void store(float *p, A v) { *p = (float)v; }
};
template <typename A> struct elem<double, A> {
    static A load(const double *p) { return (A)*p; }
    static void store(double *p, A v) { *p = (double)v; }
};
template <typename A> struct elem<half_bits, A> {
    static A load(const half_bits *p) { return (A)half_to_float(p->bits); }
    static void store(half_bits *p, A v) { p->bits = float_to_half((float)v); }
};
template <typename A> struct elem<bf16_bits, A> {
    static A load(const bf16_bits *p) { return (A)bf16_to_float(p->bits); }
    static void store(bf16_bits *p, A v) { p->bits = float_to_bf16((float)v); }
};

}  // namespace fa_bwd
