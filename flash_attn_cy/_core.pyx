# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Bridge from Python to the C ABI (csrc/fa_abi.h).

Everything here is deliberately thin: the public API (interface.py, kvcache.py) validates and normalises
arguments, allocates outputs and converts NumPy/PyTorch objects into the plain buffers these functions take.
This module turns those buffers into an `fa_params` through typed memoryviews (fp16 and bf16 travel as uint16
views, fp32 as float, fp64 as double; the head-dim axis must have stride 1), releases the GIL for every call into
the ABI, and maps the ABI's error codes to Python exceptions carrying the C message.

Tensor arguments are either host buffers (NumPy arrays or anything exporting the buffer protocol with the
element type above) or `DeviceTensor` tuples describing memory inside an MTLBuffer (PyTorch MPS / DLPack
kDLMetal, backend "metal" only). Shapes are always 4-d [batch, rows, heads, dim] for q/k/v-like tensors (the
varlen layout passes its packed [total, heads, dim] tensors with a leading axis of 1), 3-d for the LSE
[batch, heads, rows] (varlen: [1, heads, total]), 4-d for attention probabilities.
"""

from collections import namedtuple
import json as _json
import threading as _threading

from libc.stdint cimport int32_t, int64_t, uint16_t, uint64_t
from libc.string cimport memset
from cpython.exc cimport PyErr_CheckSignals

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

# Device-buffer slots: the fa_buffer_id of each tensor, from the buffer table (csrc/plan/fa_buffers.h).
cdef extern from "plan/fa_buffers.h" nogil:
    cdef enum:
        SLOT_Q "FA_BUF_Q"
        SLOT_K "FA_BUF_K"
        SLOT_V "FA_BUF_V"
        SLOT_OUT "FA_BUF_OUT"
        SLOT_LSE "FA_BUF_LSE"
        SLOT_DOUT "FA_BUF_DOUT"
        SLOT_DQ "FA_BUF_DQ"
        SLOT_DK "FA_BUF_DK"
        SLOT_DV "FA_BUF_DV"
        SLOT_KNEW "FA_BUF_KNEW"
        SLOT_VNEW "FA_BUF_VNEW"
        SLOT_ATTN_PROBS "FA_BUF_ATTN_PROBS"

DEF ERRLEN = 1024

BACKENDS = ("cpu", "sim", "metal")
DTYPES = ("float32", "float16", "bfloat16", "float64")

cdef dict _BACKEND_CODES = {"cpu": FA_BACKEND_CPU, "sim": FA_BACKEND_SIM, "metal": FA_BACKEND_METAL}
cdef dict _DTYPE_CODES = {"float32": FA_F32, "float16": FA_F16, "bfloat16": FA_BF16, "float64": FA_F64}
cdef dict _PLAN_KINDS = {"forward": 0, "backward": 1, "kvcache": 2}

DeviceTensor = namedtuple("DeviceTensor", ["handle", "byte_offset", "byte_length", "shape", "strides"])
DeviceTensor.__doc__ = (
    "A tensor living in an MTLBuffer: `handle` is the id<MTLBuffer> as an int, `byte_offset` where element "
    "[0,...,0] starts, `byte_length` the bytes addressable from there, `shape` and `strides` (in ELEMENTS, last "
    "stride 1) in the same 4-d/3-d layout as the host arrays.")


cdef object _raise(int rc, const char *err):
    msg = err.decode("utf-8", "replace") or "error code %d" % rc
    if rc == FA_ERR_VALUE:
        raise ValueError(msg)
    if rc == FA_ERR_TYPE:
        raise TypeError(msg)
    if rc == FA_ERR_UNSUPPORTED:
        raise NotImplementedError(msg)
    if rc == FA_ERR_MEMORY:
        raise MemoryError(msg)
    raise RuntimeError(msg)


# ---- Ctrl-C: signals reach a long call (fa_cancel.h) ----------------------------------------------------------------
# Every call runs with the GIL released. On the main thread (the only one Python delivers signals to) the call gets a
# cancellation token whose poll the C side runs on this thread about every FA_CANCEL_POLL_MS: it takes the GIL and
# runs Python's signal handlers. If one raises (KeyboardInterrupt for SIGINT), the exception is kept, the token asks
# the workers to stop between tiles, and once the call has returned - no worker still running - the exception is
# raised here. Calls from other threads get no poll (their signals are handled by the main thread anyway).
cdef object _pending_signal_exc = None  # only the main thread writes it
cdef unsigned long _main_thread_ident = _threading.main_thread().ident


cdef int _poll_signals(void *ctx) noexcept nogil:
    with gil:
        return _run_signal_handlers()


cdef int _run_signal_handlers() noexcept:
    global _pending_signal_exc
    try:
        PyErr_CheckSignals()
    except BaseException as e:  # the handler's exception, raised once the call has stopped
        _pending_signal_exc = e
        return 1
    return 0


cdef inline void _arm_cancel(fa_params *p, fa_cancel *tok) noexcept:
    tok.requested = 0
    tok.poll = NULL
    if PyThread_get_thread_ident() == _main_thread_ident:
        tok.poll = _poll_signals
    tok.poll_ctx = NULL
    p.cancel = tok


def _signal_poll_address():
    """Address of the C poll function above, for cancellation tokens built elsewhere (flash_attn_cy.sim passes it to
    its ctypes-loaded modules: a Python callback could itself be interrupted before it catches anything). Call it
    only with a token used on the main thread; afterwards `_raise_pending_signal()`."""
    return <size_t><void *>_poll_signals


def _raise_pending_signal():
    """Raise the exception a signal handler raised during a poll, if one is pending."""
    _check_call(FA_OK, b"")


cdef object _check_call(int rc, const char *err):
    """After a call: a signal handler's exception first (even if the call finished), then the call's error."""
    global _pending_signal_exc
    # Only the main thread polls; another thread's call must not take its pending exception.
    if _pending_signal_exc is not None and PyThread_get_thread_ident() == _main_thread_ident:
        e = _pending_signal_exc
        _pending_signal_exc = None
        raise e
    if rc != FA_OK:
        _raise(rc, err)


# The ABI counts rows and keys of a sequence in int32: the longest sequence it can describe.
MAX_SEQLEN = 2**31 - 1


cdef int32_t _seqlen(object n, str what) except? -1:
    """A sequence length (rows of q, keys of k/v, new rows, page rows) as the ABI's int32, or a ValueError naming the
    limit (not the OverflowError of a bare conversion)."""
    n = int(n)
    if n > MAX_SEQLEN:
        raise ValueError("%s: %d exceeds the limit of %d (2**31 - 1) rows per sequence: the ABI counts them in "
                         "int32" % (what, n, MAX_SEQLEN))
    return <int32_t>n


cdef fa_backend _backend_code(str name) except *:
    try:
        return _BACKEND_CODES[name]
    except KeyError:
        raise ValueError("backend must be one of %s, got %r" % (", ".join(map(repr, BACKENDS)), name)) from None


cdef int64_t _elem_stride(Py_ssize_t byte_stride, Py_ssize_t itemsize, str name) except? -1:
    if byte_stride < 0 or byte_stride % itemsize:
        raise ValueError("%s: strides must be non-negative multiples of the element size, got %d bytes"
                         % (name, byte_stride))
    return byte_stride // itemsize


cdef class _Call:
    """One ABI call being assembled: the params, the optional KV update, device buffers, and the memoryviews
    that keep every host buffer exported (and therefore alive and unmoved) until the call returns."""
    cdef fa_params p
    cdef fa_kvcache_update u
    cdef fa_device_buffers dev
    cdef bint use_dev
    cdef fa_backend backend
    cdef list keep
    cdef tuple qshape, kshape

    def __cinit__(self):
        fa_params_init(&self.p)
        memset(&self.u, 0, sizeof(self.u))
        memset(&self.dev, 0, sizeof(self.dev))
        self.use_dev = False
        self.keep = []

    cdef set_dtype(self, str dtype):
        try:
            self.p.dtype = _DTYPE_CODES[dtype]
        except KeyError:
            raise TypeError("dtype must be one of %s, got %r" % (", ".join(DTYPES), dtype)) from None

    # ---- 4-d element tensors ------------------------------------------------------------------------------------
    cdef tuple tensor(self, object arr, fa_tensor *t, int slot, bint writable, str name):
        """Fill `t` from a 4-d host buffer or DeviceTensor; returns its shape."""
        if isinstance(arr, DeviceTensor):
            return self._device_tensor(arr, t, slot, name)
        cdef const uint16_t[:, :, :, :] r16
        cdef uint16_t[:, :, :, :] w16
        cdef const float[:, :, :, :] r32
        cdef float[:, :, :, :] w32
        cdef const double[:, :, :, :] r64
        cdef double[:, :, :, :] w64
        cdef Py_ssize_t[4] shp
        cdef Py_ssize_t[4] st
        cdef Py_ssize_t isz
        cdef int i
        try:
            if self.p.dtype == FA_F16 or self.p.dtype == FA_BF16:
                isz = 2
                if writable:
                    w16 = arr
                    shp = w16.shape; st = w16.strides
                    self._need_nonempty(shp, name)
                    t.data = <void *>&w16[0, 0, 0, 0]
                    self.keep.append(w16)
                else:
                    r16 = arr
                    shp = r16.shape; st = r16.strides
                    self._need_nonempty(shp, name)
                    t.data = <void *>&r16[0, 0, 0, 0]
                    self.keep.append(r16)
            elif self.p.dtype == FA_F32:
                isz = 4
                if writable:
                    w32 = arr
                    shp = w32.shape; st = w32.strides
                    self._need_nonempty(shp, name)
                    t.data = <void *>&w32[0, 0, 0, 0]
                    self.keep.append(w32)
                else:
                    r32 = arr
                    shp = r32.shape; st = r32.strides
                    self._need_nonempty(shp, name)
                    t.data = <void *>&r32[0, 0, 0, 0]
                    self.keep.append(r32)
            else:
                isz = 8
                if writable:
                    w64 = arr
                    shp = w64.shape; st = w64.strides
                    self._need_nonempty(shp, name)
                    t.data = <void *>&w64[0, 0, 0, 0]
                    self.keep.append(w64)
                else:
                    r64 = arr
                    shp = r64.shape; st = r64.strides
                    self._need_nonempty(shp, name)
                    t.data = <void *>&r64[0, 0, 0, 0]
                    self.keep.append(r64)
        except (ValueError, TypeError, BufferError) as e:
            if isinstance(e, ValueError) and str(e).startswith(name + ":"):
                raise
            raise TypeError("%s: expected a %s 4-d buffer with a contiguous last axis%s (%s)"
                            % (name, _dtype_name(self.p.dtype), " (writable)" if writable else "", e)) from None
        if st[3] != isz and shp[3] != 1:
            raise ValueError("%s: the last (head-dim) axis must be contiguous (stride 1)" % name)
        t.batch_stride = _elem_stride(st[0], isz, name)
        t.row_stride = _elem_stride(st[1], isz, name)
        t.head_stride = _elem_stride(st[2], isz, name)
        return (shp[0], shp[1], shp[2], shp[3])

    cdef _need_nonempty(self, Py_ssize_t *shp, str name):
        if shp[0] == 0 or shp[1] == 0 or shp[2] == 0 or shp[3] == 0:
            raise ValueError("%s: empty tensors are handled by the Python layer and never reach the ABI" % name)

    cdef tuple _device_tensor(self, object d, fa_tensor *t, int slot, str name):
        if self.backend != FA_BACKEND_METAL:
            raise ValueError("%s: Metal buffers (DeviceTensor) need backend 'metal'" % name)
        shape = tuple(d.shape)
        strides = tuple(d.strides)
        if len(shape) != 4 or len(strides) != 4:
            raise ValueError("%s: DeviceTensor needs a 4-d shape and strides" % name)
        if strides[3] != 1 and shape[3] != 1:
            raise ValueError("%s: the last axis must have stride 1" % name)
        if not d.handle:
            raise ValueError("%s: DeviceTensor handle is NULL" % name)
        self.use_dev = True
        self.dev.handle[slot] = <void *><size_t>int(d.handle)
        self.dev.byte_offset[slot] = int(d.byte_offset)
        self.dev.byte_length[slot] = int(d.byte_length)
        t.data = NULL
        t.batch_stride = strides[0]
        t.row_stride = strides[1]
        t.head_stride = strides[2]
        return shape

    # ---- float32 side tensors -----------------------------------------------------------------------------------
    cdef tuple lse(self, object arr, bint writable):
        """softmax_lse: float32 [batch, heads, rows] (varlen [1, heads, total])."""
        cdef float[:, :, :] w
        cdef const float[:, :, :] r
        cdef Py_ssize_t[3] shp
        cdef Py_ssize_t[3] st
        if isinstance(arr, DeviceTensor):
            if self.backend != FA_BACKEND_METAL:
                raise ValueError("softmax_lse: Metal buffers (DeviceTensor) need backend 'metal'")
            if len(arr.shape) != 3 or len(arr.strides) != 3 or not arr.handle:
                raise ValueError("softmax_lse: DeviceTensor needs a handle, a 3-d shape and 3 strides")
            self.use_dev = True
            self.dev.handle[SLOT_LSE] = <void *><size_t>int(arr.handle)
            self.dev.byte_offset[SLOT_LSE] = int(arr.byte_offset)
            self.dev.byte_length[SLOT_LSE] = int(arr.byte_length)
            self.p.lse = NULL
            self.p.lse_batch_stride, self.p.lse_head_stride, self.p.lse_row_stride = arr.strides
            return tuple(arr.shape)
        try:
            if writable:
                w = arr
                shp = w.shape; st = w.strides
                if shp[0] and shp[1] and shp[2]:
                    self.p.lse = &w[0, 0, 0]
                self.keep.append(w)
            else:
                r = arr
                shp = r.shape; st = r.strides
                if shp[0] and shp[1] and shp[2]:
                    self.p.lse = <float *>&r[0, 0, 0]
                self.keep.append(r)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("softmax_lse: expected a float32 3-d buffer (%s)" % e) from None
        self.p.lse_batch_stride = _elem_stride(st[0], 4, "softmax_lse")
        self.p.lse_head_stride = _elem_stride(st[1], 4, "softmax_lse")
        self.p.lse_row_stride = _elem_stride(st[2], 4, "softmax_lse")
        return (shp[0], shp[1], shp[2])

    cdef attn_probs(self, object arr):
        cdef float[:, :, :, :] w
        if isinstance(arr, DeviceTensor):
            raise NotImplementedError("attn_probs: only host memory is supported for the attention probabilities")
        try:
            w = arr
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("attn_probs: expected a writable float32 4-d buffer with a contiguous last axis (%s)"
                            % e) from None
        if w.shape[0] == 0 or w.shape[1] == 0 or w.shape[2] == 0 or w.shape[3] == 0:
            return
        if w.strides[3] != 4 and w.shape[3] != 1:
            raise ValueError("attn_probs: the last axis must be contiguous")
        self.keep.append(w)
        self.p.attn_probs = &w[0, 0, 0, 0]
        self.p.attn_probs_batch_stride = _elem_stride(w.strides[0], 4, "attn_probs")
        self.p.attn_probs_head_stride = _elem_stride(w.strides[1], 4, "attn_probs")
        self.p.attn_probs_row_stride = _elem_stride(w.strides[2], 4, "attn_probs")

    cdef const int32_t *ints(self, object arr, str name, Py_ssize_t expected_len) except? NULL:
        """A contiguous int32 vector (cu_seqlens, seqused_k, ...) read on the host."""
        cdef const int32_t[::1] r
        try:
            r = arr
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("%s: expected a contiguous int32 1-d array (%s)" % (name, e)) from None
        if expected_len >= 0 and r.shape[0] != expected_len:
            raise ValueError("%s: expected %d entries, got %d" % (name, expected_len, r.shape[0]))
        if r.shape[0] == 0:
            raise ValueError("%s: must not be empty" % name)
        self.keep.append(r)
        return &r[0]

    cdef set_block_table(self, object arr):
        cdef const int32_t[:, :] r
        try:
            r = arr
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("block_table: expected an int32 2-d array with a contiguous last axis (%s)" % e) from None
        if r.shape[1] > 1 and r.strides[1] != 4:
            raise ValueError("block_table: the last axis must be contiguous")
        if r.strides[0] < 0 or r.strides[0] % 4:
            raise ValueError("block_table: row stride must be a non-negative multiple of 4 bytes")
        if r.shape[0] != self.p.batch:
            raise ValueError("block_table: expected %d rows (batch), got %d" % (self.p.batch, r.shape[0]))
        if r.shape[1] < 1:
            raise ValueError("block_table: needs at least one column")
        self.keep.append(r)
        self.p.block_table = &r[0, 0]
        self.p.block_table_batch_stride = r.strides[0] // 4
        self.p.max_blocks_per_seq = <int32_t>r.shape[1]

    cdef set_alibi(self, object arr):
        cdef const float[:, ::1] r
        try:
            r = arr
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("alibi_slopes: expected float32 of shape (nheads,) or (batch, nheads) (%s)" % e) from None
        if r.shape[1] != self.p.nheads_q or (r.shape[0] != 1 and r.shape[0] != self.p.batch):
            raise ValueError("alibi_slopes: expected shape (%d,) or (%d, %d), got (%d, %d)"
                             % (self.p.nheads_q, self.p.batch, self.p.nheads_q, r.shape[0], r.shape[1]))
        self.keep.append(r)
        self.p.alibi_slopes = &r[0, 0]
        self.p.alibi_batch_stride = 0 if r.shape[0] == 1 else r.strides[0] // 4

    cdef rotary(self, object cos, object sin):
        cdef const uint16_t[:, ::1] c16
        cdef const uint16_t[:, ::1] s16
        cdef const float[:, ::1] c32
        cdef const float[:, ::1] s32
        cdef const double[:, ::1] c64
        cdef const double[:, ::1] s64
        cdef Py_ssize_t rows, half
        try:
            if self.p.dtype == FA_F16 or self.p.dtype == FA_BF16:
                c16 = cos; s16 = sin
                rows = c16.shape[0]; half = c16.shape[1]
                if s16.shape[0] != rows or s16.shape[1] != half:
                    raise ValueError("rotary_sin: must have the shape of rotary_cos")
                if rows == 0 or half == 0:
                    raise ValueError("rotary_cos: must not be empty")
                self.u.rotary_cos = &c16[0, 0]; self.u.rotary_sin = &s16[0, 0]
                self.keep.extend((c16, s16))
            elif self.p.dtype == FA_F32:
                c32 = cos; s32 = sin
                rows = c32.shape[0]; half = c32.shape[1]
                if s32.shape[0] != rows or s32.shape[1] != half:
                    raise ValueError("rotary_sin: must have the shape of rotary_cos")
                if rows == 0 or half == 0:
                    raise ValueError("rotary_cos: must not be empty")
                self.u.rotary_cos = &c32[0, 0]; self.u.rotary_sin = &s32[0, 0]
                self.keep.extend((c32, s32))
            else:
                c64 = cos; s64 = sin
                rows = c64.shape[0]; half = c64.shape[1]
                if s64.shape[0] != rows or s64.shape[1] != half:
                    raise ValueError("rotary_sin: must have the shape of rotary_cos")
                if rows == 0 or half == 0:
                    raise ValueError("rotary_cos: must not be empty")
                self.u.rotary_cos = &c64[0, 0]; self.u.rotary_sin = &s64[0, 0]
                self.keep.extend((c64, s64))
        except (TypeError, BufferError) as e:
            raise TypeError("rotary_cos/rotary_sin: expected contiguous 2-d arrays (seqlen_ro, rotary_dim / 2) "
                            "of the dtype of q (%s)" % e) from None
        self.u.seqlen_ro = <int32_t>rows
        self.u.rotary_dim = <int32_t>(2 * half)

    # ---- the common shape/option block ------------------------------------------------------------------------------
    cdef fill(self, str backend, str dtype, q, k, v, out, softmax_lse, bint outputs_writable, dict kw):
        self.backend = _backend_code(backend)
        self.set_dtype(dtype)
        cu_q = kw.pop("cu_seqlens_q", None)
        cu_k = kw.pop("cu_seqlens_k", None)
        block_table = kw.pop("block_table", None)
        cache_batch_idx = kw.pop("cache_batch_idx", None)
        qs = self.tensor(q, &self.p.q, SLOT_Q, False, "q")
        ks = self.tensor(k, &self.p.k, SLOT_K, False, "k")
        vs = self.tensor(v, &self.p.v, SLOT_V, False, "v")
        if out is None:  # KV-cache append: no output; point it at q so the structural checks see a valid view
            self.p.out = self.p.q
            if self.use_dev and self.dev.handle[SLOT_Q] != NULL:
                self.dev.handle[SLOT_OUT] = self.dev.handle[SLOT_Q]
                self.dev.byte_offset[SLOT_OUT] = self.dev.byte_offset[SLOT_Q]
                self.dev.byte_length[SLOT_OUT] = self.dev.byte_length[SLOT_Q]
            os = qs
        else:
            os = self.tensor(out, &self.p.out, SLOT_OUT, outputs_writable, "out")
        if os != qs:
            raise ValueError("out: shape %s must equal the shape of q %s" % (os, qs))
        if ks != vs:
            raise ValueError("v: shape %s must equal the shape of k %s" % (vs, ks))
        self.qshape = qs
        self.kshape = ks
        self.p.nheads_q = <int32_t>qs[2]
        self.p.nheads_kv = <int32_t>ks[2]
        self.p.headdim = <int32_t>qs[3]
        self.p.headdim_v = <int32_t>vs[3]
        if ks[3] != qs[3]:
            raise ValueError("k: head dimension %d must equal that of q (%d)" % (ks[3], qs[3]))
        if cu_q is not None:
            if qs[0] != 1:
                raise ValueError("q: the varlen layout is passed as [1, total_q, heads, dim]")
            self.p.cu_seqlens_q = self.ints(cu_q, "cu_seqlens_q", -1)
            self.p.batch = <int32_t>(len(cu_q) - 1)
            if self.p.batch < 1:
                raise ValueError("cu_seqlens_q: needs at least 2 entries (batch + 1)")
            self.p.total_q = qs[1]
            if "max_seqlen_q" not in kw or "max_seqlen_k" not in kw:
                raise TypeError("the varlen layout needs max_seqlen_q and max_seqlen_k")
            self.p.seqlen_q = _seqlen(kw.pop("max_seqlen_q"), "max_seqlen_q")
            if cu_k is not None:
                self.p.cu_seqlens_k = self.ints(cu_k, "cu_seqlens_k", self.p.batch + 1)
            self.p.seqlen_k = _seqlen(kw.pop("max_seqlen_k"), "max_seqlen_k")
            if block_table is None:
                if ks[0] != 1:
                    raise ValueError("k: the varlen layout is passed as [1, total_k, heads, dim]")
                self.p.total_k = ks[1]
        else:
            self.p.batch = <int32_t>qs[0]
            self.p.seqlen_q = _seqlen(qs[1], "q: sequence length")
            kw.pop("max_seqlen_q", None)
            if block_table is not None:
                self.p.seqlen_k = _seqlen(kw.pop("max_seqlen_k", <int64_t>ks[1] * len(block_table[0])),
                                          "k: cache capacity (page size x block_table columns)")
            else:
                self.p.seqlen_k = _seqlen(kw.pop("max_seqlen_k", ks[1]), "k: sequence length")
            if cu_k is not None:
                raise ValueError("cu_seqlens_k: only valid together with cu_seqlens_q")
            if block_table is None and cache_batch_idx is None and ks[0] != qs[0]:
                raise ValueError("k: batch size %d must equal that of q (%d)" % (ks[0], qs[0]))
        if block_table is not None:
            self.set_block_table(block_table)
            self.p.num_blocks = ks[0]
            self.p.page_block_size = _seqlen(ks[1], "k_cache: page size")
        if cache_batch_idx is not None:
            self.p.cache_batch_idx = self.ints(cache_batch_idx, "cache_batch_idx", self.p.batch)
            self.p.cache_batch_count = ks[0]
        seqused_k = kw.pop("seqused_k", None)
        if seqused_k is not None:
            self.p.seqused_k = self.ints(seqused_k, "cache_seqlens", self.p.batch)
        leftpad_k = kw.pop("leftpad_k", None)
        if leftpad_k is not None:
            self.p.leftpad_k = self.ints(leftpad_k, "cache_leftpad", self.p.batch)
        if softmax_lse is not None:
            ls = self.lse(softmax_lse, outputs_writable)
            if cu_q is not None:
                want = (1, int(self.p.nheads_q), int(self.p.total_q))
            else:
                want = (int(self.p.batch), int(self.p.nheads_q), int(self.p.seqlen_q))
            if ls != want:
                raise ValueError("softmax_lse: expected shape %s, got %s" % (want, ls))
        self.p.softmax_scale = <double>kw.pop("softmax_scale")
        self.p.window_left = <int32_t>kw.pop("window_left", -1)
        self.p.window_right = <int32_t>kw.pop("window_right", -1)
        self.p.softcap = <double>kw.pop("softcap", 0.0)
        alibi = kw.pop("alibi_slopes", None)
        if alibi is not None:
            self.set_alibi(alibi)
        self.p.dropout_p = <float>kw.pop("dropout_p", 0.0)
        self.p.dropout_seed = <uint64_t>kw.pop("seed", 0)
        self.p.dropout_offset = <uint64_t>kw.pop("offset", 0)
        probs = kw.pop("attn_probs", None)
        if probs is not None:
            self.attn_probs(probs)
        self.p.num_splits = <int32_t>kw.pop("num_splits", 0)
        self.p.num_threads = <int32_t>kw.pop("num_threads", 0)
        self.p.sim_schedules = <int32_t>kw.pop("sim_schedules", 1)
        self.p.deterministic = 1 if kw.pop("deterministic", False) else 0
        if kw:
            raise TypeError("unexpected keyword argument(s): %s" % ", ".join(sorted(kw)))

    cdef finish(self):
        if self.use_dev:
            self.p.device_buffers = &self.dev


cdef str _dtype_name(int code):
    return DTYPES[code]


# ---- entry points ---------------------------------------------------------------------------------------------------

cdef _Call _forward_call(str backend, str dtype, q, k, v, out, softmax_lse, dict kw):
    cdef _Call c = _Call()
    c.fill(backend, dtype, q, k, v, out, softmax_lse, True, kw)
    c.finish()
    return c


def forward(str backend, str dtype, q, k, v, out, softmax_lse=None, **kw):
    """Forward attention into the caller's `out` (and `softmax_lse`, `attn_probs` when given). See _core.pyi."""
    cdef _Call c = _forward_call(backend, dtype, q, k, v, out, softmax_lse, kw)
    cdef char err[ERRLEN]
    cdef int rc
    cdef fa_cancel tok
    err[0] = 0
    _arm_cancel(&c.p, &tok)
    with nogil:
        rc = fa_forward(c.backend, &c.p, err, ERRLEN)
    _check_call(rc, err)


cdef _Call _backward_call(str backend, str dtype, dout, q, k, v, out, softmax_lse, dq, dk, dv, dict kw):
    cdef _Call c = _Call()
    if softmax_lse is None:
        raise ValueError("softmax_lse: required for backward")
    c.fill(backend, dtype, q, k, v, out, softmax_lse, False, kw)
    if c.tensor(dout, &c.p.dout, SLOT_DOUT, False, "dout") != c.qshape:
        raise ValueError("dout: shape must equal the shape of q %s" % (c.qshape,))
    if c.tensor(dq, &c.p.dq, SLOT_DQ, True, "dq") != c.qshape:
        raise ValueError("dq: shape must equal the shape of q %s" % (c.qshape,))
    if c.tensor(dk, &c.p.dk, SLOT_DK, True, "dk") != c.kshape:
        raise ValueError("dk: shape must equal the shape of k %s" % (c.kshape,))
    if c.tensor(dv, &c.p.dv, SLOT_DV, True, "dv") != c.kshape:
        raise ValueError("dv: shape must equal the shape of v %s" % (c.kshape,))
    c.finish()
    return c


def backward(str backend, str dtype, dout, q, k, v, out, softmax_lse, dq, dk, dv, **kw):
    """Gradients of the attention: fills the caller's dq, dk, dv. See _core.pyi."""
    cdef _Call c = _backward_call(backend, dtype, dout, q, k, v, out, softmax_lse, dq, dk, dv, kw)
    cdef char err[ERRLEN]
    cdef int rc
    cdef fa_cancel tok
    err[0] = 0
    _arm_cancel(&c.p, &tok)
    with nogil:
        rc = fa_backward(c.backend, &c.p, err, ERRLEN)
    _check_call(rc, err)


cdef _Call _kvcache_call(str backend, str dtype, q, k_cache, v_cache, k_new, v_new, dict kw):
    cdef _Call c = _Call()
    rotary_cos = kw.pop("rotary_cos", None)
    rotary_sin = kw.pop("rotary_sin", None)
    interleaved = kw.pop("rotary_interleaved", True)
    rotate_q_causal = kw.pop("rotate_q_causal", False)
    kw.setdefault("softmax_scale", 1.0)
    c.fill(backend, dtype, q, k_cache, v_cache, None, None, False, kw)
    if rotary_cos is not None:
        # fill() exported q read-only; the rotary update rotates q in place, so re-export it writable.
        c.tensor(q, &c.p.q, SLOT_Q, True, "q")
        c.p.out = c.p.q
    if (k_new is None) != (v_new is None):
        raise ValueError("k and v must be given together")
    if k_new is not None:
        ns = c.tensor(k_new, &c.u.knew, SLOT_KNEW, False, "k")
        if ns != c.tensor(v_new, &c.u.vnew, SLOT_VNEW, False, "v"):
            raise ValueError("v: must have the shape of k")
        if ns[0] != c.p.batch or ns[2] != c.p.nheads_kv or ns[3] != c.p.headdim:
            raise ValueError("k: expected shape (%d, seqlen_new, %d, %d), got %s"
                             % (c.p.batch, c.p.nheads_kv, c.p.headdim, ns))
        c.u.seqlen_new = _seqlen(ns[1], "k: new rows")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None:
        c.rotary(rotary_cos, rotary_sin)
    c.u.rotary_interleaved = 1 if interleaved else 0
    c.u.rotate_q_causal = 1 if rotate_q_causal else 0
    c.finish()
    return c


def kvcache_append(str backend, str dtype, q, k_cache, v_cache, k_new=None, v_new=None, **kw):
    """Rotate q in place and the new k, and write k_new/v_new into the caller's cache. See _core.pyi."""
    cdef _Call c = _kvcache_call(backend, dtype, q, k_cache, v_cache, k_new, v_new, kw)
    cdef char err[ERRLEN]
    cdef int rc
    err[0] = 0
    with nogil:
        rc = fa_kvcache_append(c.backend, &c.p, &c.u, err, ERRLEN)
    if rc != FA_OK:
        _raise(rc, err)


def describe_plan(str kind, *args, **kw):
    """The sim/metal dispatch plan of a call, as parsed JSON. `kind` is "forward", "backward" or "kvcache"; the
    remaining arguments are exactly those of the matching entry point (backend included, it is ignored)."""
    cdef _Call c
    cdef int k
    if kind not in _PLAN_KINDS:
        raise ValueError("kind must be one of 'forward', 'backward', 'kvcache', got %r" % (kind,))
    k = _PLAN_KINDS[kind]
    a = list(args) + [None] * (11 - len(args))
    if k == 0:
        c = _forward_call(a[0], a[1], a[2], a[3], a[4], a[5], a[6], kw)
    elif k == 1:
        c = _backward_call(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], kw)
    else:
        c = _kvcache_call(a[0], a[1], a[2], a[3], a[4], a[5], a[6], kw)
    cdef size_t cap = 1 << 20
    cdef bytearray buf = bytearray(cap)
    cdef char *json_buf = buf
    cdef char err[ERRLEN]
    cdef int rc
    err[0] = 0
    with nogil:
        rc = fa_describe_plan(k, &c.p, &c.u, json_buf, cap, err, ERRLEN)
    if rc != FA_OK:
        _raise(rc, err)
    text = bytes(buf).split(b"\0", 1)[0].decode("utf-8")
    return _json.loads(text)


def backend_available(str name):
    """(available, reason) for backend `name`; the reason is empty when available."""
    cdef fa_backend b = _backend_code(name)
    cdef char why[ERRLEN]
    cdef int ok
    why[0] = 0
    with nogil:
        ok = fa_backend_available(b, why, ERRLEN)
    return bool(ok), why.decode("utf-8", "replace")


def backend_describe(str name):
    """A short description of backend `name` as built."""
    cdef fa_backend b = _backend_code(name)
    cdef char out[ERRLEN]
    cdef int rc
    out[0] = 0
    with nogil:
        rc = fa_backend_describe(b, out, ERRLEN)
    text = out.decode("utf-8", "replace")
    if rc != FA_OK:
        return "unavailable: " + text if text else "unavailable"
    return text


def set_num_threads(int n):
    """CPU thread pool size for the following calls; 0 = one per CPU available."""
    if n < 0:
        raise ValueError("num_threads must be >= 0 (0 = hardware concurrency), got %d" % n)
    fa_set_num_threads(n)


def get_num_threads():
    """CPU thread count setting: the most threads a call uses (fewer when its work or the CPUs available are fewer)."""
    return fa_get_num_threads()


def _take_cpu_pool_activity():
    """What the CPU thread pool did for this thread's calls since the previous call of this function (tests,
    benchmarks): dict with calls, max_threads (the most one parallel step used; 1 = serial), workers_posted,
    workers_woken (from sleep) and workers_taken_back (before they started)."""
    cdef fa_cpu_pool_activity a
    with nogil:
        fa_cpu_take_pool_activity(&a)
    return {"calls": a.calls, "max_threads": a.max_threads, "workers_posted": a.workers_posted,
            "workers_woken": a.workers_woken, "workers_taken_back": a.workers_taken_back}


ABI_VERSION = 1


# ---- host memory the package allocates itself (csrc/fa_host_memory.h) ------------------------------------------------

from cpython.buffer cimport PyBUF_FORMAT

cdef extern from "fa_host_memory.h" nogil:
    void *_host_allocate "fa_host::allocate"(size_t bytes, size_t *region_bytes)
    void _host_release "fa_host::release"(void *p)
    bint _host_owned "fa_host::owned_region"(const void *ptr, size_t bytes, void **base, size_t *region_bytes)


cdef class HostBuffer:
    """`nbytes` of zeroed host memory in whole pages from mmap, registered as the package's own: the only host memory
    the Metal backend wraps without a copy (Apple forbids wrapping malloc'd memory; a caller's arrays are copied).
    Exposes the buffer protocol (bytes, writable); unmapped when the last reference goes."""
    cdef void *ptr
    cdef Py_ssize_t nbytes
    cdef Py_ssize_t shape[1]

    def __cinit__(self, Py_ssize_t nbytes):
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0, got %d" % nbytes)
        self.ptr = _host_allocate(<size_t>nbytes, NULL)
        if self.ptr == NULL:
            raise MemoryError("could not allocate %d bytes of page-aligned host memory" % nbytes)
        self.nbytes = nbytes
        self.shape[0] = nbytes

    def __dealloc__(self):
        if self.ptr != NULL:
            _host_release(self.ptr)
            self.ptr = NULL

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf = self.ptr
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        else:
            view.format = NULL
        view.ndim = 1
        view.shape = self.shape
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass

    @property
    def address(self):
        return <size_t>self.ptr


def host_memory_owned(size_t address, size_t nbytes):
    """Whether [address, address + nbytes) lies in one HostBuffer (memory the Metal backend may wrap)."""
    return bool(_host_owned(<const void *>address, nbytes, NULL, NULL))
