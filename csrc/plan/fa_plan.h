/*
 * fa_plan.h - the dispatch plan shared by the Metal shim (objc/) and the Metal simulator (csrc/sim/): the descriptor
 * the executors read. It declares types only, so that the executors below the plan layer can include it; the
 * builders that fill it are declared in fa_plan_build.h.
 *
 * fa_plan_build() turns validated fa_params into a list of kernel launches. Each launch names a kernel (the
 * Metal function name, which is also the simulator's registry name), a grid of threadgroups, the threads per
 * threadgroup, the threadgroup memory it needs, the buffers it binds (a logical buffer plus a byte offset into it)
 * and a small constant block passed with setBytes. Executors do nothing but follow the plan: the simulator runs it
 * on the CPU, the shim encodes it into one Metal command buffer. Launches run in order; each one sees the writes of
 * the previous ones (one compute encoder per launch or a barrier between them).
 */
#ifndef FA_PLAN_H
#define FA_PLAN_H

#include <stdint.h>
#include <stddef.h>

#include "../fa_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Logical buffers a launch can bind. The executor maps each to memory: fa_params' pointers for the user tensors,
 * its own allocations for the scratch buffers (sizes in fa_plan.scratch_bytes). */
typedef enum fa_buffer_id {
    FA_BUF_Q = 0,
    FA_BUF_K,
    FA_BUF_V,
    FA_BUF_OUT,
    FA_BUF_LSE,
    FA_BUF_ALIBI,
    FA_BUF_CU_SEQLENS_Q,
    FA_BUF_CU_SEQLENS_K,
    FA_BUF_SEQUSED_K,
    FA_BUF_LEFTPAD_K,
    FA_BUF_CACHE_BATCH_IDX,
    FA_BUF_BLOCK_TABLE,
    FA_BUF_DOUT,
    FA_BUF_DQ,
    FA_BUF_DK,
    FA_BUF_DV,
    FA_BUF_KNEW,
    FA_BUF_VNEW,
    FA_BUF_ROTARY_COS,
    FA_BUF_ROTARY_SIN,
    FA_BUF_ATTN_PROBS,
    FA_BUF_SCRATCH0, /* plan-owned temporaries, e.g. split-KV partial outputs and LSEs, backward D = rowsum(dO*O) */
    FA_BUF_SCRATCH1,
    FA_BUF_SCRATCH2,
    FA_BUF_SCRATCH3,
    FA_BUF_COUNT
} fa_buffer_id;

#define FA_PLAN_MAX_LAUNCHES 8
#define FA_PLAN_MAX_BINDINGS 24
#define FA_PLAN_MAX_CONSTANT_BYTES 1024
#define FA_PLAN_KERNEL_NAME_LEN 96
#define FA_PLAN_SCRATCH_COUNT 4

typedef struct fa_binding {
    int32_t index;       /* [[buffer(index)]] in the kernel */
    int32_t buffer;      /* fa_buffer_id */
    int64_t byte_offset; /* from the start of the logical buffer */
} fa_binding;

typedef struct fa_launch {
    char kernel[FA_PLAN_KERNEL_NAME_LEN]; /* Metal function name, e.g. "fa_fwd_f16_d64" */
    uint32_t grid[3];                     /* threadgroups per grid */
    uint32_t threads[3];                  /* threads per threadgroup */
    uint32_t threadgroup_memory_bytes;    /* static threadgroup memory the kernel declares (for checks/reports) */
    int32_t nbindings;
    fa_binding bindings[FA_PLAN_MAX_BINDINGS];
    int32_t constants_index;              /* [[buffer(constants_index)]] for setBytes, or -1 */
    uint32_t constants_size;
    unsigned char constants[FA_PLAN_MAX_CONSTANT_BYTES];
} fa_launch;

typedef enum fa_plan_kind {
    FA_PLAN_FORWARD = 0,
    FA_PLAN_BACKWARD = 1,
    FA_PLAN_KVCACHE_APPEND = 2
} fa_plan_kind;

typedef struct fa_plan {
    int32_t nlaunches;
    fa_launch launches[FA_PLAN_MAX_LAUNCHES];
    int64_t scratch_bytes[FA_PLAN_SCRATCH_COUNT]; /* 0 = unused */
    /* byte size of each user buffer the plan may touch, for executor bounds checks (0 = not bound) */
    int64_t buffer_bytes[FA_BUF_COUNT];
} fa_plan;

#ifdef __cplusplus
}
#endif

#endif /* FA_PLAN_H */
