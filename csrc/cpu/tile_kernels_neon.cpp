// tile_kernels_neon.cpp - Arm NEON (AArch64 Advanced SIMD) kernels for the query-lane layout of tile_kernels.h.
//
// Compiled in AArch64 builds only (neon_common.h); chosen at run time by isa_dispatch.cpp.
//   The layout is the AVX-512 one (LANES = 16 query rows per "vector", BLOCK_M = 64): each 16-lane vector is four
//   128-bit q registers here.
//   Products: micro-kernels C[R rows][16 lanes] += A[r][k] (from the prepared K or V tile, by-element FMLA) *
//   B[k][lanes], 6 rows x 4 q registers = 24 accumulators + 4 B vectors + the A values: 30 of the 32 registers.
//   fp16 K/V widened to fp32 with fcvtl, bf16 by a 16-bit shift (exact), once per K/V tile and work item; Q the same
//   way when packed. So every dtype runs the fp32 products (P stays fp32; the bf16 dot-product extension BFDOT is not
//   used yet).
//   Softmax: 4 lanes at a time, exp2 by neon::Ops::exp2 (clamped: safe for any logit).
//   O out: the driver's scalar write-out (write_rows = nullptr); few-row tiles use the lane layout too.
// The kernel bodies are lane_kernels.h's, shared with AVX2; neon::Ops (neon_common.h) picks the instructions.
// Speed on real Arm hardware has never been measured: these kernels were built with a cross compiler and checked
// under user-mode emulation (qemu-aarch64) only.
#include <cmath>
#include <cstring>

#include "cpu_dtype.h"
#include "neon_common.h"
#include "tile_kernels.h"

#ifdef FA_HAVE_NEON_KERNELS
#include "lane_kernels.h"  // the kernels, instantiated with neon::Ops (AArch64 needs no target region)
#endif

namespace fa_cpu {

#ifdef FA_HAVE_NEON_KERNELS

const TileKernels<float> *neon_kernels(fa_dtype dt) {
    using T = lane::Tables<neon::Ops>;
    return table_for(dt, &T::k[0], &T::k[1], &T::k[2]);
}

#else

const TileKernels<float> *neon_kernels(fa_dtype) { return nullptr; }

#endif

}  // namespace fa_cpu
