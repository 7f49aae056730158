"""Low-level attention backward for NumPy (and PyTorch) users: given the forward's output and log-sum-exp, returns
the gradients of q, k and v.

This is the FlashAttention-2 backward (Dao, 2023): the attention probabilities are recomputed tile by tile from
``softmax_lse``, so memory stays O(seqlen); nothing of size seqlen_q x seqlen_k is ever stored. PyTorch users normally
do not call it: ``flash_attn_func`` and friends are differentiable (see :mod:`flash_attn_cy.autograd`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from . import _validate as V
from ._dispatch import attention_backward
from ._dropout import rng_pair  # re-exported: the pair a backward is given

__all__ = ["backward", "rng_pair"]


def backward(dout, q, k, v, out, softmax_lse, *,
             cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q: Optional[int] = None,
             max_seqlen_k: Optional[int] = None,
             dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
             window_size: Sequence[int] = (-1, -1), softcap: float = 0.0, alibi_slopes=None,
             deterministic: bool = False, seed: Any = None, rng_state: Any = None, backend: str = "auto",
             dq=None, dk=None, dv=None):
    """Gradients of flash_attn attention with respect to q, k and v.

    Arguments mirror ``flash_attn_func`` / ``flash_attn_varlen_func``; pass exactly what the forward was called with.

    Args:
        dout: gradient of the output, shaped like ``out``.
        q, k, v: the forward's inputs: (batch, seqlen_q, nheads, d) and (batch, seqlen_k, nheads_k, d), or the varlen
            layout (total_q, nheads, d) / (total_k, nheads_k, d) together with ``cu_seqlens_q``/``cu_seqlens_k``
            (int32, batch + 1) and ``max_seqlen_q``/``max_seqlen_k``.
        out, softmax_lse: the forward's output and float32 log-sum-exp ((batch, nheads, seqlen_q), or
            (nheads, total_q) for varlen).
        dropout_p, seed / rng_state: the forward's dropout probability and the (seed, offset) pair it drew its mask
            with (required when ``dropout_p > 0``): ``seed`` an int (offset 0) or a (seed, offset) pair,
            ``rng_state`` a 2-element integer array/tensor. The mask is regenerated, never stored.
        softmax_scale, causal, window_size, softcap, alibi_slopes: as in the forward.
        deterministic: bit-identical gradients from run to run (and, on the CPU backend, whatever the thread count).
            Without it the CPU backend sums dQ from per-thread partials in arrival order (faster: about 1.6x); the
            Metal kernels are deterministic either way (no atomics).
        backend: "auto" (Metal when usable, otherwise CPU), "cpu", "sim" (the Metal kernels under the simulator)
            or "metal".
        dq, dk, dv: optional preallocated outputs (written in place), shaped and typed like q, k, v.

    Returns:
        (dq, dk, dv) of the caller's array kind (NumPy or torch), with the dtypes and shapes of q, k, v.
    """
    args = V.backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                      max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, dropout_p=dropout_p,
                      softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                      alibi_slopes=alibi_slopes, deterministic=deterministic, seed=seed, rng_state=rng_state,
                      backend=backend, dq=dq, dk=dk, dv=dv)
    return attention_backward(dout, q, k, v, out, softmax_lse, **args)
