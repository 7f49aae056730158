"""flash_attn_with_kvcache: incremental decoding against a key/value cache (flash_attn 2.x semantics).

The public function only routes: a call of a form seen before runs from its stored plan (`_dispatch.planned_kvcache`);
while torch.compile traces, the custom op of `_kvcache_op` carries the call; otherwise `_validate_kvcache.kvcache`
validates and normalises the arguments and `_dispatch.kvcache_attention` runs them (two ABI calls: the append into the
caller's cache, then the attention over it), and the plan is stored.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from . import _arrays, _dispatch, _validate_kvcache
from . import _validate as V

__all__ = ["flash_attn_with_kvcache"]

# A NumPy array (float16, ml_dtypes.bfloat16, float32, float64; int32 for indices) or a PyTorch tensor.
Tensor = Any


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
    # a call of a form seen before runs from its stored plan (the outputs directly); else validate and run
    plan = None if _arrays.dynamo_compiling() else _dispatch.planned_kvcache(
        q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
        softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes, num_splits, return_softmax_lse,
        backend, _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not _dispatch.PlanKey:
        return plan
    backend = V.resolve_backend(backend)
    if _arrays.is_torch(q) and _arrays.compiling():
        # torch.compile is tracing: the custom op (which declares the in-place cache update) carries the call, and
        # the same validation runs as its implementation when the compiled graph executes
        from ._kvcache_op import kvcache_traced
        return kvcache_traced(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                              cache_leftpad, block_table, softmax_scale, causal, window_size, softcap,
                              rotary_interleaved, alibi_slopes, num_splits, return_softmax_lse, backend)
    call = _validate_kvcache.kvcache(
        q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx, cache_leftpad, block_table,
        softmax_scale, causal, window_size, softcap, rotary_interleaved, alibi_slopes, num_splits, return_softmax_lse,
        backend)
    result = _dispatch.kvcache_attention(call)
    if plan is not None:
        plan.store_kvcache(call)
    return result
