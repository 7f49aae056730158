// fa_plan_internal.h - pieces of the dispatch plan shared by the files of csrc/plan (not a public contract).
#pragma once

#include <cstdint>

#include "fa_plan.h"
#include "fa_plan_build.h"

namespace faplan {

// Bytes of one element of the params dtype (F64 is CPU-only: 0).
int elem_bytes(fa_dtype t);
// "f16" / "bf16" / "f32" kernel-name suffix, nullptr for an unsupported dtype.
const char *dtype_tag(fa_dtype t);

// Extent, in elements, of a strided [n0, n1, n2, d] view (strides in elements, last stride 1): the largest offset
// touched plus one, 0 when any extent is 0.
int64_t view_extent(int64_t n0, int64_t s0, int64_t n1, int64_t s1, int64_t n2, int64_t s2, int64_t d);

// Byte extents the executors bounds-check, of tensors laid out as fa_abi.h describes: a q-side tensor (q, out,
// dout, dq) and a k-side tensor (k, v, dk, dv; not a paged or batch-indexed cache) in the dense
// [batch, rows, heads, d] or packed varlen [total, heads, d] layout, the fp32 LSE, the fp32 ALiBi slopes.
int64_t q_side_bytes(const fa_params *p, const fa_tensor &t, int eb);
int64_t k_side_bytes(const fa_params *p, const fa_tensor &t, int eb);
int64_t lse_bytes(const fa_params *p);
int64_t alibi_bytes(const fa_params *p);

// Byte sizes of the int32 side buffers the call gives (cu_seqlens_q/k, seqused_k, leftpad_k, cache_batch_idx,
// block_table) into plan->buffer_bytes.
void set_index_buffer_bytes(const fa_params *p, fa_plan *plan);

// Optional kernel arguments a launch does not use are still bound (Metal's validation and the simulator want every
// [[buffer(n)]] of the entry point bound): to FA_PLAN_DUMMY_BUFFER, a 16-byte plan-owned scratch buffer the
// kernels never touch because the flag that would make them read it is clear.
#define FA_PLAN_DUMMY_BUFFER FA_BUF_SCRATCH3
#define FA_PLAN_DUMMY_BYTES 16

// Bit of a logical buffer in LaunchSpec::placeholder.
constexpr uint64_t buffer_bit(fa_buffer_id id) { return uint64_t(1) << id; }

// The descriptor of one kernel: its family and template constants T (the dtype), BD (head-dim bucket; 0 = the
// family has none) and ROWS (query rows of the vector kernels; 0 = none).
fa_kernel_desc kernel_desc(fa_kernel_family family, fa_dtype dtype, int bd = 0, int rows = 0);

// Everything a launch is made of besides its constant block.
struct LaunchSpec {
    fa_kernel_desc desc;
    uint32_t grid[3];
    uint32_t threads;          // threads per threadgroup (one dimension)
    uint32_t threadgroup_bytes;
    fa_tile tile;
    uint64_t placeholder;      // buffer_bit()s of logical buffers to bind the placeholder for even when present
};

// Append a launch: the kernel name derived from the descriptor, every buffer argument of the family's signature
// (kernels/fa_kernel_args.h) bound to its logical buffer when the plan gives that memory (buffer_bytes or
// scratch_bytes > 0, so set those first) and to the placeholder otherwise, and the constant block at
// FA_KERNEL_PARAMS_INDEX, whose size must be that of the family's block. FA_OK, or FA_ERR_RUNTIME with a message.
int add_launch(fa_plan *plan, const LaunchSpec &spec, const void *constants, uint32_t constants_size, char *err,
               size_t errlen);
template <class Block>
int add_launch(fa_plan *plan, const LaunchSpec &spec, const Block &constants, char *err, size_t errlen) {
    return add_launch(plan, spec, &constants, uint32_t(sizeof(constants)), err, errlen);
}

// Whether an optional tensor is present: its host pointer is set or, for the Metal backend, it is given as an
// MTLBuffer handle in p->device_buffers (PyTorch MPS tensors arrive that way with NULL host pointers).
bool has_tensor(const fa_params *p, const void *host_ptr, fa_buffer_id slot);

// The checks every attention plan (forward, backward) makes: headdim in 1..FA_MAX_HEADDIM and equal to headdim_v,
// nheads_q a positive multiple of nheads_kv, 0 <= dropout_p < 1. FA_OK, or the error code with the message in err.
int check_attention_shape(const fa_params *p, char *err, size_t errlen);

// Formats a message into err (always NUL-terminated) and returns code. Also the error path of csrc/fa_check.cpp.
int fail(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

}  // namespace faplan

// Backward plan (csrc/plan/fa_plan_backward.cpp, owned by the backward component). fa_plan_build dispatches
// FA_PLAN_BACKWARD to it. Same contract as fa_plan_build.
int fa_plan_backward(const fa_params *p, fa_plan *out, char *err, size_t errlen);

// Forward and KV-cache append plans (fa_plan_forward.cpp, fa_plan_kvcache.cpp).
// allow_vector = false plans decode calls with the fragment kernel instead of the 256-thread vector kernels
// (fa_plan_build_for_device, when the device's vector pipeline allows fewer threads).
int fa_plan_forward(const fa_params *p, fa_plan *out, char *err, size_t errlen, bool allow_vector = true);
int fa_plan_kvcache_append(const fa_params *p, const fa_kvcache_update *u, fa_plan *out, char *err, size_t errlen);
