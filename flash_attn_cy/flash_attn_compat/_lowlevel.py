"""The semi-private functions of ``flash_attn.flash_attn_interface`` (flash_attn 2.8.3) on flash_attn_cy.

Projects build on these rather than on the public functions: ring-flash-attn composes ring and zigzag attention from
``_flash_attn_forward`` / ``_flash_attn_backward`` and their varlen twins (it merges the per-chunk outputs through
the returned ``softmax_lse``), and diffusers' attention dispatcher needs ``_wrapped_flash_attn_forward`` /
``_wrapped_flash_attn_backward`` for its ``flash`` backends. Names, argument names and order, defaults and return
tuples are those of the 2.8.3 source:

- ``_flash_attn_forward(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
  alibi_slopes, return_softmax) -> (out, softmax_lse, S_dmask, rng_state)``
- ``_flash_attn_varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
  softmax_scale, causal, window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
  return_softmax=False, block_table=None, leftpad_k=None, seqused_k=None, zero_tensors=False)`` -> the same 4
- ``_flash_attn_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
  window_size_left, window_size_right, softcap, alibi_slopes, deterministic, rng_state=None) -> softmax_d``
- ``_flash_attn_varlen_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
  max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
  alibi_slopes, deterministic, rng_state=None, zero_tensors=False) -> softmax_d``

As in 2.8.3 each is a ``torch.library`` custom op (namespace ``flash_attn``, or ``flash_attn_cy_compat`` if a real
flash_attn already registered that one in this process), with fake implementations for torch.compile, and the
``_wrapped_*`` names are the ``torch.ops`` handles. The backwards write the gradients INTO the given dq, dk, dv
(declared as mutated) and return ``softmax_d``, the row sums of dout * out, zero-padded to flash_attn's shapes
(batch, nheads, round_up(seqlen_q, 128)) and (nheads, total_q + 128 * batch).

Differences, on purpose: the work runs on flash_attn_cy's default backend (CPU or Metal) instead of CUDA;
``rng_state`` is flash_attn_cy's dropout (seed, offset) pair (drawn from torch's default generator, and only
meaningful to these backwards); S_dmask is float32 of shape (batch, nheads, seqlen_q, seqlen_k) (flash_attn: q's
dtype, lengths rounded up to 128), scaled per row as the public drop-in functions scale it; ``leftpad_k`` and
``seqused_k`` of the varlen forward are not supported (NotImplementedError); ``zero_tensors`` is accepted and has
no effect (flash_attn_cy's varlen outputs are defined everywhere anyway).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from flash_attn_cy import _validate as V
from flash_attn_cy._backward import backward as _cy_backward
from flash_attn_cy._dispatch import attention_forward
from flash_attn_cy._dropout import rng_pair
from flash_attn_cy.autograd import make_rng_state
from flash_attn_cy.errors import FlashAttnValueError
from flash_attn_cy.flash_attn_compat._s_dmask import _flash_scaled_s_dmask

__all__ = [
    "NAMESPACE",
    "_flash_attn_backward",
    "_flash_attn_forward",
    "_flash_attn_varlen_backward",
    "_flash_attn_varlen_forward",
    "_wrapped_flash_attn_backward",
    "_wrapped_flash_attn_forward",
    "_wrapped_flash_attn_varlen_backward",
    "_wrapped_flash_attn_varlen_forward",
]


def _namespace() -> str:
    """``flash_attn`` as in 2.8.3, unless a real flash_attn's ops already hold it in this process (force=True)."""
    taken = hasattr(torch.ops, "flash_attn") and hasattr(torch.ops.flash_attn, "_flash_attn_forward")
    return "flash_attn_cy_compat" if taken else "flash_attn"


NAMESPACE = _namespace()


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _scaled(s_dmask: Optional[Tensor], q: Tensor) -> Tensor:
    return q.new_empty((0,)) if s_dmask is None else _flash_scaled_s_dmask(s_dmask)


def _check_return_softmax(return_softmax: bool, dropout_p: float) -> None:
    # flash_attn's C++ forward: TORCH_CHECK(p_dropout > 0.0f, "return_softmax is only supported when p_dropout > 0.0")
    if return_softmax and not dropout_p > 0.0:
        raise FlashAttnValueError("return_softmax: only supported when dropout_p > 0 (as flash_attn)")


def _forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
             window_size_left, window_size_right, softcap, alibi_slopes, return_softmax, block_table):
    """Validate like the public functions, then run _dispatch.attention_forward with a fresh rng_state."""
    backend = V.resolve_backend("auto")
    varlen = cu_seqlens_q is not None
    if varlen:
        V.ndim(q, "q", 3, "(total_q, nheads, headdim)")
        kv_form = ("(num_blocks, page_block_size, nheads_k, headdim) with a block_table" if block_table is not None
                   else "(total_k, nheads_k, headdim)")
        V.ndim(k, "k", 4 if block_table is not None else 3, kv_form)
        V.ndim(v, "v", 4 if block_table is not None else 3, kv_form)
        V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
        cu_q, cu_k, max_q, max_k, bt = V.varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                     block_table)
        batch = cu_q.shape[0] - 1
    else:
        V.dense_shapes(q, k, v)
        cu_q = cu_k = max_q = max_k = bt = None
        batch = q.shape[0]
    V.same_kind_and_dtype([("q", q), ("k", k), ("v", v)])
    dropout_p = V.dropout(dropout_p)
    return_softmax = V.flag(return_softmax, "return_softmax")
    _check_return_softmax(return_softmax, dropout_p)
    rng_state = make_rng_state(dropout_p).to(q.device)
    out, lse, s_dmask = attention_forward(
        q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, dropout_p=dropout_p,
        softmax_scale=V.softmax_scale(softmax_scale, q.shape[-1]), causal=V.flag(causal, "causal"),
        window_size=V.window((window_size_left, window_size_right), causal), softcap=V.softcap(softcap),
        alibi_slopes=V.alibi(alibi_slopes, batch, q.shape[-2]), return_attn_probs=return_softmax, block_table=bt,
        backend=backend, rng=rng_pair(rng_state=rng_state) if dropout_p > 0.0 else (0, 0))
    return out, lse, _scaled(s_dmask, q), rng_state


def _grad_buffer(given: Optional[Tensor], like: Tensor) -> Tensor:
    """Where the gradient is computed: the caller's dq/dk/dv itself when the backends can write into it (the public
    backward zeroes the varlen rows no sequence owns, in either buffer)."""
    if given is not None and given.stride(-1) == 1 and given.dtype == like.dtype and given.shape == like.shape:
        return given
    return torch.empty_like(like)


def _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
              dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap, alibi_slopes,
              deterministic, rng_state) -> Tensor:
    varlen = cu_seqlens_q is not None
    bufs = [_grad_buffer(g, x) for g, x in ((dq, q), (dk, k), (dv, v))]
    _cy_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                 max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, dropout_p=dropout_p,
                 softmax_scale=softmax_scale, causal=causal, window_size=(window_size_left, window_size_right),
                 softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                 rng_state=rng_state if V.dropout(dropout_p) > 0.0 else None, backend="auto",
                 dq=bufs[0], dk=bufs[1], dv=bufs[2])
    for given, buf in zip((dq, dk, dv), bufs):
        if given is not None and given is not buf:
            given.copy_(buf)
    # softmax_d = rowsum(dout * out), as flash_attn's backward computes (and returns) it
    d = (dout.float() * out.float()).sum(-1)
    if varlen:
        batch = cu_seqlens_q.shape[0] - 1
        return torch.nn.functional.pad(d.t(), (0, 128 * batch))
    return torch.nn.functional.pad(d.transpose(1, 2), (0, _round_up(q.shape[1], 128) - q.shape[1]))


def _lib(name: str) -> str:
    return f"{NAMESPACE}::{name}"


@torch.library.custom_op(_lib("_flash_attn_forward"), mutates_args=())
def _flash_attn_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[Tensor],
    return_softmax: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """flash_attn 2.8.3's dense forward: (out, softmax_lse (batch, nheads, seqlen_q), S_dmask, rng_state)."""
    return _forward(q, k, v, None, None, None, None, dropout_p, softmax_scale, causal, window_size_left,
                    window_size_right, softcap, alibi_slopes, return_softmax, None)


@_flash_attn_forward.register_fake
def _flash_attn_forward_fake(q, k, v, dropout_p, softmax_scale, causal, window_size_left, window_size_right,
                             softcap, alibi_slopes, return_softmax):
    batch, seqlen_q, nheads, _ = q.shape
    s_shape = (batch, nheads, seqlen_q, k.shape[1]) if return_softmax else (0,)
    return (torch.empty_like(q), q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32),
            q.new_empty(s_shape, dtype=torch.float32 if return_softmax else q.dtype),
            q.new_empty((2,), dtype=torch.int64))


@torch.library.custom_op(_lib("_flash_attn_varlen_forward"), mutates_args=())
def _flash_attn_varlen_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: Optional[Tensor] = None,
    return_softmax: bool = False,
    block_table: Optional[Tensor] = None,
    leftpad_k: Optional[Tensor] = None,
    seqused_k: Optional[Tensor] = None,
    zero_tensors: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """flash_attn 2.8.3's varlen forward: (out, softmax_lse (nheads, total_q), S_dmask, rng_state)."""
    for name, val in (("leftpad_k", leftpad_k), ("seqused_k", seqused_k)):
        if val is not None:
            raise NotImplementedError(f"{name}: not supported by flash_attn_cy's _flash_attn_varlen_forward; "
                                      "use flash_attn_with_kvcache (cache_leftpad, cache_seqlens) instead")
    return _forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                    causal, window_size_left, window_size_right, softcap, alibi_slopes, return_softmax, block_table)


@_flash_attn_varlen_forward.register_fake
def _flash_attn_varlen_forward_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                    softmax_scale, causal, window_size_left=-1, window_size_right=-1, softcap=0.0,
                                    alibi_slopes=None, return_softmax=False, block_table=None, leftpad_k=None,
                                    seqused_k=None, zero_tensors=False):
    total_q, nheads, _ = q.shape
    batch = cu_seqlens_q.shape[0] - 1
    s_shape = (batch, nheads, max_seqlen_q, max_seqlen_k) if return_softmax else (0,)
    return (torch.empty_like(q), q.new_empty((nheads, total_q), dtype=torch.float32),
            q.new_empty(s_shape, dtype=torch.float32 if return_softmax else q.dtype),
            q.new_empty((2,), dtype=torch.int64))


@torch.library.custom_op(_lib("_flash_attn_backward"), mutates_args=("dq", "dk", "dv"))
def _flash_attn_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    softmax_lse: Tensor,
    dq: Optional[Tensor],
    dk: Optional[Tensor],
    dv: Optional[Tensor],
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[Tensor],
    deterministic: bool,
    rng_state: Optional[Tensor] = None,
) -> Tensor:
    """flash_attn 2.8.3's dense backward: writes dq, dk, dv in place; returns softmax_d (batch, nheads,
    round_up(seqlen_q, 128))."""
    return _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, None, None, None, None, dropout_p, softmax_scale,
                     causal, window_size_left, window_size_right, softcap, alibi_slopes, deterministic, rng_state)


@_flash_attn_backward.register_fake
def _flash_attn_backward_fake(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
                              window_size_left, window_size_right, softcap, alibi_slopes, deterministic,
                              rng_state=None):
    batch, seqlen_q, nheads, _ = q.shape
    return q.new_empty((batch, nheads, _round_up(seqlen_q, 128)), dtype=torch.float32)


@torch.library.custom_op(_lib("_flash_attn_varlen_backward"), mutates_args=("dq", "dk", "dv"))
def _flash_attn_varlen_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    softmax_lse: Tensor,
    dq: Optional[Tensor],
    dk: Optional[Tensor],
    dv: Optional[Tensor],
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[Tensor],
    deterministic: bool,
    rng_state: Optional[Tensor] = None,
    zero_tensors: bool = False,
) -> Tensor:
    """flash_attn 2.8.3's varlen backward: writes dq, dk, dv in place; returns softmax_d (nheads,
    total_q + 128 * batch)."""
    return _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                     max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
                     alibi_slopes, deterministic, rng_state)


@_flash_attn_varlen_backward.register_fake
def _flash_attn_varlen_backward_fake(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
                                     max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left,
                                     window_size_right, softcap, alibi_slopes, deterministic, rng_state=None,
                                     zero_tensors=False):
    total_q, nheads, _ = q.shape
    batch = cu_seqlens_q.shape[0] - 1
    return q.new_empty((nheads, total_q + 128 * batch), dtype=torch.float32)


_ops = getattr(torch.ops, NAMESPACE)
_wrapped_flash_attn_forward = _ops._flash_attn_forward
_wrapped_flash_attn_varlen_forward = _ops._flash_attn_varlen_forward
_wrapped_flash_attn_backward = _ops._flash_attn_backward
_wrapped_flash_attn_varlen_backward = _ops._flash_attn_varlen_backward
