/*
 * fa_buffers.h - THE table of logical buffers: the memory one call may bind to a kernel argument.
 *
 * Everything that knows a logical buffer reads it from FA_BUFFER_TABLE: the fa_buffer_id enum (also the slot of a
 * tensor in fa_device_buffers, fa_abi.h, and the Cython layer's device-buffer slots), the names in the plan's JSON
 * and in error messages, the element size, where its host memory comes from (fa_params / fa_kvcache_update), and
 * which plan kinds write it. The kernel side of a binding (which [[buffer(n)]] of which kernel takes which logical
 * buffer) is the signature table in kernels/fa_kernel_args.h. Readers: the plan (csrc/plan), the simulator binding
 * (csrc/sim_backend.cpp), the Metal binding (objc/fa_metal_binding.cpp), flash_attn_cy/_core.pyx.
 *
 * Columns: X(ID, name, message_name, element, source, field, written_by)
 *   ID            FA_BUF_<ID>; the order is the ABI's device-buffer slot order (append only, never reorder)
 *   name          short name in describe_plan's JSON
 *   message_name  the argument's name in error messages (the Metal binding's)
 *   element       DATA (the call's dtype), F32 or I32: bytes of one element as the kernels read it
 *   source        PARAMS or UPDATE: the struct whose `field` points at the host memory; NONE for plan scratch
 *   written_by    plan kinds that may write it (FA_WRITES_*): outputs, in-place cache updates, scratch
 * C and C++; header only (static inline accessors), so each reader links nothing extra.
 */
#ifndef FA_BUFFERS_H
#define FA_BUFFERS_H

#include <stddef.h>
#include <stdint.h>

#include "../fa_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Kinds of dispatch plan (fa_plan_build). */
typedef enum fa_plan_kind {
    FA_PLAN_FORWARD = 0,
    FA_PLAN_BACKWARD = 1,
    FA_PLAN_KVCACHE_APPEND = 2
} fa_plan_kind;

#define FA_WRITES_NONE 0
#define FA_WRITES_FORWARD (1 << FA_PLAN_FORWARD)
#define FA_WRITES_BACKWARD (1 << FA_PLAN_BACKWARD)
/* The append plan rotates q and writes the new rows into the k/v cache in place (fa_abi.h); the attention that
 * follows it may be part of the same call, so the forward's outputs count as its outputs too (FA_WRITES_ATTENTION). */
#define FA_WRITES_APPEND (1 << FA_PLAN_KVCACHE_APPEND)
#define FA_WRITES_ATTENTION (FA_WRITES_FORWARD | FA_WRITES_APPEND)
#define FA_WRITES_ALL (FA_WRITES_FORWARD | FA_WRITES_BACKWARD | FA_WRITES_APPEND)

/* clang-format off */
#define FA_BUFFER_TABLE(X)                                                                                         \
    /* ID               name               message_name       element source  field           written_by */       \
    X(Q,                "q",               "q",               DATA, PARAMS, q.data,          FA_WRITES_APPEND)    \
    X(K,                "k",               "k",               DATA, PARAMS, k.data,          FA_WRITES_APPEND)    \
    X(V,                "v",               "v",               DATA, PARAMS, v.data,          FA_WRITES_APPEND)    \
    X(OUT,              "out",             "out",             DATA, PARAMS, out.data,        FA_WRITES_ATTENTION) \
    X(LSE,              "lse",             "lse",             F32,  PARAMS, lse,             FA_WRITES_ATTENTION) \
    X(ALIBI,            "alibi",           "alibi_slopes",    F32,  PARAMS, alibi_slopes,    FA_WRITES_NONE)      \
    X(CU_SEQLENS_Q,     "cu_seqlens_q",    "cu_seqlens_q",    I32,  PARAMS, cu_seqlens_q,    FA_WRITES_NONE)      \
    X(CU_SEQLENS_K,     "cu_seqlens_k",    "cu_seqlens_k",    I32,  PARAMS, cu_seqlens_k,    FA_WRITES_NONE)      \
    X(SEQUSED_K,        "seqused_k",       "seqused_k",       I32,  PARAMS, seqused_k,       FA_WRITES_NONE)      \
    X(LEFTPAD_K,        "leftpad_k",       "leftpad_k",       I32,  PARAMS, leftpad_k,       FA_WRITES_NONE)      \
    X(CACHE_BATCH_IDX,  "cache_batch_idx", "cache_batch_idx", I32,  PARAMS, cache_batch_idx, FA_WRITES_NONE)      \
    X(BLOCK_TABLE,      "block_table",     "block_table",     I32,  PARAMS, block_table,     FA_WRITES_NONE)      \
    X(DOUT,             "dout",            "dout",            DATA, PARAMS, dout.data,       FA_WRITES_NONE)      \
    X(DQ,               "dq",              "dq",              DATA, PARAMS, dq.data,         FA_WRITES_BACKWARD)  \
    X(DK,               "dk",              "dk",              DATA, PARAMS, dk.data,         FA_WRITES_BACKWARD)  \
    X(DV,               "dv",              "dv",              DATA, PARAMS, dv.data,         FA_WRITES_BACKWARD)  \
    X(KNEW,             "knew",            "k_new",           DATA, UPDATE, knew.data,       FA_WRITES_NONE)      \
    X(VNEW,             "vnew",            "v_new",           DATA, UPDATE, vnew.data,       FA_WRITES_NONE)      \
    X(ROTARY_COS,       "rotary_cos",      "rotary_cos",      DATA, UPDATE, rotary_cos,      FA_WRITES_NONE)      \
    X(ROTARY_SIN,       "rotary_sin",      "rotary_sin",      DATA, UPDATE, rotary_sin,      FA_WRITES_NONE)      \
    X(ATTN_PROBS,       "attn_probs",      "attn_probs",      F32,  PARAMS, attn_probs,      FA_WRITES_ATTENTION) \
    /* plan-owned fp32 temporaries (sizes in fa_plan.scratch_bytes): split-KV partials, backward D and LSE2 */      \
    X(SCRATCH0,         "scratch0",        "scratch0",        F32,  NONE,   none,            FA_WRITES_ALL)       \
    X(SCRATCH1,         "scratch1",        "scratch1",        F32,  NONE,   none,            FA_WRITES_ALL)       \
    X(SCRATCH2,         "scratch2",        "scratch2",        F32,  NONE,   none,            FA_WRITES_ALL)       \
    /* the plan's placeholder for kernel arguments a call does not use (FA_PLAN_DUMMY_BUFFER): never accessed */   \
    X(SCRATCH3,         "scratch3",        "scratch3",        F32,  NONE,   none,            FA_WRITES_NONE)
/* clang-format on */

#define FA_BUFFER_ENUM_(ID, name, message_name, element, source, field, written_by) FA_BUF_##ID,
typedef enum fa_buffer_id { FA_BUFFER_TABLE(FA_BUFFER_ENUM_) FA_BUF_COUNT } fa_buffer_id;
#undef FA_BUFFER_ENUM_

#define FA_BUF_FIRST_SCRATCH FA_BUF_SCRATCH0
#define FA_PLAN_SCRATCH_COUNT (FA_BUF_COUNT - FA_BUF_FIRST_SCRATCH)

/* Whether the plan owns the buffer (scratch) rather than the caller. */
static inline int fa_buffer_is_scratch(int id) { return id >= FA_BUF_FIRST_SCRATCH && id < FA_BUF_COUNT; }

/* Short name (JSON), or "invalid". */
static inline const char *fa_buffer_name(int id) {
#define FA_BUFFER_NAME_(ID, name, message_name, element, source, field, written_by) name,
    static const char *const names[FA_BUF_COUNT] = {FA_BUFFER_TABLE(FA_BUFFER_NAME_)};
#undef FA_BUFFER_NAME_
    return (id >= 0 && id < FA_BUF_COUNT) ? names[id] : "invalid";
}

/* The argument's name for error messages, or "?". */
static inline const char *fa_buffer_message_name(int id) {
#define FA_BUFFER_MESSAGE_NAME_(ID, name, message_name, element, source, field, written_by) message_name,
    static const char *const names[FA_BUF_COUNT] = {FA_BUFFER_TABLE(FA_BUFFER_MESSAGE_NAME_)};
#undef FA_BUFFER_MESSAGE_NAME_
    return (id >= 0 && id < FA_BUF_COUNT) ? names[id] : "?";
}

/* Bytes of one element as the kernels read it: the call's dtype for DATA buffers, 4 for fp32 and int32 ones. */
static inline int64_t fa_buffer_element_bytes(int id, fa_dtype dtype) {
#define FA_ELEMENT_DATA (-1)
#define FA_ELEMENT_F32 4
#define FA_ELEMENT_I32 4
#define FA_BUFFER_ELEMENT_(ID, name, message_name, element, source, field, written_by) FA_ELEMENT_##element,
    static const int64_t bytes[FA_BUF_COUNT] = {FA_BUFFER_TABLE(FA_BUFFER_ELEMENT_)};
#undef FA_BUFFER_ELEMENT_
#undef FA_ELEMENT_DATA
#undef FA_ELEMENT_F32
#undef FA_ELEMENT_I32
    if (id < 0 || id >= FA_BUF_COUNT) return 4;
    if (bytes[id] > 0) return bytes[id];
    return dtype == FA_F64 ? 8 : (dtype == FA_F16 || dtype == FA_BF16) ? 2 : 4;
}

/* The host memory fa_params (or the KV-cache update, when given) provides for a buffer; NULL for scratch, absent
 * tensors and out-of-range ids. */
static inline const void *fa_buffer_host_pointer(int id, const fa_params *p, const fa_kvcache_update *u) {
#define FA_SOURCE_PARAMS(field) (const void *)(p->field)
#define FA_SOURCE_UPDATE(field) (u != NULL ? (const void *)(u->field) : NULL)
#define FA_SOURCE_NONE(field) NULL
#define FA_BUFFER_HOST_(ID, name, message_name, element, source, field, written_by) \
    case FA_BUF_##ID: return FA_SOURCE_##source(field);
    switch (id) {
        FA_BUFFER_TABLE(FA_BUFFER_HOST_)
        default: return NULL;
    }
#undef FA_BUFFER_HOST_
#undef FA_SOURCE_PARAMS
#undef FA_SOURCE_UPDATE
#undef FA_SOURCE_NONE
}

/* Whether a plan of this kind may write the buffer. */
static inline int fa_buffer_written(fa_plan_kind kind, int id) {
#define FA_BUFFER_WRITTEN_(ID, name, message_name, element, source, field, written_by) written_by,
    static const int written[FA_BUF_COUNT] = {FA_BUFFER_TABLE(FA_BUFFER_WRITTEN_)};
#undef FA_BUFFER_WRITTEN_
    if (id < 0 || id >= FA_BUF_COUNT || kind < FA_PLAN_FORWARD || kind > FA_PLAN_KVCACHE_APPEND) return 0;
    return (written[id] >> kind) & 1;
}

#ifdef __cplusplus
}
#endif

#endif /* FA_BUFFERS_H */
