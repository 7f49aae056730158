"""flash_attn_with_kvcache's arguments: validated and normalised before any compute (one call of `kvcache`).

Part of the argument-normalisation layer: it builds on `_validate`'s per-argument checks (same messages, same
rules) and adds what only the KV-cache call has: the cache geometry (dense or paged), cache_seqlens / cache_leftpad /
cache_batch_idx, rotary tables and the caches written in place. `_dispatch.kvcache_attention` runs the result.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import _arrays
from ._validate import (alibi, block_table as _block_table_fn, flag, head_dims, integer, ndim, same_kind_and_dtype,
                        softcap as _softcap_fn, softmax_scale as _softmax_scale_fn, window as _window_fn)

__all__ = ["KvcacheCall", "kvcache"]


def _cache_seqlens(cache_seqlens: Any, batch: int, capacity: int, has_new: bool) -> np.ndarray:
    if cache_seqlens is None:
        if has_new:
            raise ValueError("cache_seqlens: required when k and v are appended (where would they go?)")
        return np.full(batch, capacity, dtype=np.int32)
    if isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
        n = int(cache_seqlens)
        if not 0 <= n <= capacity:
            raise ValueError(f"cache_seqlens: must be in [0, {capacity}] (the cache length), got {n}")
        return np.full(batch, n, dtype=np.int32)
    if isinstance(cache_seqlens, (bool, float)):
        raise TypeError(f"cache_seqlens: expected an int or an int32 array of shape ({batch},), "
                        f"got {type(cache_seqlens).__name__}")
    a = _arrays.host_int32(cache_seqlens, "cache_seqlens")
    if a.shape != (batch,):
        raise ValueError(f"cache_seqlens: expected shape ({batch},), got {tuple(a.shape)}")
    if a.size and (a.min() < 0 or a.max() > capacity):
        raise ValueError(f"cache_seqlens: entries must be in [0, {capacity}] (the cache length), "
                         f"got min {int(a.min())}, max {int(a.max())}")
    return a


def _per_batch_index(x: Any, name: str, batch: int, low: int, high: np.ndarray | int, what: str) -> np.ndarray:
    a = _arrays.host_int32(x, name)
    if a.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},), got {tuple(a.shape)}")
    bad = (a < low) | (a > high)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {int(a[i])} is out of range: {what}")
    return a


class KvcacheCall:
    """flash_attn_with_kvcache's arguments after validation (see `kvcache`): what `_dispatch.kvcache_attention`
    runs. q, k_cache, v_cache, k, v are the caller's tensors (k, v None when nothing is appended); cos, sin the rotary
    tables as core views; seqlens/leftpad/batch_idx/block_table int32 NumPy arrays (or None); empty is "" or why the
    call has nothing to compute ("no rows": batch or seqlen_q is 0; "no keys": an empty cache)."""

    __slots__ = ("kind", "dtype", "backend", "q", "k_cache", "v_cache", "k", "v", "cos", "sin", "seqlens", "leftpad",
                 "batch_idx", "block_table", "capacity", "seqlen_new", "scale", "window", "softcap", "interleaved",
                 "rotate_q_causal", "splits", "alibi", "want_lse", "empty")

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


def kvcache(q: Any, k_cache: Any, v_cache: Any, k: Any, v: Any, rotary_cos: Any, rotary_sin: Any, cache_seqlens: Any,
            cache_batch_idx: Any, cache_leftpad: Any, block_table: Any, softmax_scale: Any, causal: Any,
            window_size: Any, softcap: Any, rotary_interleaved: Any, alibi_slopes: Any, num_splits: Any,
            return_softmax_lse: Any, backend: str) -> KvcacheCall:
    """Validate and normalise flash_attn_with_kvcache's arguments (`backend` already resolved)."""
    ndim(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    paged = block_table is not None
    cache_form = ("(num_blocks, page_block_size, nheads_k, headdim) with a block_table" if paged
                  else "(batch_size_cache, seqlen_cache, nheads_k, headdim)")
    ndim(k_cache, "k_cache", 4, cache_form)
    ndim(v_cache, "v_cache", 4, cache_form)
    if tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
        raise ValueError(f"v_cache: shape {tuple(v_cache.shape)} must match k_cache's {tuple(k_cache.shape)} "
                         "except for the head dimension")
    if (k is None) != (v is None):
        raise ValueError("k and v: give both new keys and new values, or neither")
    named = [("q", q), ("k_cache", k_cache), ("v_cache", v_cache)]
    if k is not None:
        named += [("k", k), ("v", v)]
    kind, dtype = same_kind_and_dtype(named)
    head_dims(tuple(q.shape), tuple(k_cache.shape), tuple(v_cache.shape), "k_cache", "v_cache")
    batch, seqlen_q, nheads, headdim = (int(s) for s in q.shape)
    nheads_k = int(k_cache.shape[2])
    seqlen_new = 0
    if k is not None:
        ndim(k, "k", 4, "(batch, seqlen_new, nheads_k, headdim)")
        ndim(v, "v", 4, "(batch, seqlen_new, nheads_k, headdim)")
        if k.shape[0] != batch or k.shape[2] != nheads_k or k.shape[3] != headdim:
            raise ValueError(f"k: expected shape ({batch}, seqlen_new, {nheads_k}, {headdim}), got {tuple(k.shape)}")
        if tuple(v.shape) != tuple(k.shape):
            raise ValueError(f"v: shape {tuple(v.shape)} must equal k's {tuple(k.shape)}")
        seqlen_new = int(k.shape[1])
        if seqlen_new == 0:
            if rotary_cos is not None or rotary_sin is not None:
                # flash_attn would still rotate q here; the append kernels rotate q only together with new rows
                raise ValueError("k: seqlen_new = 0 (no new rows) together with rotary_cos/rotary_sin is not "
                                 "supported; append at least one row, or rotate q yourself and pass k=v=None")
            k = v = None  # nothing to append: attend over the cache as it is

    window = _window_fn(window_size, causal)
    scale = _softmax_scale_fn(softmax_scale, headdim)
    cap = _softcap_fn(softcap)
    interleaved = flag(rotary_interleaved, "rotary_interleaved")
    want_lse = flag(return_softmax_lse, "return_softmax_lse")
    splits = integer(num_splits, "num_splits", 0)
    slopes = alibi(alibi_slopes, batch, nheads)

    # ---- cache geometry and per-sequence lengths -----------------------------------------------------------
    if paged:
        num_blocks, page = int(k_cache.shape[0]), int(k_cache.shape[1])
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx: not supported together with block_table (paged KV cache)")
        if cache_leftpad is not None:
            raise ValueError("cache_leftpad: not supported together with block_table (paged KV cache)")
        bt_raw = _arrays.host_int32(block_table, "block_table", ndim=2)
        if bt_raw.shape[0] != batch:
            raise ValueError(f"block_table: expected shape ({batch}, max_num_blocks_per_seq), "
                             f"got {tuple(bt_raw.shape)}")
        capacity = int(bt_raw.shape[1]) * page
    else:
        capacity = int(k_cache.shape[1])
    try:
        seqlens = _cache_seqlens(cache_seqlens, batch, capacity, k is not None)
    except ValueError as exc:
        if not paged or "cache length" not in str(exc):
            raise
        raise ValueError(f"{exc}; with a block_table the cache length is block_table.shape[1] = "
                         f"{bt_raw.shape[1]} pages x {page} rows") from None
    if k is not None and seqlens.size and int(seqlens.max()) + seqlen_new > capacity:
        i = int(np.argmax(seqlens))
        if paged:  # the capacity is the block_table's row of pages, not k_cache's length
            need = -(-(int(seqlens[i]) + seqlen_new) // page)
            raise ValueError(f"block_table: sequence {i} needs {need} pages of {page} rows (cache_seqlens[{i}] = "
                             f"{int(seqlens[i])} plus {seqlen_new} new rows) but block_table has "
                             f"{bt_raw.shape[1]} pages per sequence ({capacity} rows)")
        raise ValueError(f"k: cache_seqlens[{i}] = {int(seqlens[i])} plus {seqlen_new} new rows exceed the cache "
                         f"length {capacity}")
    leftpad = None
    if cache_leftpad is not None:
        leftpad = _per_batch_index(cache_leftpad, "cache_leftpad", batch, 0, seqlens,
                                   "must be in [0, cache_seqlens[b]]")
    batch_idx = None
    if cache_batch_idx is not None:
        rows = int(k_cache.shape[0])
        batch_idx = _per_batch_index(cache_batch_idx, "cache_batch_idx", batch, 0, rows - 1,
                                     f"must index the {rows} rows of k_cache")
    elif not paged and k_cache.shape[0] < batch:
        raise ValueError(f"k_cache: has {k_cache.shape[0]} batch rows, fewer than q's batch {batch} "
                         "(pass cache_batch_idx to map sequences to cache rows)")
    bt = None
    if paged:
        need = (seqlens.astype(np.int64) + seqlen_new + page - 1) // page
        bt = _block_table_fn(bt_raw, batch, num_blocks, page, need)

    # ---- rotary --------------------------------------------------------------------------------------------
    rotate_q_causal = window != (-1, -1)  # causal (folded into the window) or local
    cos = sin = None
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin: give both or neither")
    if rotary_cos is not None:
        if k is None:
            raise ValueError("rotary_cos/rotary_sin: need the new k and v to rotate (as flash_attn)")
        cos = _arrays.host_rotary(rotary_cos, "rotary_cos", dtype)
        sin = _arrays.host_rotary(rotary_sin, "rotary_sin", dtype)
        if sin.shape != cos.shape:
            raise ValueError(f"rotary_sin: shape {sin.shape} must equal rotary_cos's {cos.shape}")
        rotary_dim = 2 * cos.shape[1]
        if not 2 <= rotary_dim <= headdim:
            raise ValueError(f"rotary_cos: rotary_dim = 2 * rotary_cos.shape[1] = {rotary_dim} must be in "
                             f"2..headdim ({headdim})")
        span = max(seqlen_new, seqlen_q if rotate_q_causal else 1)
        need_pos = int(seqlens.max()) + span if seqlens.size else 0
        if cos.shape[0] < need_pos:
            raise ValueError(f"rotary_cos: has {cos.shape[0]} positions (rows) but positions up to {need_pos - 1} "
                             "are needed (cache_seqlens + new tokens)")


    # ---- outputs, empty cases and the caches written in place ------------------------------------------------
    if batch == 0 or seqlen_q == 0:
        if k is not None and batch and seqlen_new:
            raise ValueError("q: seqlen_q must be >= 1 when appending to the cache")
        empty = "no rows"
    elif capacity == 0 or k_cache.shape[0] == 0:
        empty = "no keys"  # an empty cache: no row sees a key
    else:
        empty = ""
    if not empty and k is not None:
        # the append writes both caches: one buffer for both would end up holding v's rows as keys
        _arrays.check_not_overlapping([("v_cache", v_cache)], [("k_cache", k_cache)])
        _arrays.check_torch_in_place(k_cache, "k_cache")
        _arrays.check_torch_in_place(v_cache, "v_cache")
    return KvcacheCall(
        kind=kind, dtype=dtype, backend=backend, q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cos=cos, sin=sin,
        seqlens=seqlens, leftpad=leftpad, batch_idx=batch_idx, block_table=bt, capacity=capacity,
        seqlen_new=seqlen_new, scale=scale, window=window, softcap=cap, interleaved=interleaved,
        rotate_q_causal=rotate_q_causal, splits=splits, alibi=slopes, want_lse=want_lse, empty=empty)
