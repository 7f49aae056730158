"""flash_attn_with_kvcache: incremental decoding against a key/value cache (flash_attn 2.x semantics).

Two ABI calls: `_core.kvcache_append` rotates q (a private copy) and the new keys and writes the new k/v rows
into the caller's cache in place; `_core.forward` then attends over each sequence's cache_seqlens + seqlen_new keys
with bottom-right aligned masks.

Cache row convention of the ABI (csrc/fa_abi.h): `seqused_k[b]` counts the valid keys after the left padding
`leftpad_k[b]`; the sequence's keys are cache rows leftpad .. leftpad + seqused - 1 and new rows are written right
after them. flash_attn's `cache_seqlens` includes the left padding, so seqused_k = cache_seqlens - cache_leftpad.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _arrays, _core
from . import _validate as V

__all__ = ["flash_attn_with_kvcache"]

# A NumPy array (float16, ml_dtypes.bfloat16, float32, float64; int32 for indices) or a PyTorch tensor.
Tensor = Any


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


def flash_attn_with_kvcache(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor] = None,
                            v: Optional[Tensor] = None, rotary_cos: Optional[Tensor] = None,
                            rotary_sin: Optional[Tensor] = None, cache_seqlens: Union[int, Tensor, None] = None,
                            cache_batch_idx: Optional[Tensor] = None, cache_leftpad: Optional[Tensor] = None,
                            block_table: Optional[Tensor] = None, softmax_scale: Optional[float] = None,
                            causal: bool = False, window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True, alibi_slopes: Optional[Tensor] = None,
                            num_splits: int = 0, return_softmax_lse: bool = False, *,
                            backend: str = "auto") -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Attention of q against a KV cache, optionally appending new keys/values to the cache first.

    Arguments (flash_attn 2.x):
        q: (batch, seqlen_q, nheads, headdim).
        k_cache, v_cache: (batch_cache, seqlen_cache, nheads_k, headdim), or (num_blocks, page_block_size,
            nheads_k, headdim) with a block_table (page_block_size a multiple of 16). Updated IN PLACE when k, v
            are given (they must be writable with a contiguous last axis).
        k, v: optional new rows (batch, seqlen_new, nheads_k, headdim), written at cache_seqlens[b].
        rotary_cos, rotary_sin: optional (seqlen_ro, rotary_dim / 2) in q's dtype (needs k, v). New k rotates at
            positions cache_seqlens + i; q at the same positions when causal or windowed, else all at cache_seqlens.
            rotary_interleaved=True pairs (0,1),(2,3)... (GPT-J); False pairs (i, i + rotary_dim/2) (GPT-NeoX).
        cache_seqlens: int or int32 (batch,): current cache length per sequence (including cache_leftpad).
        cache_batch_idx: int32 (batch,): cache row used by each sequence (default: identity).
        cache_leftpad: int32 (batch,): first valid cache row per sequence (default 0).
        block_table: int32 (batch, max_blocks_per_seq): page indices of a paged cache.
        softmax_scale, causal, window_size, softcap, alibi_slopes: as flash_attn_func, with the masks aligned to
            the bottom-right over cache_seqlens + seqlen_new keys.
        num_splits: split-KV hint for the kernels (0 = automatic, 1 = no split). The Metal kernels raise it to the
            fewest splits of at most 4096 cached keys in decode (fp32 accuracy over very long caches).
        return_softmax_lse: also return the float32 (batch, nheads, seqlen_q) log-sum-exp.
        backend: "auto", "cpu", "sim" or "metal".

    Returns out (batch, seqlen_q, nheads, headdim), or (out, softmax_lse) with return_softmax_lse.
    """
    backend = V.resolve_backend(backend)
    if _arrays.is_torch(q) and _arrays.compiling():
        # torch.compile is tracing: the custom op (which declares the in-place cache update) carries the call, and
        # this function runs, fully validated, as its implementation when the compiled graph executes
        from ._kvcache_op import kvcache_traced
        return kvcache_traced(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                              cache_leftpad, block_table, softmax_scale, causal, window_size, softcap,
                              rotary_interleaved, alibi_slopes, num_splits, return_softmax_lse, backend)
    V.ndim(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    paged = block_table is not None
    cache_form = ("(num_blocks, page_block_size, nheads_k, headdim) with a block_table" if paged
                  else "(batch_size_cache, seqlen_cache, nheads_k, headdim)")
    V.ndim(k_cache, "k_cache", 4, cache_form)
    V.ndim(v_cache, "v_cache", 4, cache_form)
    if tuple(v_cache.shape[:3]) != tuple(k_cache.shape[:3]):
        raise ValueError(f"v_cache: shape {tuple(v_cache.shape)} must match k_cache's {tuple(k_cache.shape)} "
                         "except for the head dimension")
    if (k is None) != (v is None):
        raise ValueError("k and v: give both new keys and new values, or neither")
    named = [("q", q), ("k_cache", k_cache), ("v_cache", v_cache)]
    if k is not None:
        named += [("k", k), ("v", v)]
    kind, dtype = V.same_kind_and_dtype(named)
    V.head_dims(tuple(q.shape), tuple(k_cache.shape), tuple(v_cache.shape), "k_cache", "v_cache")
    batch, seqlen_q, nheads, headdim = (int(s) for s in q.shape)
    nheads_k = int(k_cache.shape[2])
    seqlen_new = 0
    if k is not None:
        V.ndim(k, "k", 4, "(batch, seqlen_new, nheads_k, headdim)")
        V.ndim(v, "v", 4, "(batch, seqlen_new, nheads_k, headdim)")
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

    window = V.window(window_size, causal)
    scale = V.softmax_scale(softmax_scale, headdim)
    cap = V.softcap(softcap)
    interleaved = V.flag(rotary_interleaved, "rotary_interleaved")
    want_lse = V.flag(return_softmax_lse, "return_softmax_lse")
    splits = V.integer(num_splits, "num_splits", 0)
    slopes = V.alibi(alibi_slopes, batch, nheads)

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
        bt = V.block_table(bt_raw, batch, num_blocks, page, need)

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

    # ---- outputs and empty cases ---------------------------------------------------------------------------
    out = _arrays.empty(kind, q, tuple(q.shape))
    lse = _arrays.empty(kind, q, (batch, nheads, seqlen_q), "float32")
    if batch == 0 or seqlen_q == 0:
        if k is not None and batch and seqlen_new:
            raise ValueError("q: seqlen_q must be >= 1 when appending to the cache")
        return (out, lse) if want_lse else out

    if capacity == 0 or k_cache.shape[0] == 0:  # an empty cache: no row sees a key
        out[...] = 0
        lse[...] = float("inf")
        return (out, lse) if want_lse else out

    used_before = seqlens - (leftpad if leftpad is not None else 0)
    used_after = (used_before + seqlen_new).astype(np.int32)
    common = dict(block_table=bt, cache_batch_idx=batch_idx, leftpad_k=leftpad, max_seqlen_k=capacity)
    common = {key: val for key, val in common.items() if val is not None}
    cache_rows = k_cache if (paged or batch_idx is not None) else k_cache[:batch]
    vcache_rows = v_cache if (paged or batch_idx is not None) else v_cache[:batch]
    appending = k is not None
    if appending:  # the append writes both caches: one buffer for both would end up holding v's rows as keys
        _arrays.check_not_overlapping([("v_cache", v_cache)], [("k_cache", k_cache)])
        _arrays.check_torch_in_place(k_cache, "k_cache")
        _arrays.check_torch_in_place(v_cache, "v_cache")
    kc = _arrays.core_view(cache_rows, "k_cache", in_place=appending)
    vc = _arrays.core_view(vcache_rows, "v_cache", in_place=appending)

    if cos is not None:  # q is rotated in place by the ABI: work on a private copy
        qc = q.clone() if kind == "mps" else np.array(_arrays.core_view(q, "q"), copy=True, order="C")
        if kind == "mps":
            qc = _arrays.core_view(qc, "q")
    else:
        qc = _arrays.core_view(q, "q")

    if kind == "mps":
        from . import _mps
        _mps.synchronize()
    if appending:
        kw = dict(common, seqused_k=np.ascontiguousarray(used_before, dtype=np.int32), softmax_scale=scale,
                  rotary_interleaved=interleaved, rotate_q_causal=rotate_q_causal)
        if cos is not None:
            kw.update(rotary_cos=cos, rotary_sin=sin)
        _core.kvcache_append(backend, dtype, qc, kc, vc, _arrays.core_view(k, "k"), _arrays.core_view(v, "v"),
                             **kw)
        _arrays.bump_versions(k_cache, v_cache)  # written through their memory: tell autograd, as in-place ops do
    kw = dict(common, seqused_k=used_after, softmax_scale=scale, window_left=window[0], window_right=window[1],
              softcap=cap, num_splits=splits)
    if slopes is not None:
        kw["alibi_slopes"] = slopes
    _core.forward(backend, dtype, qc, kc, vc, _arrays.core_view(out, "out", writable=True),
                  _arrays.core_view(lse, "softmax_lse", writable=True), **kw)
    return (out, lse) if want_lse else out
