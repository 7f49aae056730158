# The plan cache's entry point for the attention functions of interface.py (flash_attn_func, the packed variants and
# the varlen family): planned_attention. Included by _core.pyx after _core_plans.pxi, which says how the cache works.
#
# One function serves every form: `form` says which arguments hold q, k and v and how they are packed. The key holds
# the form, the array kind, the dtype, every shape the validation looked at and every option; what is data is checked
# on every call exactly as the validation checks it (cu_seqlens, max_seqlen, block_table entries), and a call whose
# data the validation would refuse, or which needs the general path's extra work (packed rows no sequence owns, no
# keys at all), goes to the general path, which raises or handles it. The row counts of the varlen layout
# (total_q, total_k) are data too, so that a serving loop of changing batch sizes keeps its plan.

cdef bint _read_index(object x, int ndim, _View *v, _Key *k) except -1:
    """An int32 index array (cu_seqlens, block_table) of either kind, as a _View with element strides (4 bytes),
    its kind, dtype and shape pushed on the key; False when it is not a C-readable int32 array of `ndim` axes with
    unit stride on its last axis (the general path converts it)."""
    kind = _kind_of(x)
    if kind is None or not _read(x, kind, ndim, v):
        return False
    if v.dtype != (<int64_t><size_t><PyObject *>_np_int32 if kind is _np_ndarray else _DL_INT32):
        return False
    if not _usable(v, 4, ndim, False):
        return False
    _push(k, <int64_t><size_t><PyObject *>kind)
    _push_shape(k, v, ndim)
    return True


cdef bint _read_alibi(object x, _View *v, _Key *k) except -1:
    """alibi_slopes: None (key word 0), or a float32 (nheads,) or (rows, nheads) array of either kind whose last
    axis has unit stride."""
    if x is None:
        _push(k, 0)
        return True
    kind = _kind_of(x)
    if kind is None:
        return False
    nd = x.ndim
    if (nd != 1 and nd != 2) or not _read(x, kind, nd, v):
        return False
    if v.dtype != (<int64_t><size_t><PyObject *>_np_float32 if kind is _np_ndarray else _DL_FLOAT32):
        return False
    if not _usable(v, 4, v.nd, False):
        return False
    _push(k, <int64_t><size_t><PyObject *>kind)
    _push(k, v.nd)
    _push_shape(k, v, v.nd)
    return True


cdef void _set_alibi(fa_params *p, _View *va) noexcept:
    if va.nd == 0:
        return
    p.alibi_slopes = <const float *>va.data
    p.alibi_batch_stride = va.strides[0] if va.nd == 2 and va.shape[0] > 1 else 0


cdef bint _cu_ok(_View *cu, Py_ssize_t total, int64_t max_len) noexcept:
    """What _validate.cu_seqlens asks of the values: starts at 0, non-decreasing, every length at most max_len, the
    last entry at most total (total < 0: no bound, a paged cache)."""
    cdef int32_t *c = <int32_t *>cu.data
    cdef Py_ssize_t b, n = cu.shape[0]
    if c[0] != 0:
        return False
    for b in range(1, n):
        if c[b] < c[b - 1] or c[b] - c[b - 1] > max_len:
            return False
    return total < 0 or c[n - 1] <= total


cdef int64_t _max_seqlen(object x) except -2:
    """max_seqlen_q/k as data: a Python int in [0, 2**31 - 1] (what _validate.integer and the ABI accept), else -1."""
    if type(x) is not int:
        return -1
    try:
        n = <int64_t>x
    except OverflowError:
        return -1
    return n if 0 <= n <= MAX_SEQLEN else -1


def planned_attention(int form, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                      softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
                      block_table, backend, seed, bint host_buffer_outputs):
    """An attention function's arguments through the plan cache (form: FORM_*; the packed tensor is passed as q for
    the qkv forms and as k for the kv forms, the unused arguments None): the result when a stored plan covers the
    call; a PlanKey to store one under once the general path has run it; None when no plan can describe the call.
    host_buffer_outputs: NumPy outputs must come from HostBuffer (see _arrays.empty)."""
    if forward is not _general_forward or _philox_state is None:  # a spy on forward sees every call
        return None
    cdef bint varlen = form >= FORM_VARLEN
    cdef bint paged = form == FORM_VARLEN_PAGED
    cdef int qkv_packed = form == FORM_QKV or form == FORM_VARLEN_QKV
    cdef int kv_packed = form == FORM_KV or form == FORM_VARLEN_KV
    kind = _kind_of(q)
    if kind is None or (not qkv_packed and type(k) is not kind) or (not (qkv_packed or kv_packed)
                                                                    and type(v) is not kind):
        return None
    if kind is _np_ndarray:
        if host_buffer_outputs:
            return None
    elif _torch_is_tracing() or (_torch_grad_enabled() and (
            q.requires_grad or (not qkv_packed and k.requires_grad) or (v is not None and v.requires_grad))):
        return None  # torch.jit.trace records torch ops only; autograd needs the custom ops
    # the tensors as given: q (or qkv), k (or kv), v
    cdef _View rq, rk, rv, vq, vk, vv, vo, vcq, vck, vbt, va
    cdef int qdim = (3 if varlen else 4) + qkv_packed
    cdef int kdim = (4 if paged else 3 if varlen else 4) + kv_packed
    if not _read(q, kind, qdim, &rq):
        return None
    if not qkv_packed and not _read(k, kind, kdim, &rk):
        return None
    if not (qkv_packed or kv_packed) and not _read(v, kind, kdim, &rv):
        return None
    if (not qkv_packed and rk.dtype != rq.dtype) or (not (qkv_packed or kv_packed) and rv.dtype != rq.dtype):
        return None
    cdef _Key key
    key.n = 0
    _push(&key, PLAN_ATTENTION)
    _push(&key, form)
    _push(&key, <int64_t><size_t><PyObject *>kind)
    _push(&key, rq.dtype)
    # varlen: the packed row counts are data (checked against cu_seqlens on every call), kept out of the key
    _push_shape_from(&key, &rq, 1 if varlen else 0)
    if not qkv_packed:
        _push_shape_from(&key, &rk, 1 if varlen and not paged else 0)
    if not (qkv_packed or kv_packed):
        _push_shape_from(&key, &rv, 1 if varlen and not paged else 0)
    cdef int64_t max_q = 0, max_k = 0
    vbt.nd = 0
    if varlen:
        max_q, max_k = _max_seqlen(max_seqlen_q), _max_seqlen(max_seqlen_k)
        if max_q < 0 or max_k < 0:
            return None
        if not _read_index(cu_seqlens_q, 1, &vcq, &key):
            return None
        if cu_seqlens_k is cu_seqlens_q:  # one array for both (self-attention, the packed qkv form): read once
            vck = vcq
            _push(&key, 0)
        elif not _read_index(cu_seqlens_k, 1, &vck, &key):
            return None
        if paged and not _read_index(block_table, 2, &vbt, &key):
            return None
    elif cu_seqlens_q is not None or block_table is not None:
        return None
    va.nd = 0
    if not (_read_alibi(alibi_slopes, &va, &key) and _push_option(&key, dropout_p)
            and _push_option(&key, softmax_scale) and _push_option(&key, causal) and _push_pair(&key, window_size)
            and _push_option(&key, softcap) and _push_option(&key, deterministic)
            and _push_probs_option(&key, return_attn_probs) and _push_backend(&key, backend) and _finish_key(&key)):
        return None
    cdef _Plan *stored = _lookup(&key)
    if stored == NULL:
        return _miss(&key, kind, q)
    cdef _Plan plan_copy = stored[0]  # the slot may take another plan while the GIL is released
    cdef _Plan *plan = &plan_copy

    # ---- the call's data, checked as the validation checks it ---------------------------------------------------
    cdef Py_ssize_t isz = _element_size(plan.dtype)
    if not (_usable(&rq, isz, qdim, False) and (qkv_packed or _usable(&rk, isz, kdim, False))
            and (qkv_packed or kv_packed or _usable(&rv, isz, kdim, False))):
        return None
    if qkv_packed:
        _select(&rq, qdim - 3, 0, isz, &vq)
        _select(&rq, qdim - 3, 1, isz, &vk)
        _select(&rq, qdim - 3, 2, isz, &vv)
    else:
        vq = rq
        if kv_packed:
            _select(&rk, kdim - 3, 0, isz, &vk)
            _select(&rk, kdim - 3, 1, isz, &vv)
        else:
            vk, vv = rk, rv
    cdef Py_ssize_t batch, total_q = 0, total_k = -1
    if varlen:
        total_q = vq.shape[0]
        if not paged:
            total_k = vk.shape[0]
            if vv.shape[0] != total_k:
                return None
        batch = vcq.shape[0] - 1
        if batch < 1 or vck.shape[0] != batch + 1:
            return None
        if not (_cu_ok(&vcq, total_q, max_q) and _cu_ok(&vck, total_k, max_k)):
            return None
        if (<int32_t *>vcq.data)[batch] != total_q:  # rows no sequence owns: the general path zeroes them
            return None
        if not paged and (<int32_t *>vck.data)[batch] == 0:  # no key anywhere: zeros and +inf, the general path
            return None
        _lead(&vq)
        if not paged:
            _lead(&vk)
            _lead(&vv)
    else:
        batch = vq.shape[0]
    return _run_attention(plan, kind, form, q, seed, &vq, &vk, &vv, &vcq, &vck, &vbt, &va, batch, max_q, max_k,
                          total_q, isz)


cdef object _run_attention(_Plan *plan, object kind, int form, object q, object seed, _View *vq, _View *vk,
                           _View *vv, _View *vcq, _View *vck, _View *vbt, _View *va, Py_ssize_t batch, int64_t max_q,
                           int64_t max_k, Py_ssize_t total_q, Py_ssize_t isz):
    """The ABI call of a planned attention function, with exactly the arguments _dispatch.attention_forward gives it;
    returns what the public function returns."""
    cdef bint varlen = form >= FORM_VARLEN
    cdef bint paged = form == FORM_VARLEN_PAGED
    cdef Py_ssize_t h = vq.shape[2], d = vq.shape[3], sq, sk, b, j, pages, need
    cdef _View vo
    cdef int32_t *cu_k = <int32_t *>vck.data
    cdef int32_t *bt
    cdef int32_t stack_used[STACK_BATCH]
    cdef int32_t *used = NULL
    cdef fa_params p
    fa_params_init(&p)
    if varlen:
        sq, sk = <Py_ssize_t>max_q, <Py_ssize_t>max_k
    else:
        sq, sk = vq.shape[1], vk.shape[1]
    if paged:  # every page a sequence uses must be one of k's pages (_validate.varlen_meta)
        pages = vk.shape[0]
        for b in range(batch):
            need = (cu_k[b + 1] - cu_k[b] + vk.shape[1] - 1) // vk.shape[1]
            if need > vbt.shape[1]:
                return None
            bt = <int32_t *>vbt.data + b * vbt.strides[0]
            for j in range(need):
                if bt[j] < 0 or bt[j] >= pages:
                    return None
    cdef tuple shape
    if varlen:
        shape = (total_q, h, d)
    else:
        shape = (batch, sq, h, d)
    if kind is _np_ndarray:
        out = _np_empty(shape, q.dtype)
    elif form != FORM_QKV and form != FORM_VARLEN_QKV and (  # varlen: q's 3 axes after the ABI's leading one
            (vq.strides[3] == 1 and vq.strides[2] == d and vq.strides[1] == h * d) if varlen else _contiguous(vq)):
        out = _torch_empty_like(q)  # q's shape, contiguous: torch's cheapest allocation
    else:
        out = _torch_empty(shape, dtype=q.dtype)
    cdef char *out_data = _data_of(kind, out)
    lse = probs = None
    if plan.return_tuple:
        if varlen:  # (nheads, total_q), the ABI's [1, nheads, total_q]
            lse = _empty_lse_shape(kind, (h, total_q))
            p.lse_batch_stride, p.lse_head_stride, p.lse_row_stride = 0, total_q, 1
        else:
            lse = _empty_lse_shape(kind, (batch, h, sq))
            p.lse_batch_stride, p.lse_head_stride, p.lse_row_stride = h * sq, sq, 1
        p.lse = <float *>_data_of(kind, lse)
    if plan.want_probs:
        probs = _zeros_f32(kind, (batch, h, sq, sk))
        p.attn_probs = <float *>_data_of(kind, probs)
        p.attn_probs_batch_stride, p.attn_probs_head_stride, p.attn_probs_row_stride = h * sq * sk, sq * sk, sk
    if plan.dropout_p > 0.0:
        p.dropout_seed, p.dropout_offset = _philox(kind, seed)
    global _plan_hits
    _plan_hits += 1
    p.batch, p.seqlen_q, p.seqlen_k = batch, sq, sk
    p.nheads_q, p.nheads_kv, p.headdim, p.headdim_v = h, vk.shape[2], d, vv.shape[3]
    p.dtype = plan.dtype
    _contiguous_view(vq, out_data, &vo)
    _to_tensor(vq, &p.q)
    _to_tensor(vk, &p.k)
    _to_tensor(vv, &p.v)
    _to_tensor(&vo, &p.out)
    p.softmax_scale, p.softcap = plan.softmax_scale, plan.softcap
    p.window_left, p.window_right = plan.window_left, plan.window_right
    p.dropout_p = <float>plan.dropout_p
    _set_alibi(&p, va)
    if varlen:
        p.cu_seqlens_q, p.cu_seqlens_k = <int32_t *>vcq.data, cu_k
        p.total_q = total_q
        if not paged:
            p.total_k = vk.shape[1]
    if paged:
        p.block_table = <int32_t *>vbt.data
        p.block_table_batch_stride, p.max_blocks_per_seq = vbt.strides[0], <int32_t>vbt.shape[1]
        p.num_blocks, p.page_block_size = vk.shape[0], <int32_t>vk.shape[1]
        used = &stack_used[0]
        if batch > STACK_BATCH:
            used = <int32_t *>PyMem_Malloc(batch * sizeof(int32_t))
        if used == NULL:
            raise MemoryError()
        for b in range(batch):
            used[b] = cu_k[b + 1] - cu_k[b]
        p.seqused_k = used
    try:
        _attention(plan.backend, &p, False)
    finally:
        if used != NULL and used != &stack_used[0]:
            PyMem_Free(used)
    return (out, lse, probs) if plan.return_tuple else out


cdef tuple _philox(object kind, object seed):
    """The dropout (seed, offset) of this call, drawn as the general path draws it (_dropout.philox_state, which also
    checks `seed`)."""
    return _philox_state("numpy" if kind is _np_ndarray else "torch", seed)
