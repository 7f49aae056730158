# The plan cache: a call of a form seen before runs without redoing the Python validation it passed then.
# Included by _core.pyx.
#
# The public functions (interface.py's attention functions, kvcache.flash_attn_with_kvcache) call planned_attention /
# planned_kvcache first, with their raw arguments. That reads the tensors directly (NumPy's array struct; a torch
# tensor's data_ptr(), shape and stride()), builds a key from everything the Python validation decides on - array
# kind, dtype, shapes, every option's type and value - and looks it up. A hit fills fa_params from the plan stored
# under the key and calls the ABI: nothing is normalised again and no Python object is made but the outputs. A miss
# returns a PlanKey: the public function validates and runs the call on the general path and, when the call is of a
# form a plan describes, stores its normalised arguments under that key (PlanKey.store_attention / store_kvcache).
#
# A key covers what validation looked at, so a hit is a call validation would accept, normalised the same way; what
# is data rather than form (pointers, strides, the values of cache_seqlens, cu_seqlens and every index tensor) is
# checked on every call, and anything the fast path cannot vouch for - strides to copy, caches that overlap, values
# out of range, a spy on forward - goes to the general path, which decides and raises its own messages. The ABI re-checks every call structurally either way.

import numpy as _np

from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport uint8_t
from libc.string cimport memcmp, memcpy

cdef extern from *:
    """
    /* The leading fields of NumPy's array object (PyArrayObject_fields, numpy/ndarraytypes.h): the layout the
       PyArray_DATA/NDIM/DIMS/STRIDES/DESCR/FLAGS macros of every compiled NumPy extension read, kept by NumPy 2.
       Declared here because NumPy is not a build dependency; checked against __array_interface__ at import. */
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        Py_ssize_t *dimensions;
        Py_ssize_t *strides;
        PyObject *base;
        PyObject *descr;
        int flags;
    } fa_np_array;
    #define FA_NPY_WRITEABLE 0x0400

    /* DLPack's DLManagedTensor (dlpack.h, the ABI of every "dltensor" capsule): how a torch tensor's pointer,
       shape, strides, dtype and device come out in one call (torch.utils.dlpack.to_dlpack). */
    typedef struct { int32_t device_type; int32_t device_id; } fa_dl_device;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } fa_dl_dtype;
    typedef struct {
        void *data;
        fa_dl_device device;
        int32_t ndim;
        fa_dl_dtype dtype;
        int64_t *shape;
        int64_t *strides;
        uint64_t byte_offset;
    } fa_dl_tensor;
    typedef struct fa_dl_managed {
        fa_dl_tensor dl_tensor;
        void *manager_ctx;
        void (*deleter)(struct fa_dl_managed *self);
    } fa_dl_managed;
    """
    ctypedef struct fa_np_array:
        char *data
        int nd
        Py_ssize_t *dimensions
        Py_ssize_t *strides
        PyObject *descr
        int flags
    int FA_NPY_WRITEABLE
    ctypedef struct fa_dl_device:
        int32_t device_type
    ctypedef struct fa_dl_dtype:
        uint8_t code
        uint8_t bits
        uint16_t lanes
    ctypedef struct fa_dl_tensor:
        void *data
        fa_dl_device device
        int32_t ndim
        fa_dl_dtype dtype
        int64_t *shape
        int64_t *strides
        uint64_t byte_offset
    ctypedef struct fa_dl_managed:
        fa_dl_tensor dl_tensor

cdef enum:
    KEY_WORDS = 64
    PLAN_SLOTS = 64          # a power of two; a new form replaces whatever shared its slot
    PLAN_ATTENTION = 1
    PLAN_KVCACHE = 2
    STACK_BATCH = 256        # cache_seqlens of up to this many sequences live on the stack
    MAX_AXES = 5             # qkv packed: (batch, seqlen, 3, heads, dim)

# The attention functions' call forms (interface.py passes them to planned_attention): where q, k, v come from.
cdef enum:
    FORM_DENSE = 0           # flash_attn_func: q, k, v (batch, seqlen, heads, dim)
    FORM_QKV = 1             # flash_attn_qkvpacked_func: qkv (batch, seqlen, 3, heads, dim), given as q
    FORM_KV = 2              # flash_attn_kvpacked_func: q, kv (batch, seqlen_k, 2, heads_k, dim), given as k
    FORM_VARLEN = 3          # flash_attn_varlen_func: q, k, v (total, heads, dim); every form from here is varlen
    FORM_VARLEN_QKV = 4      # flash_attn_varlen_qkvpacked_func: qkv (total, 3, heads, dim), given as q
    FORM_VARLEN_KV = 5       # flash_attn_varlen_kvpacked_func: q, kv (total_k, 2, heads_k, dim), given as k
    FORM_VARLEN_PAGED = 6    # flash_attn_varlen_func with a block_table: k, v (num_blocks, page, heads_k, dim)

PLAN_FORMS = {"dense": FORM_DENSE, "qkvpacked": FORM_QKV, "kvpacked": FORM_KV, "varlen": FORM_VARLEN,
              "varlen_qkvpacked": FORM_VARLEN_QKV, "varlen_kvpacked": FORM_VARLEN_KV, "varlen_paged": FORM_VARLEN_PAGED}

cdef struct _View:           # one tensor as read directly
    char *data
    int nd                   # axes (0: no tensor)
    Py_ssize_t shape[MAX_AXES]
    Py_ssize_t strides[MAX_AXES]  # NumPy: bytes; torch: elements (see elements)
    int64_t dtype            # the element type: NumPy's descr (address), or torch's as DLPack (code, bits)
    bint elements
    bint writeable

cdef struct _Key:
    int64_t w[KEY_WORDS]
    int n

cdef struct _Plan:
    bint used
    int64_t key[KEY_WORDS]
    fa_backend backend
    fa_dtype dtype
    double softmax_scale, softcap
    int32_t window_left, window_right, num_splits
    double dropout_p
    int32_t capacity
    bint want_lse, appending, interleaved, rotate_q_causal
    bint return_tuple, want_probs  # attention: (out, softmax_lse, S_dmask) returned; S_dmask computed

cdef _Plan _plans[PLAN_SLOTS]
cdef list _plan_refs = [None] * PLAN_SLOTS   # per slot: the objects whose addresses its key holds, kept alive


# ---- reading tensors ----------------------------------------------------------------------------------------------

cdef object _np_ndarray = _np.ndarray
cdef object _np_empty = _np.empty
cdef object _np_int32 = _np.dtype(_np.int32)
cdef object _np_float32 = _np.dtype(_np.float32)
cdef object _np_zeros = _np.zeros


cdef bint _numpy_struct_matches() except -1:
    a = _np.zeros((3, 4), _np.float32)[:, 1:]
    cdef fa_np_array *s = <fa_np_array *>a
    ok = (s.nd == 2 and s.dimensions[0] == 3 and s.dimensions[1] == 3 and s.strides[0] == 16 and s.strides[1] == 4
          and <size_t>s.data == a.__array_interface__["data"][0] and <object>s.descr is a.dtype
          and (s.flags & FA_NPY_WRITEABLE) != 0)
    a.setflags(write=False)
    return ok and (s.flags & FA_NPY_WRITEABLE) == 0


cdef bint _NUMPY_DIRECT = _numpy_struct_matches()

cdef object _torch_tensor = None   # torch.Tensor and the torch functions used per call, once torch is imported
cdef object _torch_grad_enabled, _torch_is_tracing, _torch_inference_mode, _torch_bump, _torch_empty
cdef object _torch_empty_like, _torch_float32, _torch_to_dlpack, _torch_zeros, _torch_is_neg, _torch_data_ptr

# torch dtypes in _View.dtype: DLPack's (code, bits) with bit 62 set (never a NumPy descr's address)
cdef int64_t _DL_TAG = 1LL << 62
cdef int64_t _DL_INT32 = _DL_TAG | (0 << 8) | 32
cdef int64_t _DL_FLOAT32 = _DL_TAG | (2 << 8) | 32


cdef bint _torch_ready() except -1:
    global _torch_tensor, _torch_grad_enabled, _torch_is_tracing, _torch_inference_mode, _torch_bump
    global _torch_empty, _torch_empty_like, _torch_float32, _torch_to_dlpack, _torch_zeros, _torch_is_neg
    global _torch_data_ptr
    if _torch_tensor is not None:
        return True
    torch = _sys.modules.get("torch")
    if torch is None or not hasattr(torch, "Tensor"):  # not imported (or still importing)
        return False
    _torch_grad_enabled, _torch_is_tracing = torch.is_grad_enabled, torch._C._is_tracing
    _torch_inference_mode, _torch_bump = torch.is_inference_mode_enabled, torch._C._increment_version
    _torch_empty, _torch_empty_like, _torch_zeros = torch.empty, torch.empty_like, torch.zeros
    _torch_float32, _torch_to_dlpack = torch.float32, torch._C._to_dlpack
    _torch_is_neg, _torch_data_ptr = torch.Tensor.is_neg, torch.Tensor.data_ptr  # unbound: no lookup per call
    _torch_tensor = torch.Tensor
    return True


cdef int _read(object x, object kind, int ndim, _View *v) except -1:
    """x (of exactly the type `kind`: numpy.ndarray or torch.Tensor) as a _View of `ndim` axes; 0 when it cannot be
    read directly (another rank; a torch tensor off the CPU, without storage, or with the negation bit)."""
    cdef fa_np_array *a
    cdef fa_dl_tensor *t
    cdef int i
    cdef Py_ssize_t compact = 1
    v.nd = ndim
    if kind is _np_ndarray:
        a = <fa_np_array *>x
        if a.nd != ndim:
            return 0
        for i in range(ndim):
            v.shape[i] = a.dimensions[i]
            v.strides[i] = a.strides[i]
        v.data = a.data
        v.dtype = <int64_t><size_t>a.descr
        v.elements = False
        v.writeable = (a.flags & FA_NPY_WRITEABLE) != 0
        return 1
    try:
        capsule = _torch_to_dlpack(x)
    except Exception:  # no storage (functorch wrappers, fake tensors, sparse): the general path decides
        return 0
    t = &(<fa_dl_managed *>PyCapsule_GetPointer(capsule, "dltensor")).dl_tensor
    if t.device.device_type != 1 or t.ndim != ndim or t.dtype.lanes != 1:  # kDLCPU
        return 0
    # DLPack hands out the stored values, not the negated ones a tensor with the negation bit stands for. Public
    # torch gives that bit only to floating tensors (the .imag of a conjugated complex tensor); an integer tensor
    # gets it from the private torch._neg_view alone, and the values of such an index array could pass the checks
    # below only where the values it stands for would not (cu_seqlens must start at 0 and not decrease, pages lie
    # in [0, num_blocks): the negation of a passing array is refused unless all zeros, where both agree), so asking
    # is left to the floating tensors (kDLInt 0, kDLUInt 1 and kDLBool 6 are not).
    if t.dtype.code != 0 and t.dtype.code != 1 and t.dtype.code != 6 and _torch_is_neg(x):
        return 0
    v.data = <char *>t.data + t.byte_offset  # valid after the capsule goes: x keeps the storage alive
    for i in range(ndim - 1, -1, -1):  # no strides: compact row-major (older DLPack)
        v.shape[i] = t.shape[i]
        v.strides[i] = t.strides[i] if t.strides != NULL else compact
        compact *= t.shape[i]
    v.dtype = _DL_TAG | (t.dtype.code << 8) | t.dtype.bits
    v.elements = True
    v.writeable = True
    return 1


cdef bint _usable(_View *v, Py_ssize_t itemsize, int ndim, bint written) noexcept:
    """Whether the ABI can address v as it is (what _arrays.core_view passes without a copy): non-empty, aligned,
    non-negative strides of whole elements, the last of stride 1; turns v's strides into element strides."""
    cdef int i
    cdef Py_ssize_t st
    if v.data == NULL or (<size_t>v.data) % itemsize or (written and not v.writeable):
        return False
    for i in range(ndim):
        st = v.strides[i] * (itemsize if v.elements else 1)
        if v.shape[i] == 0 or st < 0 or st % itemsize:
            return False
        v.strides[i] = st // itemsize
    return v.strides[ndim - 1] == 1 or v.shape[ndim - 1] == 1


cdef void _to_tensor(_View *v, fa_tensor *t) noexcept:
    t.data = v.data
    t.batch_stride = v.strides[0]
    t.row_stride = v.strides[1]
    t.head_stride = v.strides[2]


cdef void _extent(_View *v, Py_ssize_t itemsize, size_t *lo, size_t *hi) noexcept:
    """[lo, hi): the bytes v's elements occupy (element strides, all non-negative)."""
    cdef int i
    lo[0] = <size_t>v.data
    hi[0] = lo[0] + itemsize
    for i in range(4):
        hi[0] += (v.shape[i] - 1) * v.strides[i] * itemsize


# ---- keys -----------------------------------------------------------------------------------------------------------

cdef inline void _push(_Key *k, int64_t word) noexcept:
    if k.n < KEY_WORDS:
        k.w[k.n] = word
    k.n += 1


cdef bint _push_option(_Key *k, object x) except -1:
    """An option's exact type and value as two key words: None, a bool, an int that fits int64 or a float. Anything
    else (NumPy scalars, tensors, other objects) is not described by a key: False."""
    cdef double d
    cdef int64_t bits
    if x is None:
        _push(k, 1)
        _push(k, 0)
    elif x is True or x is False:
        _push(k, 2)
        _push(k, 1 if x is True else 0)
    elif type(x) is int:
        try:
            bits = x
        except OverflowError:
            return False
        _push(k, 3)
        _push(k, bits)
    elif type(x) is float:
        d = x
        memcpy(&bits, &d, sizeof(bits))
        _push(k, 4)
        _push(k, bits)
    else:
        return False
    return True


cdef bint _push_pair(_Key *k, object pair) except -1:
    """window_size as flash_attn's callers pass it: a tuple of two options."""
    if type(pair) is not tuple or len(pair) != 2:
        return False
    return _push_option(k, pair[0]) and _push_option(k, pair[1])


cdef bint _push_backend(_Key *k, object backend) noexcept:
    cdef int code
    if backend == "auto":
        code = 1
    elif backend == "cpu":
        code = 2
    elif backend == "sim":
        code = 3
    elif backend == "metal":
        code = 4
    else:
        return False
    _push(k, code)
    return True


cdef void _push_shape(_Key *k, _View *v, int ndim) noexcept:
    cdef int i
    for i in range(ndim):
        _push(k, v.shape[i])


cdef void _push_shape_from(_Key *k, _View *v, int first) noexcept:
    """v's rank and its shape from axis `first` on (the axes before it are data, checked on every call)."""
    cdef int i
    _push(k, v.nd)
    for i in range(first, v.nd):
        _push(k, v.shape[i])


# What the attention plans take from the layers above (given by _dispatch at import: this layer imports none of them):
# _validate.FLASH_ATTN_PROBS, a value of return_attn_probs, and _dropout.philox_state, the dropout RNG of a call.
cdef object _probs_rule = None
cdef object _philox_state = None


def set_plan_sources(probs_rule, philox_state):
    """Give the plan cache flash_attn's return_attn_probs rule value and the dropout RNG (see above)."""
    global _probs_rule, _philox_state
    _probs_rule, _philox_state = probs_rule, philox_state


cdef bint _push_probs_option(_Key *k, object x) except -1:
    """return_attn_probs: an option, or FLASH_ATTN_PROBS (flash_attn's rule, the drop-in's value)."""
    if x is _probs_rule and x is not None:
        _push(k, 5)
        _push(k, 0)
        return True
    return _push_option(k, x)


cdef void _select(_View *src, int axis, Py_ssize_t idx, Py_ssize_t itemsize, _View *dst) noexcept:
    """dst: entry `idx` of src's `axis` (a packed qkv/kv tensor, element strides), that axis removed."""
    cdef int i, j = 0
    dst[0] = src[0]
    dst.data = src.data + idx * src.strides[axis] * itemsize
    for i in range(src.nd):
        if i != axis:
            dst.shape[j] = src.shape[i]
            dst.strides[j] = src.strides[i]
            j += 1
    dst.nd = src.nd - 1


cdef void _lead(_View *v) noexcept:
    """The varlen layout of the ABI: a (total, heads, dim) view as [1, total, heads, dim]."""
    cdef int i
    for i in range(2, -1, -1):
        v.shape[i + 1] = v.shape[i]
        v.strides[i + 1] = v.strides[i]
    v.shape[0], v.strides[0], v.nd = 1, 0, 4


cdef inline uint64_t _hash(_Key *k) noexcept:
    cdef uint64_t h = 1469598103934665603ULL
    cdef int i
    for i in range(k.n):
        h = (h ^ <uint64_t>k.w[i]) * 1099511628211ULL
    return h


cdef _Plan *_lookup(_Key *k) noexcept:
    """The plan stored under k, or NULL. Valid while the GIL is held (another thread may replace it)."""
    cdef _Plan *plan = &_plans[_hash(k) & (PLAN_SLOTS - 1)]
    if plan.used and memcmp(plan.key, k.w, sizeof(k.w)) == 0:
        return plan
    return NULL


cdef class PlanKey:
    """The key of a call form no plan covers yet, returned by planned_attention / planned_kvcache: once the general
    path has validated and run the call, store_attention / store_kvcache record its normalised arguments under it."""
    cdef _Key k
    cdef tuple refs  # the type and dtype objects whose addresses the key holds

    cdef _Plan *_claim(self):
        slot = _hash(&self.k) & (PLAN_SLOTS - 1)
        cdef _Plan *plan = &_plans[slot]
        memset(plan, 0, sizeof(_Plan))
        memcpy(plan.key, self.k.w, sizeof(self.k.w))
        _plan_refs[slot] = self.refs
        return plan

    cdef fa_dtype _dtype(self):
        name = str(<object>self.refs[1]).replace("torch.", "")
        return _DTYPE_CODES[name]

    def store_attention(self, dict args, bint return_tuple):
        """Record an attention function's normalised arguments (`_validate.attention`'s; the key says the form)."""
        cdef fa_dtype dtype = self._dtype()
        cdef fa_backend backend = _backend_code(args["backend"])
        cdef _Plan *plan = self._claim()
        plan.backend, plan.dtype = backend, dtype
        plan.softmax_scale, plan.softcap = args["softmax_scale"], args["softcap"]
        plan.window_left, plan.window_right = args["window_size"]
        plan.dropout_p = args["dropout_p"]
        plan.return_tuple, plan.want_probs = return_tuple, args["return_attn_probs"]
        plan.used = True

    def store_kvcache(self, c):
        """Record flash_attn_with_kvcache's normalised arguments (a _validate_kvcache.KvcacheCall) if a plan
        describes the call: one with something to compute (the key says the form)."""
        if c.empty or c.kind == "mps":
            return
        cdef fa_dtype dtype = self._dtype()
        cdef fa_backend backend = _backend_code(c.backend)
        cdef _Plan *plan = self._claim()
        plan.backend, plan.dtype = backend, dtype
        plan.softmax_scale, plan.softcap = c.scale, c.softcap
        plan.window_left, plan.window_right = c.window
        plan.num_splits, plan.capacity = c.splits, c.capacity
        plan.want_lse, plan.appending = c.want_lse, c.k is not None
        plan.interleaved, plan.rotate_q_causal = c.interleaved, c.rotate_q_causal
        plan.used = True


cdef object _kind_of(object x):
    """numpy.ndarray or torch.Tensor when x is exactly one of them (subclasses may override anything), else None."""
    t = type(x)
    if t is _np_ndarray:
        return t if _NUMPY_DIRECT else None
    if _torch_tensor is not None or _torch_ready():
        if t is _torch_tensor:
            return t
    return None


cdef object _miss(_Key *k, object kind, object q):
    cdef PlanKey key = PlanKey.__new__(PlanKey)
    key.k = k[0]
    key.refs = (kind, q.dtype)  # a NumPy descr's address is in the key: it must stay that descr
    return key


cdef object _empty_like(object kind, object x, _View *v, bint contiguous):
    """An uninitialised output of x's kind, dtype and shape, C-contiguous (as _arrays.empty makes it)."""
    if kind is _np_ndarray:
        return _np_empty((v.shape[0], v.shape[1], v.shape[2], v.shape[3]), <object><PyObject *><size_t>v.dtype)
    if contiguous:
        return _torch_empty_like(x)
    return _torch_empty(x.shape, dtype=x.dtype)


cdef object _empty_lse(object kind, Py_ssize_t b, Py_ssize_t h, Py_ssize_t s):
    return _empty_lse_shape(kind, (b, h, s))


cdef object _empty_lse_shape(object kind, tuple shape):
    if kind is _np_ndarray:
        return _np_empty(shape, _np_float32)
    return _torch_empty(shape, dtype=_torch_float32)


cdef object _zeros_f32(object kind, tuple shape):
    if kind is _np_ndarray:
        return _np_zeros(shape, _np_float32)
    return _torch_zeros(shape, dtype=_torch_float32)


cdef char *_data_of(object kind, object x) except? NULL:
    """The data pointer of an output this module just allocated (C-contiguous, the shape it asked for)."""
    if kind is _np_ndarray:
        return (<fa_np_array *>x).data
    return <char *><size_t>_torch_data_ptr(x)


cdef void _contiguous_view(_View *like, char *data, _View *v) noexcept:
    """v: a C-contiguous tensor of like's shape at data (element strides)."""
    cdef int i
    v.data = data
    for i in range(4):
        v.shape[i] = like.shape[i]
    v.strides[3] = 1
    for i in range(2, -1, -1):
        v.strides[i] = v.strides[i + 1] * v.shape[i + 1]


cdef bint _contiguous(_View *v) noexcept:
    return (v.strides[3] == 1 and v.strides[2] == v.shape[3] and v.strides[1] == v.shape[2] * v.shape[3]
            and v.strides[0] == v.shape[1] * v.shape[2] * v.shape[3])


cdef bint _finish_key(_Key *k) noexcept:
    """Zero the unused words (keys compare whole); False when the call needs more words than a key has."""
    if k.n > KEY_WORDS:
        return False
    memset(&k.w[k.n], 0, (KEY_WORDS - k.n) * sizeof(int64_t))
    return True


cdef uint64_t _plan_hits = 0  # calls a stored plan ran (plan_cache_info)


def plan_cache_info():
    """{"slots": how many call forms the cache holds at most, "used": how many it holds, "hits": calls run from a
    stored plan since the start or clear_plans()}."""
    return {"slots": PLAN_SLOTS, "used": sum(1 for i in range(PLAN_SLOTS) if _plans[i].used), "hits": _plan_hits}


def clear_plans():
    """Forget every stored plan (the next call of each form validates again)."""
    global _plan_hits
    memset(_plans, 0, sizeof(_plans))
    for i in range(PLAN_SLOTS):
        _plan_refs[i] = None
    _plan_hits = 0

