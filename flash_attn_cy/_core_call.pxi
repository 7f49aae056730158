# One ABI call being assembled from Python buffers (the general path of forward/backward/kvcache_append/describe_plan).
# Included by _core.pyx.
#
# Every host buffer goes through one typed helper, _Call.export: the buffer protocol with the element format the
# dtype asks for (_element_format / _element_size: the one table of it), held exported - and therefore alive and
# unmoved - until the call object goes. No branch per element type or per writability.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE

cdef enum:
    # buffers one call can hold: 11 tensors, 6 int32 vectors, alibi, 2 rotary tables, with room to spare
    MAX_EXPORTS = 32


cdef inline Py_ssize_t _element_size(int dtype) noexcept:
    """Bytes per element of the ABI dtype (fp16 and bf16 travel as uint16 bits)."""
    if dtype == FA_F32:
        return 4
    if dtype == FA_F64:
        return 8
    return 2


cdef inline char _element_format(int dtype) noexcept:
    """Buffer-protocol format character of the ABI dtype: float, double, or uint16 for the 16-bit floats."""
    if dtype == FA_F32:
        return b'f'
    if dtype == FA_F64:
        return b'd'
    return b'H'


cdef bint _format_is(const char *fmt, char want) noexcept:
    """Whether a buffer's format string describes one native `want` element ('@', '=' and, on this little-endian
    ABI, '<' prefixes allowed; a NULL format means unsigned bytes). int32 may be spelled 'l' where long is 4 bytes."""
    if fmt == NULL:
        return want == b'B'
    if fmt[0] == b'@' or fmt[0] == b'=' or (fmt[0] == b'<' and _LITTLE_ENDIAN):
        fmt += 1
    if fmt[0] == 0 or fmt[1] != 0:
        return False
    return fmt[0] == want or (want == b'i' and fmt[0] == b'l' and sizeof(long) == 4)


cdef bint _LITTLE_ENDIAN = _sys.byteorder == "little"


cdef class _Call:
    """One ABI call being assembled: the params, the optional KV update, device buffers, and the host buffers held
    exported until the call returns."""
    cdef fa_params p
    cdef fa_kvcache_update u
    cdef fa_device_buffers dev
    cdef bint use_dev
    cdef fa_backend backend
    cdef Py_buffer views[MAX_EXPORTS]
    cdef int nviews
    cdef tuple qshape, kshape

    def __cinit__(self):
        fa_params_init(&self.p)
        memset(&self.u, 0, sizeof(self.u))
        memset(&self.dev, 0, sizeof(self.dev))
        self.use_dev = False
        self.nviews = 0

    def __dealloc__(self):
        cdef int i
        for i in range(self.nviews):
            PyBuffer_Release(&self.views[i])

    cdef set_dtype(self, str dtype):
        try:
            self.p.dtype = _DTYPE_CODES[dtype]
        except KeyError:
            raise TypeError("dtype must be one of %s, got %r" % (", ".join(DTYPES), dtype)) from None

    cdef Py_buffer *export(self, object obj, int ndim, char fmt, Py_ssize_t itemsize, bint writable,
                           bint contiguous_last) except NULL:
        """obj's buffer as an `ndim`-d array of `fmt` elements (writable if asked, last axis of stride 1 if asked),
        held until the call is done. Raises ValueError (wrong form), TypeError or BufferError (no such buffer)."""
        cdef Py_buffer *view
        cdef int flags = PyBUF_STRIDES | PyBUF_FORMAT | (PyBUF_WRITABLE if writable else 0)
        if self.nviews == MAX_EXPORTS:
            raise RuntimeError("more than %d buffers in one call" % MAX_EXPORTS)
        view = &self.views[self.nviews]
        PyObject_GetBuffer(obj, view, flags)
        self.nviews += 1
        if view.ndim != ndim:
            raise ValueError("Buffer has wrong number of dimensions (expected %d, got %d)" % (ndim, view.ndim))
        if view.itemsize != itemsize or not _format_is(view.format, fmt):
            raise ValueError("Buffer dtype mismatch, expected '%s' but got '%s'"
                             % (chr(fmt), (<bytes>view.format).decode("ascii", "replace") if view.format else "B"))
        if contiguous_last and view.shape[ndim - 1] > 1 and view.strides[ndim - 1] != itemsize:
            raise ValueError("Buffer not C contiguous.")
        return view

    # ---- 4-d element tensors ------------------------------------------------------------------------------------
    cdef tuple tensor(self, object arr, fa_tensor *t, int slot, bint writable, str name):
        """Fill `t` from a 4-d host buffer or DeviceTensor; returns its shape."""
        if isinstance(arr, DeviceTensor):
            return self._device_tensor(arr, t, slot, name)
        cdef Py_ssize_t isz = _element_size(self.p.dtype)
        cdef Py_buffer *view
        try:
            view = self.export(arr, 4, _element_format(self.p.dtype), isz, writable, False)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("%s: expected a %s 4-d buffer with a contiguous last axis%s (%s)"
                            % (name, _dtype_name(self.p.dtype), " (writable)" if writable else "", e)) from None
        cdef Py_ssize_t *shp = view.shape
        cdef Py_ssize_t *st = view.strides
        if shp[0] == 0 or shp[1] == 0 or shp[2] == 0 or shp[3] == 0:
            raise ValueError("%s: empty tensors are handled by the Python layer and never reach the ABI" % name)
        if st[3] != isz and shp[3] != 1:
            raise ValueError("%s: the last (head-dim) axis must be contiguous (stride 1)" % name)
        t.data = view.buf
        t.batch_stride = _elem_stride(st[0], isz, name)
        t.row_stride = _elem_stride(st[1], isz, name)
        t.head_stride = _elem_stride(st[2], isz, name)
        return (shp[0], shp[1], shp[2], shp[3])

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
        self._device_slot(d, slot)
        t.data = NULL
        t.batch_stride = strides[0]
        t.row_stride = strides[1]
        t.head_stride = strides[2]
        return shape

    cdef _device_slot(self, object d, int slot):
        self.use_dev = True
        self.dev.handle[slot] = <void *><size_t>int(d.handle)
        self.dev.byte_offset[slot] = int(d.byte_offset)
        self.dev.byte_length[slot] = int(d.byte_length)

    # ---- float32 side tensors -----------------------------------------------------------------------------------
    cdef tuple lse(self, object arr, bint writable):
        """softmax_lse: float32 [batch, heads, rows] (varlen [1, heads, total])."""
        cdef Py_buffer *view
        if isinstance(arr, DeviceTensor):
            if self.backend != FA_BACKEND_METAL:
                raise ValueError("softmax_lse: Metal buffers (DeviceTensor) need backend 'metal'")
            if len(arr.shape) != 3 or len(arr.strides) != 3 or not arr.handle:
                raise ValueError("softmax_lse: DeviceTensor needs a handle, a 3-d shape and 3 strides")
            self._device_slot(arr, SLOT_LSE)
            self.p.lse = NULL
            self.p.lse_batch_stride, self.p.lse_head_stride, self.p.lse_row_stride = arr.strides
            return tuple(arr.shape)
        try:
            view = self.export(arr, 3, b'f', 4, writable, False)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("softmax_lse: expected a float32 3-d buffer (%s)" % e) from None
        if view.shape[0] and view.shape[1] and view.shape[2]:
            self.p.lse = <float *>view.buf
        self.p.lse_batch_stride = _elem_stride(view.strides[0], 4, "softmax_lse")
        self.p.lse_head_stride = _elem_stride(view.strides[1], 4, "softmax_lse")
        self.p.lse_row_stride = _elem_stride(view.strides[2], 4, "softmax_lse")
        return (view.shape[0], view.shape[1], view.shape[2])

    cdef attn_probs(self, object arr):
        cdef Py_buffer *view
        if isinstance(arr, DeviceTensor):
            raise NotImplementedError("attn_probs: only host memory is supported for the attention probabilities")
        try:
            view = self.export(arr, 4, b'f', 4, True, False)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("attn_probs: expected a writable float32 4-d buffer with a contiguous last axis (%s)"
                            % e) from None
        cdef Py_ssize_t *shp = view.shape
        if shp[0] == 0 or shp[1] == 0 or shp[2] == 0 or shp[3] == 0:
            return
        if view.strides[3] != 4 and shp[3] != 1:
            raise ValueError("attn_probs: the last axis must be contiguous")
        self.p.attn_probs = <float *>view.buf
        self.p.attn_probs_batch_stride = _elem_stride(view.strides[0], 4, "attn_probs")
        self.p.attn_probs_head_stride = _elem_stride(view.strides[1], 4, "attn_probs")
        self.p.attn_probs_row_stride = _elem_stride(view.strides[2], 4, "attn_probs")

    cdef const int32_t *ints(self, object arr, str name, Py_ssize_t expected_len) except? NULL:
        """A contiguous int32 vector (cu_seqlens, seqused_k, ...) read on the host."""
        cdef Py_buffer *view
        try:
            view = self.export(arr, 1, b'i', 4, False, True)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("%s: expected a contiguous int32 1-d array (%s)" % (name, e)) from None
        if expected_len >= 0 and view.shape[0] != expected_len:
            raise ValueError("%s: expected %d entries, got %d" % (name, expected_len, view.shape[0]))
        if view.shape[0] == 0:
            raise ValueError("%s: must not be empty" % name)
        return <const int32_t *>view.buf

    cdef set_block_table(self, object arr):
        cdef Py_buffer *view
        try:
            view = self.export(arr, 2, b'i', 4, False, False)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("block_table: expected an int32 2-d array with a contiguous last axis (%s)" % e) from None
        cdef Py_ssize_t *shp = view.shape
        cdef Py_ssize_t *st = view.strides
        if shp[1] > 1 and st[1] != 4:
            raise ValueError("block_table: the last axis must be contiguous")
        if st[0] < 0 or st[0] % 4:
            raise ValueError("block_table: row stride must be a non-negative multiple of 4 bytes")
        if shp[0] != self.p.batch:
            raise ValueError("block_table: expected %d rows (batch), got %d" % (self.p.batch, shp[0]))
        if shp[1] < 1:
            raise ValueError("block_table: needs at least one column")
        self.p.block_table = <const int32_t *>view.buf
        self.p.block_table_batch_stride = st[0] // 4
        self.p.max_blocks_per_seq = <int32_t>shp[1]

    cdef set_alibi(self, object arr):
        cdef Py_buffer *view
        try:
            view = self.export(arr, 2, b'f', 4, False, True)
        except (ValueError, TypeError, BufferError) as e:
            raise TypeError("alibi_slopes: expected float32 of shape (nheads,) or (batch, nheads) (%s)" % e) from None
        cdef Py_ssize_t rows = view.shape[0]
        cdef Py_ssize_t cols = view.shape[1]
        if cols != self.p.nheads_q or (rows != 1 and rows != self.p.batch):
            raise ValueError("alibi_slopes: expected shape (%d,) or (%d, %d), got (%d, %d)"
                             % (self.p.nheads_q, self.p.batch, self.p.nheads_q, rows, cols))
        self.p.alibi_slopes = <const float *>view.buf
        self.p.alibi_batch_stride = 0 if rows == 1 else view.strides[0] // 4

    cdef rotary(self, object cos, object sin):
        """rotary_cos / rotary_sin: C-contiguous (seqlen_ro, rotary_dim / 2) tables of q's element type."""
        cdef Py_buffer *c
        cdef Py_buffer *s
        cdef Py_ssize_t isz = _element_size(self.p.dtype)
        cdef char fmt = _element_format(self.p.dtype)
        try:
            c = self.export(cos, 2, fmt, isz, False, True)
            s = self.export(sin, 2, fmt, isz, False, True)
        except (TypeError, BufferError) as e:
            raise TypeError("rotary_cos/rotary_sin: expected contiguous 2-d arrays (seqlen_ro, rotary_dim / 2) "
                            "of the dtype of q (%s)" % e) from None
        cdef Py_ssize_t rows = c.shape[0]
        cdef Py_ssize_t half = c.shape[1]
        if s.shape[0] != rows or s.shape[1] != half:
            raise ValueError("rotary_sin: must have the shape of rotary_cos")
        if rows == 0 or half == 0:
            raise ValueError("rotary_cos: must not be empty")
        self.u.rotary_cos = c.buf
        self.u.rotary_sin = s.buf
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
