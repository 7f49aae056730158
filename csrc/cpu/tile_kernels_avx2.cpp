// tile_kernels_avx2.cpp - AVX2 (+FMA, +F16C) kernels for the query-lane layout of tile_kernels.h, for x86-64 CPUs
// without AVX-512.
//
// Compiled for any x86-64 target; the AVX2 code lives in FA_TARGET_BEGIN(FA_ISA_AVX2) regions and is only reached
// after isa_dispatch.cpp has checked the CPU (no -march flag, no illegal instruction on older CPUs).
//   The layout is the AVX-512 one (LANES = 16 query rows per "vector", BLOCK_M = 64): each 16-lane vector is two
//   8-lane ymm registers here.
//   Products: micro-kernels C[R rows][32 lanes] += A[r][k] (broadcast from the prepared K or V tile) * B[k][lanes],
//   3 rows x 4 ymm = 12 accumulators + 4 B vectors + 1 broadcast (17 values for 16 ymm registers: the compiler re-reads
//   one from L1); an odd last 16-lane vector uses 6 rows x 2 ymm. fp32 FMA. The 32-lane
//   tile measured ~8% faster than 6 x 16 lanes alone on Zen 4 (fewer loads per FMA).
//   fp16 K/V widened to fp32 with vcvtph2ps, bf16 by a 16-bit shift (exact), once per K/V tile and work item; Q the
//   same way when packed. So every dtype runs the fp32 products (AVX2 has no bf16 dot product; P stays fp32).
//   Softmax: 8 lanes at a time, exp2 by avx2::Ops::exp2 (clamped: safe for any logit).
//   O out: the driver's scalar write-out (write_rows = nullptr); few-row tiles use the lane layout too.
// The kernel bodies are lane_kernels.h's, shared with NEON; avx2::Ops (avx2_common.h) picks the instructions.
#include <cmath>
#include <cstring>

#include "avx2_common.h"
#include "cpu_dtype.h"
#include "tile_kernels.h"

#ifdef FA_HAVE_AVX2_KERNELS
// The kernels: lane_kernels.h instantiated with avx2::Ops, inside the AVX2 target region.
FA_TARGET_BEGIN(FA_ISA_AVX2)
#include "lane_kernels.h"
FA_TARGET_END
#endif

namespace fa_cpu {

#ifdef FA_HAVE_AVX2_KERNELS

const TileKernels<float> *avx2_kernels(fa_dtype dt) {
    using T = lane::Tables<avx2::Ops>;
    return table_for(dt, &T::k[0], &T::k[1], &T::k[2]);
}

#else

const TileKernels<float> *avx2_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
