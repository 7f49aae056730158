"""PyTorch autograd for flash_attn_cy: the forward and the backward registered as ``torch.library`` custom ops.

``flash_attn_func`` and friends route here when an input requires grad, and for every torch call while
``torch.compile`` traces (so compiled inference graphs need no graph break either). Two custom ops carry the work:

- ``flash_attn_cy::fwd``  (q, k, v, ...) -> (out, softmax_lse, attn_probs)
- ``flash_attn_cy::bwd``  (dout, q, k, v, out, softmax_lse, ...) -> (dq, dk, dv)

both with fake (meta) implementations, and ``fwd``'s derivative is ``bwd`` (``torch.library.register_autograd``), so
``torch.compile(fullgraph=True)`` traces through attention without graph breaks and eager autograd works as usual.
Saved for backward: q, k, v, out, softmax_lse and the dropout RNG state (seed, offset) as a 2-element int64
tensor, plus the small metadata tensors (cu_seqlens, alibi slopes); nothing of size seqlen_q x seqlen_k.

Dropout: when no ``seed`` is given, the (seed, offset) pair is drawn from PyTorch's default generator (so
``torch.manual_seed`` reproduces a run), inside the traced graph as a tensor, so compiling does not break on it.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from . import _validate as V
from ._dispatch import attention_backward, attention_forward
from ._dropout import rng_pair

__all__ = ["attention_with_grad", "make_rng_state", "paged_forward"]

_U64 = (1 << 64) - 1


def _signed64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >= (1 << 63) else v


def make_rng_state(dropout_p: float, seed: Any = None, rng: Optional[Tuple[int, int]] = None) -> Tensor:
    """The dropout (seed, offset) pair as an int64 tensor of 2 elements (uint64 values wrap to int64).

    ``rng``: an already drawn (seed, offset) pair; else ``seed``: None (draw from torch's default generator when
    dropout_p > 0), an int, or a (seed, offset) pair. Without dropout no random number is consumed: zeros.
    """
    if dropout_p <= 0:
        return torch.zeros(2, dtype=torch.int64)
    if rng is None and seed is None:
        return torch.randint(-(1 << 63), (1 << 63) - 1, (2,), dtype=torch.int64)
    s, o = rng if rng is not None else rng_pair(seed)
    return torch.tensor([_signed64(int(s)), _signed64(int(o))], dtype=torch.int64)


def _norm_args(cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state, max_seqlen_q, max_seqlen_k, dropout_p,
               softmax_scale, window_left, window_right, softcap, deterministic, backend) -> dict:
    """The custom ops' arguments as _dispatch.attention_forward/attention_backward take them (NumPy metadata)."""
    varlen = cu_seqlens_q is not None

    def host(t):  # small metadata: a C-contiguous NumPy copy or view for the Cython layer
        return np.ascontiguousarray(t.detach().cpu().numpy())
    return dict(
        cu_seqlens_q=host(cu_seqlens_q) if varlen else None,
        cu_seqlens_k=host(cu_seqlens_k) if varlen else None,
        max_seqlen_q=max_seqlen_q if varlen else None, max_seqlen_k=max_seqlen_k if varlen else None,
        dropout_p=dropout_p, softmax_scale=softmax_scale, window_size=(window_left, window_right), softcap=softcap,
        alibi_slopes=host(alibi_slopes) if alibi_slopes is not None else None,
        deterministic=deterministic, backend=backend,
        rng=rng_pair(rng_state=rng_state) if dropout_p > 0 else (0, 0))


def _out_shapes(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor], max_seqlen_q: int,
                max_seqlen_k: int):
    """Shapes of out, softmax_lse and attn_probs (dense or varlen)."""
    out_shape = tuple(q.shape[:-1]) + (v.shape[-1],)
    if cu_seqlens_q is not None:
        batch, nheads = cu_seqlens_q.shape[0] - 1, q.shape[1]
        return out_shape, (nheads, q.shape[0]), (batch, nheads, max_seqlen_q, max_seqlen_k)
    batch, sq, nheads = q.shape[0], q.shape[1], q.shape[2]
    return out_shape, (batch, nheads, sq), (batch, nheads, sq, k.shape[1])


# ---- the custom ops ------------------------------------------------------------------------------------------------

@torch.library.custom_op("flash_attn_cy::fwd", mutates_args=())
def _fwd_op(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
            alibi_slopes: Optional[Tensor], rng_state: Tensor, max_seqlen_q: int, max_seqlen_k: int,
            dropout_p: float, softmax_scale: float, window_left: int, window_right: int, softcap: float,
            deterministic: bool, return_probs: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    args = _norm_args(cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state, max_seqlen_q, max_seqlen_k, dropout_p,
                      softmax_scale, window_left, window_right, softcap, deterministic, backend)
    out, lse, probs = attention_forward(q, k, v, return_attn_probs=return_probs, **args)
    if probs is None:
        probs = torch.empty((0,), dtype=torch.float32, device=q.device)
    return out, lse, probs


@_fwd_op.register_fake
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state, max_seqlen_q, max_seqlen_k,
              dropout_p, softmax_scale, window_left, window_right, softcap, deterministic, return_probs, backend):
    out_shape, lse_shape, probs_shape = _out_shapes(q, k, v, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    want_probs = return_probs
    return (q.new_empty(out_shape), q.new_empty(lse_shape, dtype=torch.float32),
            q.new_empty(probs_shape if want_probs else (0,), dtype=torch.float32))


@torch.library.custom_op("flash_attn_cy::bwd", mutates_args=())
def _bwd_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, softmax_lse: Tensor,
            cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor], alibi_slopes: Optional[Tensor],
            rng_state: Tensor, max_seqlen_q: int, max_seqlen_k: int, dropout_p: float, softmax_scale: float,
            window_left: int, window_right: int, softcap: float, deterministic: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    args = _norm_args(cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state, max_seqlen_q, max_seqlen_k, dropout_p,
                      softmax_scale, window_left, window_right, softcap, deterministic, backend)
    grads = [torch.empty_like(x) for x in (q, k, v)]  # attention_backward zeroes the rows no sequence owns
    dq, dk, dv = attention_backward(dout, q, k, v, out, softmax_lse, dq=grads[0], dk=grads[1], dv=grads[2], **args)
    return dq, dk, dv


@_bwd_op.register_fake
def _bwd_fake(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state, max_seqlen_q,
              max_seqlen_k, dropout_p, softmax_scale, window_left, window_right, softcap, deterministic, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# ---- autograd: fwd's derivative is bwd --------------------------------------------------------------------------

_FWD_ARGS = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "alibi_slopes", "rng_state", "max_seqlen_q", "max_seqlen_k", "dropout_p", "softmax_scale", "window_left", "window_right", "softcap", "deterministic",
             "return_probs", "backend")


def _setup_context(ctx, inputs, output):
    a = dict(zip(_FWD_ARGS, inputs))
    out, lse, probs = output
    ctx.save_for_backward(a["q"], a["k"], a["v"], out, lse, a["cu_seqlens_q"], a["cu_seqlens_k"], a["alibi_slopes"],
                          a["rng_state"])
    ctx.args = {n: a[n] for n in ("max_seqlen_q", "max_seqlen_k", "dropout_p", "softmax_scale", "window_left",
                                  "window_right", "softcap", "deterministic", "backend")}
    ctx.mark_non_differentiable(lse, probs)


def _backward(ctx, dout, dlse, dprobs):
    q, k, v, out, lse, cu_q, cu_k, alibi, rng_state = ctx.saved_tensors
    a = ctx.args
    dq, dk, dv = torch.ops.flash_attn_cy.bwd(dout, q, k, v, out, lse, cu_q, cu_k, alibi, rng_state,
                                             a["max_seqlen_q"], a["max_seqlen_k"], a["dropout_p"],
                                             a["softmax_scale"], a["window_left"], a["window_right"], a["softcap"],
                                             a["deterministic"], a["backend"])
    return (dq, dk, dv) + (None,) * (len(_FWD_ARGS) - 3)


torch.library.register_autograd("flash_attn_cy::fwd", _backward, setup_context=_setup_context)


# ---- the entry point the public API calls -------------------------------------------------------------------------

def _int_tensor(x) -> Optional[Tensor]:
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32))


def _float_tensor(x) -> Optional[Tensor]:
    if x is None or isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class _PagedForward(torch.autograd.Function):
    """Forward of varlen attention over a paged KV cache (block_table) for inputs that require grad: flash_attn runs
    this forward too and only its backward cannot go through the pages, so the output joins the graph and the
    backward raises, naming block_table."""

    @staticmethod
    def forward(ctx, q, k, v, args):
        out, lse, probs = attention_forward(q.detach(), k.detach(), v.detach(), **args)
        if probs is not None:
            ctx.mark_non_differentiable(probs)
        ctx.mark_non_differentiable(lse)
        return out, lse, probs

    @staticmethod
    def backward(ctx, dout, dlse, dprobs):
        raise NotImplementedError("block_table: backward through a paged KV cache is not supported (flash_attn "
                                  "cannot either); call the forward under torch.no_grad(), or pass the keys and "
                                  "values unpaged (without block_table) to get gradients")


def paged_forward(q: Tensor, k: Tensor, v: Tensor, **args):
    """``_dispatch.attention_forward`` over a paged cache for inputs that require grad (see _PagedForward)."""
    return _PagedForward.apply(q, k, v, args)


def attention_with_grad(q: Tensor, k: Tensor, v: Tensor, *, cu_seqlens_q=None, cu_seqlens_k=None,
                        max_seqlen_q: Optional[int] = None, max_seqlen_k: Optional[int] = None,
                        dropout_p: float = 0.0, softmax_scale: Optional[float] = None, causal: bool = False,
                        window_size: Sequence[int] = (-1, -1), softcap: float = 0.0, alibi_slopes=None,
                        deterministic: bool = False, return_attn_probs: bool = False, block_table=None,
                        backend: str = "cpu", rng: Optional[Tuple[int, int]] = None, seed: Any = None):
    """Differentiable attention on torch tensors: what ``flash_attn_func`` and friends call when an input requires
    grad (``interface._run``), with its normalised arguments:

    - q (batch, seqlen_q, nheads, d), k/v (batch, seqlen_k, nheads_k, d); or varlen q (total_q, nheads, d),
      k/v (total_k, nheads_k, d) with int32 ``cu_seqlens_q``/``cu_seqlens_k`` (batch + 1; NumPy or torch) and
      ``max_seqlen_q``/``max_seqlen_k``;
    - ``window_size`` with ``causal`` folded in (right = 0), ``softmax_scale`` a float (None: d ** -0.5),
      ``alibi_slopes`` float32 (nheads,), (1, nheads) or (batch, nheads);
    - ``rng``: the (seed, offset) pair of the dropout mask; None draws it from ``seed`` (an int or a pair) or, if
      that is None too, from torch's default generator;
    - ``backend``: "cpu", "sim" or "metal".

    Returns ``(out, softmax_lse, S_dmask)``: S_dmask (the attention probabilities (batch, nheads, seqlen_q,
    seqlen_k) with dropped entries negated, a debugging aid) when ``return_attn_probs``, else None. Gradients reach q, k, v (and through views any packed tensor they were sliced from); softmax_lse
    and S_dmask are not differentiable.
    """
    if block_table is not None:
        raise NotImplementedError("block_table: backward through a paged KV cache is not supported; call without "
                                  "requires_grad or under torch.no_grad()")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_k: the varlen layout needs both")
    if varlen:
        if max_seqlen_q is None or max_seqlen_k is None:
            raise TypeError("max_seqlen_q and max_seqlen_k: required with cu_seqlens_q/cu_seqlens_k")
        max_q, max_k = int(max_seqlen_q), int(max_seqlen_k)
    else:
        # kept as the shapes' own (possibly symbolic) ints: int() would pin a dynamic seqlen to its traced value
        max_q, max_k = q.shape[1], k.shape[1]
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")
    scale = float(q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    left, right = V.window(window_size, causal)  # the one place `causal` folds into the window
    alibi = _float_tensor(alibi_slopes)
    if alibi is not None and alibi.dim() == 1:
        alibi = alibi.reshape(1, -1)
    rng_state = make_rng_state(float(dropout_p), seed, rng)
    out, lse, probs = torch.ops.flash_attn_cy.fwd(
        q, k, v, _int_tensor(cu_seqlens_q), _int_tensor(cu_seqlens_k), alibi, rng_state, max_q, max_k,
        float(dropout_p), scale, left, right, float(softcap), bool(deterministic), bool(return_attn_probs), backend)
    want_probs = return_attn_probs
    return out, lse, (probs if want_probs else None)
