# The C ABI as the Cython layer sees it (csrc/fa_abi.h, csrc/sim/fa_cancel.h): declarations only, included by _core.pyx.

from libc.stdint cimport int32_t, int64_t, uint16_t, uint64_t

cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident() nogil

cdef extern from "sim/fa_cancel.h" nogil:
    ctypedef struct fa_cancel:
        int32_t requested
        int (*poll)(void *ctx) noexcept nogil
        void *poll_ctx

cdef extern from "fa_abi.h" nogil:
    ctypedef enum fa_status:
        FA_OK
        FA_ERR_VALUE
        FA_ERR_TYPE
        FA_ERR_UNSUPPORTED
        FA_ERR_UNAVAILABLE
        FA_ERR_RUNTIME
        FA_ERR_FAULT
        FA_ERR_MEMORY
        FA_ERR_CANCELLED

    ctypedef enum fa_dtype:
        FA_F32
        FA_F16
        FA_BF16
        FA_F64

    ctypedef enum fa_backend:
        FA_BACKEND_CPU
        FA_BACKEND_SIM
        FA_BACKEND_METAL

    ctypedef struct fa_tensor:
        void *data
        int64_t batch_stride
        int64_t row_stride
        int64_t head_stride

    ctypedef struct fa_device_buffers:
        void *handle[32]
        int64_t byte_offset[32]
        int64_t byte_length[32]

    ctypedef struct fa_params:
        int32_t batch
        int32_t seqlen_q
        int32_t seqlen_k
        int32_t nheads_q
        int32_t nheads_kv
        int32_t headdim
        int32_t headdim_v
        fa_dtype dtype
        fa_tensor q, k, v, out
        float *lse
        int64_t lse_batch_stride, lse_head_stride, lse_row_stride
        const int32_t *cu_seqlens_q
        const int32_t *cu_seqlens_k
        int64_t total_q
        int64_t total_k
        const int32_t *seqused_k
        const int32_t *leftpad_k
        const int32_t *cache_batch_idx
        int64_t cache_batch_count
        const int32_t *block_table
        int64_t block_table_batch_stride
        int32_t max_blocks_per_seq
        int32_t page_block_size
        int64_t num_blocks
        double softmax_scale
        int32_t window_left
        int32_t window_right
        double softcap
        const float *alibi_slopes
        int64_t alibi_batch_stride
        float dropout_p
        uint64_t dropout_seed
        uint64_t dropout_offset
        float *attn_probs
        int64_t attn_probs_batch_stride, attn_probs_head_stride, attn_probs_row_stride
        fa_tensor dout, dq, dk, dv
        int32_t deterministic
        int32_t num_splits
        int32_t num_threads
        int32_t sim_schedules
        const fa_device_buffers *device_buffers
        fa_cancel *cancel

    ctypedef struct fa_kvcache_update:
        fa_tensor knew, vnew
        int32_t seqlen_new
        const void *rotary_cos
        const void *rotary_sin
        int32_t seqlen_ro
        int32_t rotary_dim
        int32_t rotary_interleaved
        int32_t rotate_q_causal

    void fa_params_init(fa_params *p)
    int fa_forward(fa_backend backend, fa_params *p, char *err, size_t errlen)
    int fa_backward(fa_backend backend, fa_params *p, char *err, size_t errlen)
    int fa_kvcache_append(fa_backend backend, fa_params *p, const fa_kvcache_update *u, char *err, size_t errlen)
    int fa_describe_plan(int kind, const fa_params *p, const fa_kvcache_update *u, char *json_out, size_t jsonlen,
                         char *err, size_t errlen)
    int fa_backend_available(fa_backend backend, char *why, size_t whylen)
    int fa_backend_describe(fa_backend backend, char *out, size_t outlen)
    void fa_set_num_threads(int n)
    int fa_get_num_threads()
    ctypedef struct fa_cpu_pool_activity:
        int64_t calls
        int32_t max_threads
        int64_t workers_posted
        int64_t workers_woken
        int64_t workers_taken_back
    void fa_cpu_take_pool_activity(fa_cpu_pool_activity *out)
