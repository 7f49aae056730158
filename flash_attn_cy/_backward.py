"""Low-level attention backward for NumPy (and PyTorch) users: given the forward's output and log-sum-exp, returns
the gradients of q, k and v.

This is the FlashAttention-2 backward (Dao, 2023): the attention probabilities are recomputed tile by tile from
``softmax_lse``, so memory stays O(seqlen); nothing of size seqlen_q x seqlen_k is ever stored. PyTorch users normally
do not call it: ``flash_attn_func`` and friends are differentiable (see :mod:`flash_attn_cy.autograd`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from . import _arrays
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
    backend = V.resolve_backend(backend)
    kind, dtype = V.same_kind_and_dtype([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)])
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_k: the varlen layout needs both")
    if varlen:
        for name, x in (("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)):
            V.ndim(x, name, 3, "(total, nheads, headdim)")
        if max_seqlen_q is None or max_seqlen_k is None:
            raise TypeError("max_seqlen_q and max_seqlen_k: required with cu_seqlens_q/cu_seqlens_k")
        max_q = V.integer(max_seqlen_q, "max_seqlen_q", 0)
        max_k = V.integer(max_seqlen_k, "max_seqlen_k", 0)
        cu_q = V.cu_seqlens(cu_seqlens_q, "cu_seqlens_q", None, q.shape[0], max_q, "max_seqlen_q")
        batch = cu_q.shape[0] - 1
        cu_k = V.cu_seqlens(cu_seqlens_k, "cu_seqlens_k", batch, k.shape[0], max_k, "max_seqlen_k")
        lse_shape = (q.shape[1], q.shape[0])
    else:
        V.dense_shapes(q, k, v)
        for name, x in (("out", out), ("dout", dout)):
            V.ndim(x, name, 4, "(batch, seqlen_q, nheads, headdim)")
        cu_q = cu_k = max_q = max_k = None
        batch = q.shape[0]
        lse_shape = (q.shape[0], q.shape[2], q.shape[1])
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    for name, x in (("out", out), ("dout", dout)):
        if tuple(x.shape) != tuple(q.shape[:-1]) + (v.shape[-1],):
            raise ValueError(f"{name}: expected shape {tuple(q.shape[:-1]) + (v.shape[-1],)}, got {tuple(x.shape)}")
    if tuple(softmax_lse.shape) != lse_shape or _arrays.kind_of(softmax_lse, "softmax_lse") != kind:
        raise ValueError(f"softmax_lse: expected a float32 array of shape {lse_shape} of the kind of q ({kind})")
    dropout_p = V.dropout(dropout_p)
    rng = rng_pair(seed, rng_state) if dropout_p > 0.0 else (0, 0)
    grads = []
    for name, given, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        if given is None:
            # varlen rows outside every sequence get zeros (backends write only the rows sequences own)
            given = _arrays.empty(kind, like, tuple(like.shape), fill=0.0 if varlen else None)
        elif (tuple(given.shape) != tuple(like.shape) or _arrays.kind_of(given, name) != kind
              or _arrays.float_dtype(given, name) != dtype):
            raise ValueError(f"{name}: expected a {kind} array of shape {tuple(like.shape)} and dtype {dtype}")
        grads.append(given)
    _arrays.check_not_overlapping([("dq", dq), ("dk", dk), ("dv", dv)],  # the caller's buffers (None skipped)
                                  [("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out),
                                   ("softmax_lse", softmax_lse)])
    return attention_backward(
        dout, q, k, v, out, softmax_lse, dq=grads[0], dk=grads[1], dv=grads[2], cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, dropout_p=dropout_p,
        softmax_scale=V.softmax_scale(softmax_scale, q.shape[-1]), causal=V.flag(causal, "causal"),
        window_size=V.window(window_size, causal), softcap=V.softcap(softcap),
        alibi_slopes=V.alibi(alibi_slopes, batch, q.shape[-2]), deterministic=V.flag(deterministic, "deterministic"),
        backend=backend, rng=rng)
