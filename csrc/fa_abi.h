/*
 * fa_abi.h - the C ABI between Python (flash_attn_cy/_core.pyx) and every backend.
 *
 * One parameter struct, `fa_params`, describes a whole attention call (forward, backward or KV-cache decode).
 * Python validates shapes and dtypes before it fills the struct; the C++ side checks again (fa_check_params) so
 * that no backend ever indexes out of bounds even when called directly.
 *
 * Conventions
 * - Every tensor is described by a data pointer and strides counted in ELEMENTS (not bytes), 64-bit.
 *   The last (head-dim) axis always has stride 1.
 * - Dense layout ("batch mode", cu_seqlens_q == NULL): q is [batch, seqlen_q, nheads_q, headdim],
 *   k/v are [batch, seqlen_k, nheads_kv, headdim]; out like q; lse is [batch, nheads_q, seqlen_q] (fp32).
 * - Varlen layout (cu_seqlens_q != NULL): q is [total_q, nheads_q, headdim] packed; sequence b occupies rows
 *   cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1 (likewise k/v with cu_seqlens_k). batch_stride fields are ignored.
 *   lse is [nheads_q, total_q] (flash_attn 2.x "unpadded" LSE): element (b, h, i) lives at
 *   lse_head_stride*h + lse_row_stride*(cu_seqlens_q[b] + i).
 *   Packed rows from cu_seqlens_q[batch] (cu_seqlens_k[batch]) on belong to no sequence: no backend writes them
 *   (out, lse, dq, dk, dv); the Python layer gives them defined values (flash_attn_cy/interface.py).
 * - Masks are aligned bottom-right: query i of a sequence with lengths (sq, sk) sees key j iff
 *   i + sk - sq - window_left <= j <= i + sk - sq + window_right, with -1 meaning unbounded on that side
 *   and causal meaning window_right = 0 (Python folds `causal` into window_right before calling).
 * - A query row that sees no key writes zeros to out and +INFINITY to lse (as flash_attn's CUDA kernel).
 *
 * Every function returns FA_OK (0) or an error code and writes a NUL-terminated message into err[errlen].
 */
#ifndef FA_ABI_H
#define FA_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "sim/fa_cancel.h" /* fa_cancel: cooperative cancellation (Ctrl-C) of a running call */

#ifdef __cplusplus
extern "C" {
#endif

#define FA_ABI_VERSION 1
#define FA_MAX_HEADDIM 256

typedef enum fa_status {
    FA_OK = 0,
    FA_ERR_VALUE = 1,       /* bad argument value or shape: Python raises ValueError */
    FA_ERR_TYPE = 2,        /* bad dtype: TypeError */
    FA_ERR_UNSUPPORTED = 3, /* valid request this backend cannot serve: NotImplementedError */
    FA_ERR_UNAVAILABLE = 4, /* backend not present in this build / on this machine: RuntimeError */
    FA_ERR_RUNTIME = 5,     /* failure while running (Metal command buffer error, allocation): RuntimeError */
    FA_ERR_FAULT = 6,       /* the simulator detected a kernel fault (race, out-of-bounds, ...): RuntimeError */
    FA_ERR_MEMORY = 7,      /* an allocation failed (the message names its size where known): MemoryError */
    FA_ERR_CANCELLED = 8    /* fa_params.cancel was requested: the call stopped early, outputs are unspecified */
} fa_status;

typedef enum fa_dtype {
    FA_F32 = 0,
    FA_F16 = 1,
    FA_BF16 = 2,
    FA_F64 = 3 /* CPU backend only (gradient checking) */
} fa_dtype;

typedef enum fa_backend {
    FA_BACKEND_CPU = 0,
    FA_BACKEND_SIM = 1,  /* the project's Metal kernels executed by the CPU Metal simulator */
    FA_BACKEND_METAL = 2 /* the same kernels on an Apple GPU (macOS builds only) */
} fa_backend;

/* A strided 4-d view: [batch, row, head, dim]; dim stride is 1. */
typedef struct fa_tensor {
    void *data;
    int64_t batch_stride; /* ignored in varlen layout */
    int64_t row_stride;
    int64_t head_stride;
} fa_tensor;

typedef struct fa_params {
    /* ---- shapes ---- */
    int32_t batch;      /* number of sequences */
    int32_t seqlen_q;   /* dense: rows per sequence; varlen: max_seqlen_q (an upper bound used for planning) */
    int32_t seqlen_k;   /* dense: keys per sequence (cache capacity for the KV cache); varlen: max_seqlen_k */
    int32_t nheads_q;
    int32_t nheads_kv;  /* nheads_q % nheads_kv == 0 (GQA/MQA) */
    int32_t headdim;    /* 1..256 */
    int32_t headdim_v;  /* == headdim for now; kept so the ABI can grow */
    fa_dtype dtype;     /* q, k, v, out (and dout, dq, dk, dv) share it */

    /* ---- tensors ---- */
    fa_tensor q, k, v, out;
    float *lse;         /* fp32 log-sum-exp out (forward) or in (backward); may be NULL in forward */
    int64_t lse_batch_stride, lse_head_stride, lse_row_stride;

    /* ---- varlen (packed) ---- */
    const int32_t *cu_seqlens_q; /* [batch+1] or NULL */
    const int32_t *cu_seqlens_k; /* [batch+1] or NULL */
    int64_t total_q;             /* rows of q when packed (bounds checking) */
    int64_t total_k;             /* rows of k/v when packed */

    /* ---- KV cache / per-sequence key lengths ---- */
    const int32_t *seqused_k;    /* [batch] keys actually used per sequence (<= seqlen_k), or NULL */
    const int32_t *leftpad_k;    /* [batch] first valid cache row per sequence, or NULL */
    const int32_t *cache_batch_idx; /* [batch] row of k/v cache used by sequence b, or NULL (identity) */
    int64_t cache_batch_count;   /* number of batch rows in the k/v cache (bounds for cache_batch_idx) */
    const int32_t *block_table;  /* [batch, max_blocks] paged cache, or NULL. k/v then are [num_blocks, page, hkv, d] */
    int64_t block_table_batch_stride;
    int32_t max_blocks_per_seq;
    int32_t page_block_size;     /* rows per page */
    int64_t num_blocks;          /* pages in the cache */

    /* ---- numerics and masks ---- */
    double softmax_scale;        /* double so fp64 gradient checks see the exact scale */
    int32_t window_left;         /* -1 = unbounded */
    int32_t window_right;        /* -1 = unbounded; 0 with causal */
    double softcap;              /* 0 = off */
    const float *alibi_slopes;   /* fp32, [nheads_q] or [batch, nheads_q], or NULL */
    int64_t alibi_batch_stride;  /* 0 when shape is [nheads_q] */

    /* ---- dropout (Philox4x32-10, see kernels/fa_philox.h) ---- */
    float dropout_p;             /* 0 = off */
    uint64_t dropout_seed;
    uint64_t dropout_offset;
    /* optional debug output: [batch, nheads_q, seqlen_q, seqlen_k] fp32 probabilities, dropped ones negated */
    float *attn_probs;
    int64_t attn_probs_batch_stride, attn_probs_head_stride, attn_probs_row_stride;

    /* ---- backward ---- */
    fa_tensor dout, dq, dk, dv;  /* dq like q, dk/dv like k/v */
    int32_t deterministic;       /* bit-identical gradients run to run */

    /* ---- execution ---- */
    int32_t num_splits;          /* 0 = let the plan decide (split-KV decode); 1 = no split; n = at most n splits.
                                    Metal/sim: raised to the fewest splits that keep each split within 512 fp32
                                    additions (4096 keys in vector decode; csrc/plan/fa_plan_forward.cpp) */
    int32_t num_threads;         /* CPU: 0 = pool default */
    int32_t sim_schedules;       /* sim: number of schedules to run and compare (0 or 1 = one forward schedule) */
    const struct fa_device_buffers *device_buffers; /* metal only: see below; NULL for host memory */
    /* Cancellation token (sim/fa_cancel.h) or NULL. The CPU backend and the simulator check it between tiles; the
     * thread that made the call runs its poll about every FA_CANCEL_POLL_MS. A cancelled call returns FA_ERR_CANCELLED
     * with no worker still running; its outputs are unspecified, except that fa_kvcache_append is not a cancellation
     * point (a started append always writes every row). */
    fa_cancel *cancel;
} fa_params;

/* Metal with tensors that already live in MTLBuffers (PyTorch MPS tensors, DLPack kDLMetal arrays): each user
 * tensor is given as an `id<MTLBuffer>` handle (bridged to void*) plus a byte offset into it, indexed by
 * fa_buffer_id (the buffer table, csrc/plan/fa_buffers.h). The data pointers of fa_params are then not dereferenced
 * by the Metal backend (they may be NULL); handle[i] == NULL means "not bound / use the host pointer". */
#define FA_DEVICE_BUFFER_SLOTS 32
typedef struct fa_device_buffers {
    void *handle[FA_DEVICE_BUFFER_SLOTS];
    int64_t byte_offset[FA_DEVICE_BUFFER_SLOTS];
    int64_t byte_length[FA_DEVICE_BUFFER_SLOTS]; /* bytes addressable from byte_offset (bounds checks) */
} fa_device_buffers;

/* Zero every field and set the "off" values (-1 windows, headdim_v = headdim later, ...). */
void fa_params_init(fa_params *p);

/* Structural checks shared by all backends (shapes, strides, pointer presence, index ranges that can be checked
 * without touching device data, plus cu_seqlens / seqused_k / block_table contents read on the host). */
int fa_check_params(const fa_params *p, int backward, char *err, size_t errlen);

int fa_forward(fa_backend backend, fa_params *p, char *err, size_t errlen);
/* Needs q, k, v, out, lse (from the forward), dout; writes dq, dk, dv. */
int fa_backward(fa_backend backend, fa_params *p, char *err, size_t errlen);

/* KV cache update: rotate q (in place, in q's buffer) and the new k, then write new k/v into the cache at
 * seqused_k[b] (+ leftpad) before attention. The caller passes the new rows in `knew`/`vnew`. */
typedef struct fa_kvcache_update {
    fa_tensor knew, vnew;        /* [batch, seqlen_new, nheads_kv, d] or data == NULL */
    int32_t seqlen_new;
    const void *rotary_cos;      /* [seqlen_ro, rotary_dim/2] in the params dtype, or NULL */
    const void *rotary_sin;
    int32_t seqlen_ro;
    int32_t rotary_dim;          /* even, <= headdim */
    int32_t rotary_interleaved;
    int32_t rotate_q_causal;     /* 1: q row i at position cache_seqlens+i; 0: every q row at cache_seqlens */
} fa_kvcache_update;

int fa_kvcache_append(fa_backend backend, fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen);

/* The dispatch plan the sim/metal backends would execute, as JSON (kernels, grids, threadgroup sizes, bindings,
 * scratch sizes), for tests and `python -m flash_attn_cy info`. kind: 0 forward, 1 backward, 2 kvcache append. */
int fa_describe_plan(int kind, const fa_params *p, const fa_kvcache_update *u, char *json, size_t jsonlen, char *err,
                     size_t errlen);

/* Backend availability: returns 1 if present; otherwise 0 and a reason in `why`. */
int fa_backend_available(fa_backend backend, char *why, size_t whylen);
/* A short human description of the backend as built (e.g. Metal library path in use, CPU ISA selected). */
int fa_backend_describe(fa_backend backend, char *out, size_t outlen);

/* flash_attn_cy.sim.profile(): installs (or, with NULL, removes) the hook through which the sim backend hands each
 * launch of its plans to a profiling run instead of running it itself (the hook's type: csrc/sim_profile_hook.h). */
void fa_sim_set_launch_hook(void *hook);

/* CPU thread pool size setting (0 = the CPUs this process may run on). A call uses at most that many threads, fewer
 * when its work cannot keep them busy or fewer CPUs are available (csrc/cpu/thread_pool.h). */
void fa_set_num_threads(int n);
int fa_get_num_threads(void);

/* What the CPU thread pool did for the CALLING thread's calls since its previous fa_cpu_take_pool_activity (tests and
 * benchmarks; the counters are then reset): parallel-for calls, the most threads one of them used (1 = serial),
 * workers handed a job, how many of those were woken from sleep, and how many were taken back before they started. */
typedef struct fa_cpu_pool_activity {
    int64_t calls;
    int32_t max_threads;
    int64_t workers_posted;
    int64_t workers_woken;
    int64_t workers_taken_back;
} fa_cpu_pool_activity;
void fa_cpu_take_pool_activity(fa_cpu_pool_activity *out);

#ifdef __cplusplus
}
#endif

#endif /* FA_ABI_H */
