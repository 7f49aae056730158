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

import inspect
from types import SimpleNamespace
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


# The four ops' parameters (flash_attn 2.8.3's names, order, types and defaults), from the groups they share: the one
# place they are written. Each op's Python signature, and through it the torch.library schema (inferred from that
# signature, as for a decorated function), is generated from these lists by _custom_op.
_QKV = (("q", Tensor), ("k", Tensor), ("v", Tensor))
_GRAD_INPUTS = (("dout", Tensor), *_QKV, ("out", Tensor), ("softmax_lse", Tensor), ("dq", Optional[Tensor]),
                ("dk", Optional[Tensor]), ("dv", Optional[Tensor]))
_VARLEN = (("cu_seqlens_q", Tensor), ("cu_seqlens_k", Tensor), ("max_seqlen_q", int), ("max_seqlen_k", int))
_OPTIONS = (("dropout_p", float), ("softmax_scale", float), ("causal", bool), ("window_size_left", int),
            ("window_size_right", int), ("softcap", float), ("alibi_slopes", Optional[Tensor]))
_NO_DEFAULT = inspect.Parameter.empty


def _custom_op(name: str, params, returns, mutates_args=(), **defaults):
    """Decorator: `impl(a)`, `a` the bound arguments as attributes, registered as the custom op `name` whose
    signature is `params` ((name, type) pairs, `defaults` by name) returning `returns`; impl.fake(a) (set by the
    returned op's ``fake`` decorator) is its fake implementation for torch.compile."""
    sig = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t,
                                               default=defaults.get(n, _NO_DEFAULT)) for n, t in params],
                            return_annotation=returns)

    def bound(args, kwargs) -> SimpleNamespace:
        b = sig.bind(*args, **kwargs)
        b.apply_defaults()
        return SimpleNamespace(**b.arguments)

    def register(impl):
        def op_fn(*args, **kwargs):
            return impl(bound(args, kwargs))

        op_fn.__signature__ = sig
        op_fn.__name__ = op_fn.__qualname__ = name
        op_fn.__module__ = __name__
        op_fn.__doc__ = impl.__doc__
        op = torch.library.custom_op(_lib(name), mutates_args=mutates_args)(op_fn)
        op.fake = lambda fake: op.register_fake(lambda *args, **kwargs: fake(bound(args, kwargs)))
        return op

    return register


_FORWARD_RETURNS = Tuple[Tensor, Tensor, Tensor, Tensor]


@_custom_op("_flash_attn_forward", (*_QKV, *_OPTIONS, ("return_softmax", bool)), _FORWARD_RETURNS)
def _flash_attn_forward(a):
    """flash_attn 2.8.3's dense forward: (out, softmax_lse (batch, nheads, seqlen_q), S_dmask, rng_state)."""
    return _forward(a.q, a.k, a.v, None, None, None, None, a.dropout_p, a.softmax_scale, a.causal, a.window_size_left,
                    a.window_size_right, a.softcap, a.alibi_slopes, a.return_softmax, None)


@_flash_attn_forward.fake
def _flash_attn_forward_fake(a):
    batch, seqlen_q, nheads, _ = a.q.shape
    return _forward_fake(a, (batch, nheads, seqlen_q), (batch, nheads, seqlen_q, a.k.shape[1]))


def _forward_fake(a, lse_shape, s_dmask_shape):
    q = a.q
    return (torch.empty_like(q), q.new_empty(lse_shape, dtype=torch.float32),
            q.new_empty(s_dmask_shape if a.return_softmax else (0,),
                        dtype=torch.float32 if a.return_softmax else q.dtype),
            q.new_empty((2,), dtype=torch.int64))


@_custom_op("_flash_attn_varlen_forward",
            (*_QKV, *_VARLEN, *_OPTIONS, ("return_softmax", bool), ("block_table", Optional[Tensor]),
             ("leftpad_k", Optional[Tensor]), ("seqused_k", Optional[Tensor]), ("zero_tensors", bool)),
            _FORWARD_RETURNS, window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
            return_softmax=False, block_table=None, leftpad_k=None, seqused_k=None, zero_tensors=False)
def _flash_attn_varlen_forward(a):
    """flash_attn 2.8.3's varlen forward: (out, softmax_lse (nheads, total_q), S_dmask, rng_state)."""
    for name in ("leftpad_k", "seqused_k"):
        if getattr(a, name) is not None:
            raise NotImplementedError(f"{name}: not supported by flash_attn_cy's _flash_attn_varlen_forward; "
                                      "use flash_attn_with_kvcache (cache_leftpad, cache_seqlens) instead")
    return _forward(a.q, a.k, a.v, a.cu_seqlens_q, a.cu_seqlens_k, a.max_seqlen_q, a.max_seqlen_k, a.dropout_p,
                    a.softmax_scale, a.causal, a.window_size_left, a.window_size_right, a.softcap, a.alibi_slopes,
                    a.return_softmax, a.block_table)


@_flash_attn_varlen_forward.fake
def _flash_attn_varlen_forward_fake(a):
    total_q, nheads, _ = a.q.shape
    batch = a.cu_seqlens_q.shape[0] - 1
    return _forward_fake(a, (nheads, total_q), (batch, nheads, a.max_seqlen_q, a.max_seqlen_k))


_GRADIENTS = ("dq", "dk", "dv")  # written in place (declared as mutated)


@_custom_op("_flash_attn_backward",
            (*_GRAD_INPUTS, *_OPTIONS, ("deterministic", bool), ("rng_state", Optional[Tensor])), Tensor,
            mutates_args=_GRADIENTS, rng_state=None)
def _flash_attn_backward(a):
    """flash_attn 2.8.3's dense backward: writes dq, dk, dv in place; returns softmax_d (batch, nheads,
    round_up(seqlen_q, 128))."""
    return _backward_args(a, None, None, None, None)


@_flash_attn_backward.fake
def _flash_attn_backward_fake(a):
    batch, seqlen_q, nheads, _ = a.q.shape
    return a.q.new_empty((batch, nheads, _round_up(seqlen_q, 128)), dtype=torch.float32)


@_custom_op("_flash_attn_varlen_backward",
            (*_GRAD_INPUTS, *_VARLEN, *_OPTIONS, ("deterministic", bool), ("rng_state", Optional[Tensor]),
             ("zero_tensors", bool)), Tensor,
            mutates_args=_GRADIENTS, rng_state=None, zero_tensors=False)
def _flash_attn_varlen_backward(a):
    """flash_attn 2.8.3's varlen backward: writes dq, dk, dv in place; returns softmax_d (nheads,
    total_q + 128 * batch)."""
    return _backward_args(a, a.cu_seqlens_q, a.cu_seqlens_k, a.max_seqlen_q, a.max_seqlen_k)


@_flash_attn_varlen_backward.fake
def _flash_attn_varlen_backward_fake(a):
    total_q, nheads, _ = a.q.shape
    batch = a.cu_seqlens_q.shape[0] - 1
    return a.q.new_empty((nheads, total_q + 128 * batch), dtype=torch.float32)


def _backward_args(a, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> Tensor:
    return _backward(a.dout, a.q, a.k, a.v, a.out, a.softmax_lse, a.dq, a.dk, a.dv, cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q, max_seqlen_k, a.dropout_p, a.softmax_scale, a.causal, a.window_size_left,
                     a.window_size_right, a.softcap, a.alibi_slopes, a.deterministic, a.rng_state)


_ops = getattr(torch.ops, NAMESPACE)
_wrapped_flash_attn_forward = _ops._flash_attn_forward
_wrapped_flash_attn_varlen_forward = _ops._flash_attn_varlen_forward
_wrapped_flash_attn_backward = _ops._flash_attn_backward
_wrapped_flash_attn_varlen_backward = _ops._flash_attn_varlen_backward
