"""flash_attn_with_kvcache as a torch custom op, so that torch.compile(fullgraph=True) traces decode steps.

``flash_attn_cy::kvcache`` declares that it writes k_cache and v_cache in place (``mutates_args``), which is what
lets the compiler order it against other uses of the caches. Its real implementation is what the eager
``flash_attn_with_kvcache`` runs, `_validate_kvcache.kvcache` then `_dispatch.kvcache_attention` (so all validation,
including checks of index values the tracer cannot see, runs when the compiled graph executes); its fake
implementation only gives the shapes of out and softmax_lse.
``kvcache.flash_attn_with_kvcache`` routes here only while dynamo traces; eager calls never pay for the op dispatch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _dispatch, _validate_kvcache
from . import _validate as V

__all__ = ["kvcache_traced"]


@torch.library.custom_op("flash_attn_cy::kvcache", mutates_args=("k_cache", "v_cache"))
def _kvcache_op(q: Tensor, k_cache: Tensor, v_cache: Tensor, k: Optional[Tensor], v: Optional[Tensor],
                rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], cache_seqlens: Optional[Tensor],
                cache_seqlens_int: int, cache_batch_idx: Optional[Tensor], cache_leftpad: Optional[Tensor],
                block_table: Optional[Tensor], alibi_slopes: Optional[Tensor], softmax_scale: Optional[float],
                causal: bool, window_left: int, window_right: int, softcap: float, rotary_interleaved: bool,
                num_splits: int, backend: str) -> Tuple[Tensor, Tensor]:
    seqlens = cache_seqlens if cache_seqlens is not None else (None if cache_seqlens_int < 0 else cache_seqlens_int)
    return _dispatch.kvcache_attention(_validate_kvcache.kvcache(
        q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens, cache_batch_idx, cache_leftpad, block_table,
        softmax_scale, causal, (window_left, window_right), softcap, rotary_interleaved, alibi_slopes, num_splits,
        True, V.resolve_backend(backend)))


@_kvcache_op.register_fake
def _kvcache_fake(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_seqlens_int,
                  cache_batch_idx, cache_leftpad, block_table, alibi_slopes, softmax_scale, causal, window_left,
                  window_right, softcap, rotary_interleaved, num_splits, backend):
    batch, seqlen_q, nheads = q.shape[0], q.shape[1], q.shape[2]
    return q.new_empty(q.shape), q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)


def kvcache_traced(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens, cache_batch_idx,
                   cache_leftpad, block_table, softmax_scale, causal, window_size, softcap, rotary_interleaved,
                   alibi_slopes, num_splits, return_softmax_lse, backend):
    """The op call for flash_attn_with_kvcache's arguments (``cache_seqlens`` an int or a tensor)."""
    if isinstance(cache_seqlens, Tensor):
        seq_t, seq_i = cache_seqlens, -1
    else:
        seq_t, seq_i = None, (-1 if cache_seqlens is None else int(cache_seqlens))
    window_size = V.window(window_size, causal)  # the public functions' one normaliser (any form flash_attn takes)
    out, lse = torch.ops.flash_attn_cy.kvcache(
        q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seq_t, seq_i, cache_batch_idx, cache_leftpad,
        block_table, alibi_slopes, None if softmax_scale is None else V.softmax_scale(softmax_scale, q.shape[-1]),
        bool(causal), window_size[0], window_size[1], V.softcap(softcap), bool(rotary_interleaved), int(num_splits),
        backend)
    return (out, lse) if return_softmax_lse else out
