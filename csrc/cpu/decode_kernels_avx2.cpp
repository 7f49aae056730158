// decode_kernels_avx2.cpp - AVX2 (+FMA, +F16C) decode kernels (see decode_kernels.h for the memory-order walk), for
// x86-64 CPUs without AVX-512.
//
//   fp32 FMA over the head dim, 8 lanes; fp16 widened on load with vcvtph2ps, bf16 by a 16-bit shift (exact); O += p V
//   in fp32; a K/V vector load shared by 2 query rows of a KV head (16 ymm registers). The kernel bodies are
//   decode_simd.h's, shared with NEON; avx2::Ops (avx2_common.h) picks the instructions.
#include <cmath>
#include <type_traits>

#include "avx2_common.h"
#include "cpu_dtype.h"
#include "decode_kernels.h"

#ifdef FA_HAVE_AVX2_KERNELS
FA_TARGET_BEGIN(FA_ISA_AVX2)
#include "decode_simd.h"
FA_TARGET_END
#endif

namespace fa_cpu {

#ifdef FA_HAVE_AVX2_KERNELS

const DecodeKernels *avx2_decode_kernels(fa_dtype dt) {
    using T = decode_simd::Tables<avx2::Ops>;
    return table_for(dt, &T::k[0], &T::k[1], &T::k[2]);
}

#else

const DecodeKernels *avx2_decode_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
