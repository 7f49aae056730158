# The plan cache's entry point for flash_attn_with_kvcache: planned_kvcache (the attention functions' is in
# _core_planned_attn.pxi). Included by _core.pyx after _core_plans.pxi, which says how the cache works.

cdef object _general_forward = forward
cdef object _general_kvcache_append = kvcache_append


# ---- flash_attn_with_kvcache --------------------------------------------------------------------------------------

cdef bint _caches_writable(object k_cache, object v_cache) except -1:
    """What _arrays.check_torch_in_place asks of torch caches written in place, as a yes/no (the general path raises
    the message): no inference tensor outside inference mode, none that requires grad while grad mode is on."""
    if not _torch_inference_mode() and (k_cache.is_inference() or v_cache.is_inference()):
        return False
    return not (_torch_grad_enabled() and (k_cache.requires_grad or v_cache.requires_grad))


cdef struct _KvExtras:       # the optional tensors of a planned flash_attn_with_kvcache (nd == 0: not given)
    _View cos, sin, leftpad, batch_idx, block_table, alibi


cdef bint _read_rotary(object x, object kind, int64_t dtype, _View *v, _Key *k) except -1:
    """rotary_cos / rotary_sin: a 2-d table of q's kind and dtype (shape on the key), or None (key word 0)."""
    if x is None:
        v.nd = 0
        _push(k, 0)
        return True
    if type(x) is not kind or not _read(x, kind, 2, v) or v.dtype != dtype:
        return False
    _push(k, 1)
    _push_shape(k, v, 2)
    return True


cdef bint _read_optional_index(object x, int ndim, _View *v, _Key *k) except -1:
    if x is None:
        v.nd = 0
        _push(k, 0)
        return True
    return _read_index(x, ndim, v, k)


def planned_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                    block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes,
                    num_splits, return_softmax_lse, backend, bint host_buffer_outputs):
    """flash_attn_with_kvcache's arguments through the plan cache, as planned_attention. Every form is covered:
    cache_seqlens None, an int or an int32 vector; rotary tables, cache_leftpad, cache_batch_idx, block_table and
    ALiBi slopes by their kind, dtype and shape; the values (lengths, padding, indices, pages, rotary positions) are
    checked on every call, and one the validation would refuse sends the call to the general path, which raises."""
    if forward is not _general_forward or kvcache_append is not _general_kvcache_append:
        return None
    if (k is None) != (v is None):
        return None
    kind = _kind_of(q)
    if kind is None or type(k_cache) is not kind or type(v_cache) is not kind:
        return None
    cdef bint new_rows = k is not None
    if new_rows and (type(k) is not kind or type(v) is not kind):
        return None
    if kind is _np_ndarray:
        if host_buffer_outputs:
            return None
    elif _torch_is_tracing():
        return None
    cdef _View vq, vkc, vvc, vk, vv, vs
    cdef _KvExtras x
    if not (_read(q, kind, 4, &vq) and _read(k_cache, kind, 4, &vkc) and _read(v_cache, kind, 4, &vvc)):
        return None
    if new_rows and not (_read(k, kind, 4, &vk) and _read(v, kind, 4, &vv)):
        return None
    if (vkc.dtype != vq.dtype or vvc.dtype != vq.dtype
            or (new_rows and (vk.dtype != vq.dtype or vv.dtype != vq.dtype))):
        return None
    # cache_seqlens: data, read on every call; only its form goes into the key
    cdef int seq_form
    cdef int64_t seq_value = 0
    if cache_seqlens is None:
        seq_form = 0
    elif type(cache_seqlens) is int:
        seq_form = 1
        try:
            seq_value = cache_seqlens
        except OverflowError:
            return None
    elif type(cache_seqlens) is kind and _read(cache_seqlens, kind, 1, &vs):
        seq_form = 2
        if (vs.dtype != (<int64_t><size_t><PyObject *>_np_int32 if kind is _np_ndarray else _DL_INT32)
                or not _usable(&vs, 4, 1, False)):
            return None
    else:
        return None
    cdef _Key key
    key.n = 0
    _push(&key, PLAN_KVCACHE)
    _push(&key, <int64_t><size_t><PyObject *>kind)
    _push(&key, vq.dtype)
    _push_shape(&key, &vq, 4)
    _push_shape(&key, &vkc, 4)
    _push_shape(&key, &vvc, 4)
    _push(&key, new_rows)
    if new_rows:
        _push_shape(&key, &vk, 4)
        _push_shape(&key, &vv, 4)
    _push(&key, seq_form)
    _push(&key, vs.shape[0] if seq_form == 2 else 0)
    x.alibi.nd = 0
    if not (_read_rotary(rotary_cos, kind, vq.dtype, &x.cos, &key)
            and _read_rotary(rotary_sin, kind, vq.dtype, &x.sin, &key)
            and _read_optional_index(cache_batch_idx, 1, &x.batch_idx, &key)
            and _read_optional_index(cache_leftpad, 1, &x.leftpad, &key)
            and _read_optional_index(block_table, 2, &x.block_table, &key)
            and _read_alibi(alibi_slopes, &x.alibi, &key)):
        return None
    if not (_push_option(&key, softmax_scale) and _push_option(&key, causal) and _push_pair(&key, window_size)
            and _push_option(&key, softcap) and _push_option(&key, rotary_interleaved)
            and _push_option(&key, num_splits) and _push_option(&key, return_softmax_lse)
            and _push_backend(&key, backend) and _finish_key(&key)):
        return None
    cdef _Plan *stored = _lookup(&key)
    if stored == NULL:
        return _miss(&key, kind, q)
    cdef _Plan plan_copy = stored[0]  # the slot may take another plan while the GIL is released
    cdef _Plan *plan = &plan_copy

    cdef Py_ssize_t isz = _element_size(plan.dtype)
    cdef bint appending = plan.appending  # False also for k, v of zero new rows (nothing to append)
    cdef size_t klo, khi, vlo, vhi
    if not (_usable(&vq, isz, 4, False) and _usable(&vkc, isz, 4, appending)
            and _usable(&vvc, isz, 4, appending)):
        return None
    if x.cos.nd and not (_usable(&x.cos, isz, 2, False) and _usable(&x.sin, isz, 2, False)
                         and x.cos.strides[0] == x.cos.shape[1] and x.sin.strides[0] == x.sin.shape[1]):
        return None  # the tables travel C-contiguous (_arrays.host_rotary copies others)
    if appending:
        if not (_usable(&vk, isz, 4, False) and _usable(&vv, isz, 4, False)):
            return None
        _extent(&vkc, isz, &klo, &khi)
        _extent(&vvc, isz, &vlo, &vhi)
        if klo < vhi and vlo < khi:  # the general path decides exactly (interleaved views share no element)
            return None
        if kind is not _np_ndarray and not _caches_writable(k_cache, v_cache):
            return None
    cdef Py_ssize_t batch = vq.shape[0]
    cdef Py_ssize_t new = vk.shape[1] if appending else 0
    # rotary positions a sequence needs past cache_seqlens (_validate_kvcache: span)
    cdef Py_ssize_t span = max(new, vq.shape[1] if plan.rotate_q_causal else 1)
    cdef Py_ssize_t page = vkc.shape[1], j, need
    cdef int32_t *row
    cdef int32_t stack_lens[2 * STACK_BATCH]
    cdef int32_t *before = stack_lens
    cdef Py_ssize_t b
    cdef int64_t n, pad
    if batch > STACK_BATCH:
        before = <int32_t *>PyMem_Malloc(2 * batch * sizeof(int32_t))
        if before == NULL:
            raise MemoryError()
    cdef int32_t *after = before + batch
    try:
        for b in range(batch):  # every check of the values _validate_kvcache.kvcache makes; a failure raises there
            if seq_form == 0:  # no cache_seqlens (nothing appended): the whole cache
                n = plan.capacity
            else:
                n = seq_value if seq_form == 1 else (<int32_t *>vs.data)[b * vs.strides[0]]
            if n < 0 or n + new > plan.capacity:
                return None
            pad = (<int32_t *>x.leftpad.data)[b * x.leftpad.strides[0]] if x.leftpad.nd else 0
            if pad < 0 or pad > n:
                return None
            if x.batch_idx.nd and not 0 <= (<int32_t *>x.batch_idx.data)[b * x.batch_idx.strides[0]] < vkc.shape[0]:
                return None
            if x.block_table.nd:
                row = <int32_t *>x.block_table.data + b * x.block_table.strides[0]
                need = (n + new + page - 1) // page
                for j in range(need):
                    if row[j] < 0 or row[j] >= vkc.shape[0]:
                        return None
            if x.cos.nd and n + span > x.cos.shape[0]:
                return None
            before[b] = <int32_t>(n - pad)
            after[b] = <int32_t>(n - pad + new)
        global _plan_hits
        _plan_hits += 1
        return _run_kvcache(plan, kind, q, k_cache, v_cache, &vq, &vkc, &vvc, &vk, &vv, &x, before, after, isz)
    finally:
        if before != stack_lens:
            PyMem_Free(before)


cdef void _copy_rows(_View *src, char *dst, Py_ssize_t isz) noexcept:
    """A C-contiguous copy of the 4-d view src (element strides, last one 1) at dst."""
    cdef Py_ssize_t b, s, h, row = src.shape[3] * isz
    for b in range(src.shape[0]):
        for s in range(src.shape[1]):
            for h in range(src.shape[2]):
                memcpy(dst, src.data + (b * src.strides[0] + s * src.strides[1] + h * src.strides[2]) * isz, row)
                dst += row


cdef object _run_kvcache(_Plan *plan, object kind, object q, object k_cache, object v_cache, _View *vq, _View *vkc,
                         _View *vvc, _View *vk, _View *vv, _KvExtras *x, int32_t *before, int32_t *after,
                         Py_ssize_t isz):
    """The two ABI calls of a planned flash_attn_with_kvcache: the append (when there are new rows), then the
    attention over cache_seqlens + new rows, with exactly the arguments _dispatch.kvcache_attention gives them."""
    cdef _View vo, vqc
    out = _empty_like(kind, q, vq, _contiguous(vq))
    _contiguous_view(vq, _data_of(kind, out), &vo)
    lse = None
    cdef fa_params pa, pf
    cdef fa_kvcache_update u
    cdef char err[ERRLEN]
    cdef int rc = FA_OK
    cdef char *q_copy = NULL
    fa_params_init(&pa)
    pa.batch, pa.seqlen_q, pa.nheads_q, pa.headdim = vq.shape[0], vq.shape[1], vq.shape[2], vq.shape[3]
    pa.seqlen_k, pa.nheads_kv, pa.headdim_v = plan.capacity, vkc.shape[2], vvc.shape[3]
    pa.dtype = plan.dtype
    if x.cos.nd:  # the append rotates q in place: a private copy of it, as the general path makes
        q_copy = <char *>PyMem_Malloc(vq.shape[0] * vq.shape[1] * vq.shape[2] * vq.shape[3] * isz)
        if q_copy == NULL:
            raise MemoryError()
        _copy_rows(vq, q_copy, isz)
        _contiguous_view(vq, q_copy, &vqc)
        vq = &vqc
    _to_tensor(vq, &pa.q)
    _to_tensor(vkc, &pa.k)
    _to_tensor(vvc, &pa.v)
    pa.softmax_scale = plan.softmax_scale
    if x.batch_idx.nd:
        pa.cache_batch_idx, pa.cache_batch_count = <int32_t *>x.batch_idx.data, vkc.shape[0]
    if x.leftpad.nd:
        pa.leftpad_k = <int32_t *>x.leftpad.data
    if x.block_table.nd:
        pa.block_table = <int32_t *>x.block_table.data
        pa.block_table_batch_stride = x.block_table.strides[0]
        pa.max_blocks_per_seq = <int32_t>x.block_table.shape[1]
        pa.num_blocks, pa.page_block_size = vkc.shape[0], <int32_t>vkc.shape[1]
    pf = pa  # the attention: the append's geometry, plus the output, the new lengths and the options
    pa.out = pa.q
    pa.seqused_k = before
    memset(&u, 0, sizeof(u))
    if plan.appending:
        _to_tensor(vk, &u.knew)
        _to_tensor(vv, &u.vnew)
        u.seqlen_new = <int32_t>vk.shape[1]
        u.rotary_interleaved = plan.interleaved
        u.rotate_q_causal = plan.rotate_q_causal
        if x.cos.nd:
            u.rotary_cos, u.rotary_sin = x.cos.data, x.sin.data
            u.seqlen_ro, u.rotary_dim = <int32_t>x.cos.shape[0], <int32_t>(2 * x.cos.shape[1])
    _to_tensor(&vo, &pf.out)
    if plan.want_lse:
        lse = _empty_lse(kind, vq.shape[0], vq.shape[2], vq.shape[1])
        pf.lse = <float *>_data_of(kind, lse)
        pf.lse_batch_stride, pf.lse_head_stride, pf.lse_row_stride = vq.shape[2] * vq.shape[1], vq.shape[1], 1
    pf.seqused_k = after
    pf.window_left, pf.window_right = plan.window_left, plan.window_right
    pf.softcap, pf.num_splits = plan.softcap, plan.num_splits
    _set_alibi(&pf, &x.alibi)
    err[0] = 0
    try:
        if plan.appending:  # never interrupted: a started append writes every row
            with nogil:
                rc = fa_kvcache_append(plan.backend, &pa, &u, err, ERRLEN)
            if kind is not _np_ndarray:
                _torch_bump((k_cache, v_cache))  # written through their memory: tell autograd, as in-place ops do
            if rc != FA_OK:
                _raise(rc, err)
        _attention(plan.backend, &pf, False)
    finally:
        PyMem_Free(q_copy)
    return (out, lse) if plan.want_lse else out
