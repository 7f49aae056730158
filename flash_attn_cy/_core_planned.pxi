# The plan cache's entry points: planned_forward (flash_attn_func) and planned_kvcache (flash_attn_with_kvcache).
# Included by _core.pyx after _core_plans.pxi, which says how the cache works.

cdef object _general_forward = forward
cdef object _general_kvcache_append = kvcache_append


# ---- flash_attn_func ----------------------------------------------------------------------------------------------

def planned_forward(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                    return_attn_probs, backend, bint host_buffer_outputs):
    """flash_attn_func's arguments (seed aside: no plan has dropout) through the plan cache: the output when a
    stored plan covers the call; a PlanKey to store one under once the general path has run it; None when no plan
    can describe the call. host_buffer_outputs: NumPy outputs must come from HostBuffer (see _arrays.empty)."""
    if forward is not _general_forward:  # a spy or a hook replaced forward: it sees every call
        return None
    kind = _kind_of(q)
    if kind is None or type(k) is not kind or type(v) is not kind:
        return None
    if kind is _np_ndarray:
        if host_buffer_outputs:
            return None
    elif _torch_is_tracing() or (_torch_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return None  # torch.jit.trace records torch ops only; autograd needs the custom ops
    cdef _View vq, vk, vv, vo
    if not (_read(q, kind, 4, &vq) and _read(k, kind, 4, &vk) and _read(v, kind, 4, &vv)):
        return None
    if vk.dtype != vq.dtype or vv.dtype != vq.dtype:
        return None
    cdef _Key key
    key.n = 0
    _push(&key, PLAN_FORWARD)
    _push(&key, <int64_t><size_t><PyObject *>kind)
    _push(&key, vq.dtype)
    _push_shape(&key, &vq, 4)
    _push_shape(&key, &vk, 4)
    _push_shape(&key, &vv, 4)
    if not (_push_option(&key, dropout_p) and _push_option(&key, softmax_scale) and _push_option(&key, causal)
            and _push_pair(&key, window_size) and _push_option(&key, softcap) and _push_option(&key, alibi_slopes)
            and _push_option(&key, deterministic) and _push_option(&key, return_attn_probs)
            and _push_backend(&key, backend) and _finish_key(&key)):
        return None
    cdef _Plan *stored = _lookup(&key)
    if stored == NULL:
        return _miss(&key, kind, q)
    cdef _Plan plan_copy = stored[0]  # the slot may take another plan while the GIL is released
    cdef _Plan *plan = &plan_copy
    cdef Py_ssize_t isz = _element_size(plan.dtype)
    if not (_usable(&vq, isz, 4, False) and _usable(&vk, isz, 4, False) and _usable(&vv, isz, 4, False)):
        return None
    global _plan_hits
    _plan_hits += 1
    out = _empty_like(kind, q, &vq, _contiguous(&vq))
    _contiguous_view(&vq, _data_of(kind, out), &vo)
    cdef fa_params p
    fa_params_init(&p)
    p.batch, p.seqlen_q, p.nheads_q, p.headdim = vq.shape[0], vq.shape[1], vq.shape[2], vq.shape[3]
    p.seqlen_k, p.nheads_kv, p.headdim_v = vk.shape[1], vk.shape[2], vv.shape[3]
    p.dtype = plan.dtype
    _to_tensor(&vq, &p.q)
    _to_tensor(&vk, &p.k)
    _to_tensor(&vv, &p.v)
    _to_tensor(&vo, &p.out)
    p.softmax_scale, p.softcap = plan.softmax_scale, plan.softcap
    p.window_left, p.window_right = plan.window_left, plan.window_right
    _attention(plan.backend, &p, False)
    return out


# ---- flash_attn_with_kvcache --------------------------------------------------------------------------------------

cdef bint _caches_writable(object k_cache, object v_cache) except -1:
    """What _arrays.check_torch_in_place asks of torch caches written in place, as a yes/no (the general path raises
    the message): no inference tensor outside inference mode, none that requires grad while grad mode is on."""
    if not _torch_inference_mode() and (k_cache.is_inference() or v_cache.is_inference()):
        return False
    return not (_torch_grad_enabled() and (k_cache.requires_grad or v_cache.requires_grad))


def planned_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad,
                    block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes,
                    num_splits, return_softmax_lse, backend, bint host_buffer_outputs):
    """flash_attn_with_kvcache's arguments through the plan cache, as planned_forward. A plan covers a dense cache
    (no rotary tables, cache_batch_idx, cache_leftpad, block_table or ALiBi) with cache_seqlens None, an int or an
    int32 vector of the caller's kind; the lengths are checked on every call (out of range: the general path)."""
    if forward is not _general_forward or kvcache_append is not _general_kvcache_append:
        return None
    if not (rotary_cos is None and rotary_sin is None and cache_batch_idx is None and cache_leftpad is None
            and block_table is None and alibi_slopes is None and (k is None) == (v is None)):
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
    cdef _View vq, vkc, vvc, vk, vv, vs, vo
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
    global _plan_hits
    cdef int32_t stack_lens[2 * STACK_BATCH]
    cdef int32_t *before = stack_lens
    cdef Py_ssize_t b
    cdef int64_t n
    if batch > STACK_BATCH:
        before = <int32_t *>PyMem_Malloc(2 * batch * sizeof(int32_t))
        if before == NULL:
            raise MemoryError()
    cdef int32_t *after = before + batch
    try:
        for b in range(batch):
            if seq_form == 0:  # no cache_seqlens (nothing appended): the whole cache
                n = plan.capacity
            else:
                n = seq_value if seq_form == 1 else (<int32_t *>vs.data)[b * vs.strides[0]]
            if n < 0 or n + new > plan.capacity:
                return None  # the general path names the sequence and the limit
            before[b] = <int32_t>n
            after[b] = <int32_t>(n + new)
        _plan_hits += 1
        return _run_kvcache(plan, kind, q, k_cache, v_cache, &vq, &vkc, &vvc, &vk, &vv, before, after, isz)
    finally:
        if before != stack_lens:
            PyMem_Free(before)


cdef object _run_kvcache(_Plan *plan, object kind, object q, object k_cache, object v_cache, _View *vq, _View *vkc,
                         _View *vvc, _View *vk, _View *vv, int32_t *before, int32_t *after, Py_ssize_t isz):
    """The two ABI calls of a planned flash_attn_with_kvcache: the append (when there are new rows), then the
    attention over cache_seqlens + new rows, with exactly the arguments _dispatch.kvcache_attention gives them."""
    cdef _View vo
    out = _empty_like(kind, q, vq, _contiguous(vq))
    _contiguous_view(vq, _data_of(kind, out), &vo)
    lse = None
    cdef fa_params pa, pf
    cdef fa_kvcache_update u
    cdef char err[ERRLEN]
    cdef int rc = FA_OK
    cdef fa_cancel tok
    fa_params_init(&pa)
    pa.batch, pa.seqlen_q, pa.nheads_q, pa.headdim = vq.shape[0], vq.shape[1], vq.shape[2], vq.shape[3]
    pa.seqlen_k, pa.nheads_kv, pa.headdim_v = plan.capacity, vkc.shape[2], vvc.shape[3]
    pa.dtype = plan.dtype
    _to_tensor(vq, &pa.q)
    _to_tensor(vkc, &pa.k)
    _to_tensor(vvc, &pa.v)
    pa.softmax_scale = plan.softmax_scale
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
    _to_tensor(&vo, &pf.out)
    if plan.want_lse:
        lse = _empty_lse(kind, vq.shape[0], vq.shape[2], vq.shape[1])
        pf.lse = <float *>_data_of(kind, lse)
        pf.lse_batch_stride, pf.lse_head_stride, pf.lse_row_stride = vq.shape[2] * vq.shape[1], vq.shape[1], 1
    pf.seqused_k = after
    pf.window_left, pf.window_right = plan.window_left, plan.window_right
    pf.softcap, pf.num_splits = plan.softcap, plan.num_splits
    err[0] = 0
    if plan.appending:  # never interrupted: a started append writes every row
        with nogil:
            rc = fa_kvcache_append(plan.backend, &pa, &u, err, ERRLEN)
        if kind is not _np_ndarray:
            _torch_bump((k_cache, v_cache))  # written through their memory: tell autograd, as in-place ops do
        if rc != FA_OK:
            _raise(rc, err)
    _attention(plan.backend, &pf, False)
    return (out, lse) if plan.want_lse else out
