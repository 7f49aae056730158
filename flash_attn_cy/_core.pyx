# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Bridge from Python to the C ABI (csrc/fa_abi.h).

Everything here is deliberately thin: the public API (interface.py, kvcache.py) validates and normalises
arguments, allocates outputs and converts NumPy/PyTorch objects into the plain buffers these functions take.
This module turns those buffers into an `fa_params` through the buffer protocol (fp16 and bf16 travel as uint16
buffers, fp32 as float, fp64 as double; the head-dim axis must have stride 1), releases the GIL for every call into
the ABI, and maps the ABI's error codes to Python exceptions carrying the C message.

The plan cache (planned_attention, planned_kvcache) is the one shortcut: a public call of a form already validated
and run once goes straight from its arguments to the ABI (see _core_plans.pxi).

Files, by job (included here, one extension module): _core_abi.pxi (the C declarations), _core_call.pxi (an ABI call
assembled from buffers), _core_plans.pxi, _core_planned.pxi and _core_planned_attn.pxi (the plan cache and its entry
points),
_core_host.pxi (host memory the package allocates itself).

Tensor arguments are either host buffers (NumPy arrays or anything exporting the buffer protocol with the
element type above) or `DeviceTensor` tuples describing memory inside an MTLBuffer (PyTorch MPS / DLPack
kDLMetal, backend "metal" only). Shapes are always 4-d [batch, rows, heads, dim] for q/k/v-like tensors (the
varlen layout passes its packed [total, heads, dim] tensors with a leading axis of 1), 3-d for the LSE
[batch, heads, rows] (varlen: [1, heads, total]), 4-d for attention probabilities.
"""

from collections import namedtuple
import json as _json
import sys as _sys
import threading as _threading

from libc.string cimport memset
from cpython.exc cimport PyErr_CheckSignals

include "_core_abi.pxi"

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

DEF ERRLEN = 4096  # the sim backend lists up to 8 faults

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
    if rc == FA_ERR_FAULT and "[pc: " in msg:  # a simulator fault's code address: the .metal line, where known
        try:
            from .sim._run import _with_source_line
            msg = _with_source_line(msg)
        except Exception:  # noqa: BLE001 - the address stays in the message
            pass
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


cdef extern from "fa_abi.h" nogil:
    void fa_sim_set_launch_hook(void *hook)


def _sim_set_launch_hook(size_t address):
    """Install (address of a C function, csrc/sim_profile_hook.h) or remove (0) the hook through which the sim
    backend runs its launches while flash_attn_cy.sim.profile() is active."""
    fa_sim_set_launch_hook(<void *>address)


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


include "_core_call.pxi"


cdef str _dtype_name(int code):
    return DTYPES[code]


# ---- entry points ---------------------------------------------------------------------------------------------------

cdef int _attention(fa_backend backend, fa_params *p, bint backward) except -1:
    """One forward or backward ABI call: the GIL released, signals polled on the main thread, errors raised."""
    cdef char err[ERRLEN]
    cdef int rc
    cdef fa_cancel tok
    err[0] = 0
    _arm_cancel(p, &tok)
    with nogil:
        rc = fa_backward(backend, p, err, ERRLEN) if backward else fa_forward(backend, p, err, ERRLEN)
    _check_call(rc, err)
    return 0


cdef _Call _forward_call(str backend, str dtype, q, k, v, out, softmax_lse, dict kw):
    cdef _Call c = _Call()
    c.fill(backend, dtype, q, k, v, out, softmax_lse, True, kw)
    c.finish()
    return c


def forward(str backend, str dtype, q, k, v, out, softmax_lse=None, **kw):
    """Forward attention into the caller's `out` (and `softmax_lse`, `attn_probs` when given). See _core.pyi."""
    cdef _Call c = _forward_call(backend, dtype, q, k, v, out, softmax_lse, kw)
    _attention(c.backend, &c.p, False)


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
    _attention(c.backend, &c.p, True)


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


ctypedef int (*_backend_text_fn)(fa_backend, char *, size_t) noexcept nogil


cdef tuple _backend_text(str name, _backend_text_fn fn):
    """(fn's result, the text it wrote) for backend `name`: fa_backend_available's (ok, why) and
    fa_backend_describe's (status, description) share this form."""
    cdef fa_backend b = _backend_code(name)
    cdef char text[ERRLEN]
    cdef int rc
    text[0] = 0
    with nogil:
        rc = fn(b, text, ERRLEN)
    return rc, text.decode("utf-8", "replace")


def backend_available(str name):
    """(available, reason) for backend `name`; the reason is empty when available."""
    ok, why = _backend_text(name, fa_backend_available)
    return bool(ok), why


def backend_describe(str name):
    """A short description of backend `name` as built."""
    rc, text = _backend_text(name, fa_backend_describe)
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


include "_core_plans.pxi"
include "_core_planned.pxi"
include "_core_planned_attn.pxi"
include "_core_host.pxi"
