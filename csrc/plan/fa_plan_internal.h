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

// Launch building helpers.
void launch_init(fa_launch *l, const char *kernel, const uint32_t grid[3], const uint32_t threads[3],
                 uint32_t tg_bytes);
void launch_bind(fa_launch *l, int index, fa_buffer_id buffer, int64_t byte_offset = 0);
// Optional kernel arguments a launch does not use are still bound (Metal's validation and the simulator want every
// [[buffer(n)]] of the entry point bound): to FA_PLAN_DUMMY_BUFFER, a 16-byte plan-owned scratch buffer the
// kernels never touch because the flag that would make them read it is clear.
#define FA_PLAN_DUMMY_SCRATCH 3
#define FA_PLAN_DUMMY_BUFFER FA_BUF_SCRATCH3
#define FA_PLAN_DUMMY_BYTES 16
// Bind the dummy at every index in [0, count) of `indices` not bound yet, and reserve its memory in the plan.
void launch_bind_unused(fa_plan *plan, fa_launch *l, const int *indices, int count);
void launch_constants(fa_launch *l, int index, const void *data, uint32_t size);

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
// (fa_plan_build_forward_without_vector).
int fa_plan_forward(const fa_params *p, fa_plan *out, char *err, size_t errlen, bool allow_vector = true);
int fa_plan_kvcache_append(const fa_params *p, const fa_kvcache_update *u, fa_plan *out, char *err, size_t errlen);
