"""The dispatch to `_core`: normalised arguments in, outputs allocated in the caller's kind, ABI calls, results out.

Everything here takes arguments the public layer (interface.py, kvcache.py, _backward.py) has already validated and
normalised through `_validate` (the one owner of argument normalisation); the autograd custom ops (autograd.py,
_kvcache_op.py) call the same functions. Nothing here validates user input again or imports a layer above it.

Normalised arguments (keyword names used by attention_forward, attention_backward and autograd.attention_with_grad):
    cu_seqlens_q, cu_seqlens_k : C-contiguous int32 NumPy arrays (batch + 1,) or None (dense layout)
    max_seqlen_q, max_seqlen_k : int or None (dense)
    dropout_p      : float in [0, 1)
    softmax_scale  : float (default already applied: q.shape[-1] ** -0.5)
    causal         : bool, as the caller gave it; not read: the mask is window_size, into which
                     _validate.window (the one fold) has already folded it
    window_size    : (left, right) ints, -1 = unbounded, right == 0 when causal
    softcap        : float >= 0
    alibi_slopes   : float32 NumPy array of shape (1, nheads) or (batch, nheads), or None
    deterministic  : bool
    return_attn_probs : bool (S_dmask, the attention probabilities, is computed only when asked for)
    block_table    : int32 NumPy array (batch, max_blocks) or None (varlen only)
    backend        : resolved backend name: "cpu", "sim" or "metal"
    rng            : (seed, offset) pair of ints for dropout (ignored when dropout_p == 0)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from . import _arrays, _core
from ._dropout import philox_state
from ._validate import FLASH_ATTN_PROBS

__all__ = ["attention_forward", "attention_backward", "kvcache_attention", "planned_attention", "planned_kvcache",
           "PlanKey", "PLAN_FORMS"]

# The plan cache (flash_attn_cy/_core_plans.pxi): a call of a form seen before runs from the plan stored for it,
# without validating and normalising again; a miss answers a PlanKey to store the general path's arguments under.
planned_attention = _core.planned_attention
planned_kvcache = _core.planned_kvcache
PlanKey = _core.PlanKey
PLAN_FORMS = _core.PLAN_FORMS  # the attention functions' call forms, as planned_attention takes them
_core.set_plan_sources(FLASH_ATTN_PROBS, philox_state)  # what the plans take from the layers above _core


def _core_kwargs(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, window_size,
                 softcap, alibi_slopes, block_table, rng, deterministic=False, **_ignored) -> dict:
    kw = dict(softmax_scale=softmax_scale, window_left=window_size[0], window_right=window_size[1],
              softcap=softcap, dropout_p=dropout_p, deterministic=bool(deterministic))
    if dropout_p > 0.0:
        kw["seed"], kw["offset"] = rng
    if alibi_slopes is not None:
        kw["alibi_slopes"] = alibi_slopes
    if cu_seqlens_q is not None:
        kw.update(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                  max_seqlen_k=max_seqlen_k)
    if block_table is not None:
        kw["block_table"] = block_table
    return kw


def _zero_unowned_rows(cu_seqlens, *arrays) -> int:
    """Varlen: packed rows from cu_seqlens[-1] on belong to no sequence and no backend writes them; give them
    defined zeros in each array (out, dq, dk, dv), here and nowhere else. Returns cu_seqlens[-1]."""
    end = int(cu_seqlens[-1])
    for x in arrays:
        if end < x.shape[0]:
            x[end:] = 0
    return end


def _kind_dtype(q) -> Tuple[str, str]:
    return _arrays.kind_of(q, "q"), _arrays.float_dtype(q, "q")


def _mps_sync(kind: str) -> None:
    if kind == "mps":
        from . import _mps
        _mps.synchronize()


def attention_forward(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                      dropout_p=0.0, softmax_scale, causal=False, window_size=(-1, -1), softcap=0.0,
                      alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None,
                      backend="cpu", rng=(0, 0)):
    """Forward attention on validated, normalised arguments (see the module docstring).

    Returns (out, softmax_lse, S_dmask): out like q; softmax_lse float32 (batch, nheads, seqlen_q), or
    (nheads, total_q) in the varlen layout; S_dmask float32 (batch, nheads, seqlen_q, seqlen_k) attention
    probabilities (dropped entries negated when dropout_p > 0) when return_attn_probs, else None. Varlen:
    (batch, nheads, max_seqlen_q, max_seqlen_k), sequence b in the top-left corner of its slice, zeros elsewhere.
    """
    kind, dtype = _kind_dtype(q)
    varlen = cu_seqlens_q is not None
    nheads = q.shape[-2]
    out = _arrays.empty(kind, q, tuple(q.shape))
    if varlen:
        batch = cu_seqlens_q.shape[0] - 1
        lse = _arrays.empty(kind, q, (nheads, q.shape[0]), "float32")
        sq, sk = max_seqlen_q, max_seqlen_k
        rows_q = q.shape[0]
        rows_k = 0 if block_table is not None else k.shape[0]
        no_keys = block_table is None and (rows_k == 0 or int(cu_seqlens_k[-1]) == 0)
    else:
        batch, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        lse = _arrays.empty(kind, q, (batch, nheads, sq), "float32")
        rows_q = batch * sq
        no_keys = sk == 0
    want_probs = return_attn_probs
    probs = _arrays.empty(kind, q, (batch, nheads, sq, sk), "float32", fill=0.0) if want_probs else None

    if varlen:
        lse[:, _zero_unowned_rows(cu_seqlens_q, out):] = float("inf")
    if rows_q == 0 or batch == 0:
        return out, lse, probs
    if no_keys:  # no key anywhere: every row sees nothing -> zeros and +inf LSE (as flash_attn)
        out[...] = 0
        lse[...] = float("inf")
        return out, lse, probs

    kw = _core_kwargs(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                      window_size, softcap, alibi_slopes, block_table, rng)
    kw.pop("deterministic")
    if varlen and block_table is not None:
        # paged varlen: keys of sequence b are the first cu_seqlens_k[b+1]-cu_seqlens_k[b] rows of its pages
        kw["seqused_k"] = np.ascontiguousarray(np.diff(cu_seqlens_k), dtype=np.int32)
    lead = varlen
    kv_lead = varlen and block_table is None
    # S_dmask: every backend writes it itself (cpu: attention_forward.cpp; sim, metal: the fa_probs_* kernels that
    # close the forward plan), into host memory; a tensor on a device gets it by a copy afterwards.
    host_probs = probs.cpu() if probs is not None and _arrays.is_torch(probs) and probs.device.type != "cpu" else probs
    if host_probs is not None:
        kw["attn_probs"] = _arrays.core_view(host_probs, "attn_probs", writable=True)
    _mps_sync(kind)
    _core.forward(backend, dtype,
                  _arrays.core_view(q, "q", lead_axis=lead),
                  _arrays.core_view(k, "k", lead_axis=kv_lead),
                  _arrays.core_view(v, "v", lead_axis=kv_lead),
                  _arrays.core_view(out, "out", lead_axis=lead, writable=True),
                  _arrays.core_view(lse, "softmax_lse", lead_axis=lead, writable=True),
                  **kw)
    if host_probs is not probs:
        probs.copy_(host_probs)
    return out, lse, probs


def attention_backward(dout, q, k, v, out, softmax_lse, *, dq=None, dk=None, dv=None, cu_seqlens_q=None,
                       cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0, softmax_scale,
                       causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                       block_table=None, backend="cpu", rng=(0, 0), **_ignored):
    """Gradients dq, dk, dv of the attention (normalised arguments as attention_forward, plus the forward's
    out and softmax_lse). dq/dk/dv are allocated in q's kind and dtype unless given. Returns (dq, dk, dv)."""
    kind, dtype = _kind_dtype(q)
    if block_table is not None:
        raise NotImplementedError("block_table: backward through a paged KV cache is not supported")
    varlen = cu_seqlens_q is not None
    dq = _arrays.empty(kind, q, tuple(q.shape)) if dq is None else dq
    dk = _arrays.empty(kind, k, tuple(k.shape)) if dk is None else dk
    dv = _arrays.empty(kind, v, tuple(v.shape)) if dv is None else dv
    if varlen:
        _zero_unowned_rows(cu_seqlens_q, dq)
        _zero_unowned_rows(cu_seqlens_k, dk, dv)
    if q.shape[0] == 0 or (not varlen and q.shape[1] == 0) or k.shape[0] == 0 or (not varlen and k.shape[1] == 0):
        dq[...] = 0
        dk[...] = 0
        dv[...] = 0
        return dq, dk, dv
    kw = _core_kwargs(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                      window_size, softcap, alibi_slopes, None, rng, deterministic)
    L = varlen
    _mps_sync(kind)
    _core.backward(backend, dtype,
                   _arrays.core_view(dout, "dout", lead_axis=L),
                   _arrays.core_view(q, "q", lead_axis=L),
                   _arrays.core_view(k, "k", lead_axis=L),
                   _arrays.core_view(v, "v", lead_axis=L),
                   _arrays.core_view(out, "out", lead_axis=L),
                   _arrays.core_view(softmax_lse, "softmax_lse", lead_axis=L),
                   _arrays.core_view(dq, "dq", lead_axis=L, in_place=True),
                   _arrays.core_view(dk, "dk", lead_axis=L, in_place=True),
                   _arrays.core_view(dv, "dv", lead_axis=L, in_place=True),
                   **kw)
    return dq, dk, dv


def kvcache_attention(c):
    """flash_attn_with_kvcache on validated arguments (`_validate_kvcache.KvcacheCall`): `_core.kvcache_append`
    rotates q (a private copy) and the new keys and writes the new k/v rows into the caller's cache in place;
    `_core.forward` then attends over each sequence's cache_seqlens + seqlen_new keys. Returns out, or
    (out, softmax_lse) when c.want_lse.

    Cache row convention of the ABI (csrc/fa_abi.h): `seqused_k[b]` counts the valid keys after the left padding
    `leftpad_k[b]`; the sequence's keys are cache rows leftpad .. leftpad + seqused - 1 and new rows are written
    right after them. flash_attn's `cache_seqlens` includes the left padding, so seqused_k = cache_seqlens -
    cache_leftpad."""
    kind, q, k_cache, v_cache, k, v = c.kind, c.q, c.k_cache, c.v_cache, c.k, c.v
    batch, seqlen_q, nheads = q.shape[0], q.shape[1], q.shape[2]
    out = _arrays.empty(kind, q, tuple(q.shape))
    lse = _arrays.empty(kind, q, (batch, nheads, seqlen_q), "float32")
    if c.empty == "no keys":  # no row sees a key: zeros and +inf LSE (as flash_attn)
        out[...] = 0
        lse[...] = float("inf")
    if c.empty:
        return (out, lse) if c.want_lse else out

    used_before = c.seqlens - (c.leftpad if c.leftpad is not None else 0)
    used_after = (used_before + c.seqlen_new).astype(np.int32)
    common = dict(block_table=c.block_table, cache_batch_idx=c.batch_idx, leftpad_k=c.leftpad,
                  max_seqlen_k=c.capacity)
    common = {key: val for key, val in common.items() if val is not None}
    whole = c.block_table is not None or c.batch_idx is not None  # else only the first `batch` cache rows are used
    appending = k is not None
    kc = _arrays.core_view(k_cache if whole else k_cache[:batch], "k_cache", in_place=appending)
    vc = _arrays.core_view(v_cache if whole else v_cache[:batch], "v_cache", in_place=appending)

    if c.cos is not None:  # q is rotated in place by the ABI: work on a private copy
        qc = q.clone() if kind == "mps" else np.array(_arrays.core_view(q, "q"), copy=True, order="C")
        if kind == "mps":
            qc = _arrays.core_view(qc, "q")
    else:
        qc = _arrays.core_view(q, "q")

    _mps_sync(kind)
    if appending:
        kw = dict(common, seqused_k=np.ascontiguousarray(used_before, dtype=np.int32), softmax_scale=c.scale,
                  rotary_interleaved=c.interleaved, rotate_q_causal=c.rotate_q_causal)
        if c.cos is not None:
            kw.update(rotary_cos=c.cos, rotary_sin=c.sin)
        _core.kvcache_append(c.backend, c.dtype, qc, kc, vc, _arrays.core_view(k, "k"), _arrays.core_view(v, "v"),
                             **kw)
        _arrays.bump_versions(k_cache, v_cache)  # written through their memory: tell autograd, as in-place ops do
    kw = dict(common, seqused_k=used_after, softmax_scale=c.scale, window_left=c.window[0],
              window_right=c.window[1], softcap=c.softcap, num_splits=c.splits)
    if c.alibi is not None:
        kw["alibi_slopes"] = c.alibi
    _core.forward(c.backend, c.dtype, qc, kc, vc, _arrays.core_view(out, "out", writable=True),
                  _arrays.core_view(lse, "softmax_lse", writable=True), **kw)
    return (out, lse) if c.want_lse else out
