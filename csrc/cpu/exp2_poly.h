// exp2_poly.h - the one coefficient table of the CPU kernels' exp2: 2^f = sum_k (ln2)^k / k! f^k for |f| <= 1/2,
// used by every vector exp2 (simd_generic.h for AVX2/NEON and decode, avx512_common.h, the AVX2 forward's softmax).
// Constants only, no includes: it may be included inside an ISA target region.
#pragma once

namespace fa_cpu {

// (ln2)^k / k!, k = 0..7 (degree 7: truncation < 6e-9 relative; lower degrees take a prefix)
constexpr float EXP2_POLY[8] = {1.0f, 0.693147180559945f, 0.240226506959101f, 0.0555041086648216f,
                                0.00961812910762848f, 0.00133335581464284f, 0.000154035303933816f,
                                1.52527338040598e-05f};

}  // namespace fa_cpu
