/*
 * fa_plan.h - the dispatch plan shared by the Metal shim (objc/) and the Metal simulator (csrc/sim/): the descriptor
 * the executors read. It declares types only, so that the executors below the plan layer can include it; the
 * builders that fill it are declared in fa_plan_build.h.
 *
 * fa_plan_build() turns validated fa_params into a list of kernel launches. The C ABI (csrc/fa_abi.cpp) builds one
 * plan per call and hands that object to the executor, which only follows it: the simulator (csrc/sim_backend.cpp)
 * runs it on the CPU, the shim (objc/fa_metal_execute.mm) encodes it into one Metal command buffer. Each launch
 * is typed: which kernel (a family and its specialisation constants, fa_kernel_desc), the grid of threadgroups, the
 * threads per threadgroup, the tile the plan chose, the threadgroup memory it needs, the buffers it binds (a logical
 * buffer, fa_buffers.h, at a [[buffer(n)]] index, kernels/fa_kernel_args.h) and its constant block (setBytes).
 * The kernel's Metal function name, which is also the simulator's registry name, is derived from the descriptor by
 * fa_kernel_name(); nothing parses it back. describe_plan's JSON (fa_plan_json.cpp) is for display and tests only.
 * Launches run in order; each one sees the writes of the previous ones (one compute encoder per launch or a barrier
 * between them).
 */
#ifndef FA_PLAN_H
#define FA_PLAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../fa_abi.h"
#include "fa_buffers.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FA_PLAN_MAX_LAUNCHES 8
#define FA_PLAN_MAX_BINDINGS 24
#define FA_PLAN_MAX_CONSTANT_BYTES 1024
#define FA_PLAN_KERNEL_NAME_LEN 96
#define FA_PLAN_MAX_SPECS 8
#define FA_SPEC_NAME_LEN 16

/* Kernel families: one per kernel template of kernels/, with the pattern of its Metal function names ({NAME} is the
 * template specialisation constant NAME; {T} prints as the dtype tag f16 / bf16 / f32), the signature of its buffer
 * arguments (kernels/fa_kernel_args.h) and the constant block it reads.
 * X(ID, name, function_name_pattern, signature, index_space, constant_block) */
#define FA_KERNEL_FAMILIES(X)                                                                                      \
    X(PREFILL, "prefill", "fa_fwd_{T}_d{BD}", FA_ATTENTION_SIGNATURE, FWD, fa_fwd_params)                         \
    X(FRAGMENT, "fragment", "fa_dec_{T}_d{BD}", FA_ATTENTION_SIGNATURE, FWD, fa_fwd_params)                       \
    X(VECTOR, "vector", "fa_vec{ROWS}_{T}_d{BD}", FA_ATTENTION_SIGNATURE, FWD, fa_fwd_params)                     \
    X(MERGE, "merge", "fa_merge_{T}", FA_MERGE_SIGNATURE, MERGE, fa_merge_params)                                 \
    X(PROBS, "probs", "fa_probs_{T}", FA_PROBS_SIGNATURE, FWD, fa_fwd_params)                                     \
    X(KVCACHE_APPEND, "kvcache_append", "fa_kvcache_append_{T}", FA_APPEND_SIGNATURE, APPEND, fa_append_params)   \
    X(BWD_PRE, "bwd_pre", "fa_bwd_pre_{T}", FA_BWD_PRE_SIGNATURE, BWD, fa_bwd_params)                             \
    X(BWD_DQ, "bwd_dq", "fa_bwd_dq_{T}_d{BD}", FA_BWD_DQ_SIGNATURE, BWD, fa_bwd_params)                           \
    X(BWD_DKDV, "bwd_dkdv", "fa_bwd_dkdv_{T}_d{BD}", FA_BWD_DKDV_SIGNATURE, BWD, fa_bwd_params)                 \
    X(PREFILL_LONG, "prefill_long", "fa_fwd_long_{T}_d{BD}", FA_ATTENTION_SIGNATURE, FWD, fa_fwd_params)          \
    X(BWD_DQ_LONG, "bwd_dq_long", "fa_bwd_dq_long_{T}_d{BD}", FA_BWD_DQ_SIGNATURE, BWD, fa_bwd_params)            \
    X(BWD_DKDV_LONG, "bwd_dkdv_long", "fa_bwd_dkdv_long_{T}_d{BD}", FA_BWD_DKDV_SIGNATURE, BWD, fa_bwd_params)

#define FA_KERNEL_FAMILY_ENUM_(ID, name, pattern, signature, space, block) FA_KERNEL_##ID,
typedef enum fa_kernel_family { FA_KERNEL_FAMILIES(FA_KERNEL_FAMILY_ENUM_) FA_KERNEL_FAMILY_COUNT } fa_kernel_family;
#undef FA_KERNEL_FAMILY_ENUM_

/* Type of a specialisation constant. DTYPE (an fa_dtype) only selects a template instance: Metal cannot specialise
 * an element type at pipeline creation. The others map to MTLDataType (Int, UInt, Bool, Float) for function
 * constants. */
typedef enum fa_spec_type { FA_SPEC_DTYPE = 0, FA_SPEC_INT, FA_SPEC_UINT, FA_SPEC_BOOL, FA_SPEC_FLOAT } fa_spec_type;

/* index of a constant that is a template parameter of the kernel, selected by the function name */
#define FA_SPEC_TEMPLATE (-1)

typedef union fa_spec_value {
    int32_t i; /* DTYPE (fa_dtype), INT, BOOL (0 / 1) */
    uint32_t u;
    float f;
} fa_spec_value;

/* One specialisation constant: a template parameter of today's kernels (index FA_SPEC_TEMPLATE: part of the function
 * name), or a Metal function constant, [[function_constant(index)]], that an executor passes when it creates the
 * pipeline (MTLFunctionConstantValues setConstantValue:type:atIndex:, or the simulator's equivalent). */
typedef struct fa_spec_constant {
    char name[FA_SPEC_NAME_LEN]; /* "T", "BD", "ROWS", or the function constant's name */
    int32_t index;               /* [[function_constant(index)]] or FA_SPEC_TEMPLATE */
    int32_t type;                /* fa_spec_type */
    fa_spec_value value;
} fa_spec_constant;

/* Which kernel a launch runs: its family and specialisation constants. */
typedef struct fa_kernel_desc {
    int32_t family; /* fa_kernel_family */
    int32_t nspecs;
    fa_spec_constant specs[FA_PLAN_MAX_SPECS];
} fa_kernel_desc;

/* The tile the plan chose for a launch (zeros for kernels without one): query rows and keys per threadgroup step,
 * simdgroups per threadgroup. The kernel instance was compiled with the same numbers (kernels/fa_tiles.h). */
typedef struct fa_tile {
    int32_t rows;
    int32_t keys;
    int32_t simdgroups;
} fa_tile;

typedef struct fa_binding {
    int32_t index;       /* [[buffer(index)]] in the kernel */
    int32_t buffer;      /* fa_buffer_id */
    int64_t byte_offset; /* from the start of the logical buffer */
} fa_binding;

typedef struct fa_launch {
    fa_kernel_desc desc;
    char kernel[FA_PLAN_KERNEL_NAME_LEN]; /* fa_kernel_name(&desc), e.g. "fa_fwd_f16_d64": derived, never parsed */
    fa_tile tile;
    uint32_t grid[3];                     /* threadgroups per grid */
    uint32_t threads[3];                  /* threads per threadgroup */
    uint32_t threadgroup_memory_bytes;    /* static threadgroup memory the kernel declares (for checks/reports) */
    int32_t nbindings;
    fa_binding bindings[FA_PLAN_MAX_BINDINGS];
    int32_t constants_index;              /* [[buffer(constants_index)]] for setBytes, or -1 */
    uint32_t constants_size;
    unsigned char constants[FA_PLAN_MAX_CONSTANT_BYTES];
} fa_launch;

typedef struct fa_plan {
    int32_t kind;      /* fa_plan_kind: the call it computes (which buffers its launches write: fa_buffer_written) */
    int32_t nlaunches;
    fa_launch launches[FA_PLAN_MAX_LAUNCHES];
    int64_t scratch_bytes[FA_PLAN_SCRATCH_COUNT]; /* 0 = unused; scratch_bytes[i] is FA_BUF_SCRATCH0 + i */
    /* byte size of each user buffer the plan may touch, for executor bounds checks (0 = not bound) */
    int64_t buffer_bytes[FA_BUF_COUNT];
} fa_plan;

/* The Metal function name of a kernel: its family's pattern with the template constants filled in. FA_OK, or
 * FA_ERR_RUNTIME (message in out) for an unknown family, a pattern constant the descriptor lacks, or a template
 * constant the pattern does not name (two descriptors must never share a name). */
int fa_kernel_name(const fa_kernel_desc *desc, char *out, size_t outlen);

/* Short name of a family ("prefill", "vector", "merge", ...), or "invalid". */
const char *fa_kernel_family_name(int family);

/* The specialisation constant called `name`, or NULL. */
static inline const fa_spec_constant *fa_kernel_spec(const fa_kernel_desc *desc, const char *name) {
    for (int i = 0; i < desc->nspecs && i < FA_PLAN_MAX_SPECS; ++i)
        if (strncmp(desc->specs[i].name, name, FA_SPEC_NAME_LEN) == 0) return &desc->specs[i];
    return NULL;
}

/* Number of constants of a kernel that are Metal function constants (index != FA_SPEC_TEMPLATE). Header-only like
 * fa_kernel_spec, so that the executors (objc/, the simulator binding) read descriptors without linking the plan. */
static inline int fa_kernel_function_constant_count(const fa_kernel_desc *desc) {
    int n = 0;
    for (int i = 0; i < desc->nspecs && i < FA_PLAN_MAX_SPECS; ++i) n += desc->specs[i].index != FA_SPEC_TEMPLATE;
    return n;
}

#ifdef __cplusplus
}
#endif

#endif /* FA_PLAN_H */
