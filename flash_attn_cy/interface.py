"""The flash_attn 2.x compatible functions: flash_attn_func, the packed variants and the varlen family.

Argument names, order, defaults, shapes and return values follow Dao-AILab flash_attn 2.x
(`flash_attn/flash_attn_interface.py`), plus two keyword-only extras: `backend` ("auto", "cpu", "sim", "metal")
and `seed` (dropout RNG, see `_dropout.py`). Inputs are NumPy arrays (float16, float32, float64,
ml_dtypes.bfloat16) or PyTorch tensors (CPU, or MPS with the Metal backend); outputs come back in the same kind and
dtype. Contiguous inputs are never copied.

Layering: each public function checks its tensors' shapes and the varlen metadata, `_validate.attention` validates
and normalises the options, and the call goes to `flash_attn_cy.autograd.attention_with_grad` (PyTorch tensors that
require grad, grad mode on, or torch.compile tracing) or to `_dispatch.attention_forward` (everything else).
`attention_forward` / `attention_backward` (re-exported here) take the normalised arguments `_dispatch` documents.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from . import _arrays, _dispatch
from . import _validate as V
from ._dispatch import PlanKey, attention_backward, attention_forward
from ._validate import FLASH_ATTN_PROBS

# A NumPy array (float16, ml_dtypes.bfloat16, float32, float64) or a PyTorch tensor (CPU, or MPS with Metal).
Tensor = Any
# out, or (out, softmax_lse, S_dmask) with return_attn_probs=True
Result = Union[Tensor, Tuple[Tensor, Tensor, Optional[Tensor]]]

# flash_attn 2.x's functions defined here: the package (__init__.py) and the flash_attn drop-in
# (flash_attn_compat/flash_attn_interface.py) export them by this list.
FLASH_ATTN_FUNCTIONS = (
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
)

__all__ = [*FLASH_ATTN_FUNCTIONS, "attention_forward", "attention_backward", "FLASH_ATTN_PROBS"]


# ---------------------------------------------------------------------------------------------------------------
# shared front end of the public functions

def _run(q, k, v, names, plan_key=None, **options):
    """Validate + normalise the options (`_validate.attention`), then compute, with autograd where it is needed.
    `names` are the caller's argument names for q, k, v (a message names what the user passed); `plan_key` the plan
    cache's key for this call form, under which the normalised arguments are stored once the call has run."""
    args, use_ops, return_attn_probs = V.attention(q, k, v, names, **options)
    block_table = args["block_table"]
    if use_ops and block_table is not None:  # a paged cache: forward as flash_attn, a backward raises
        from . import autograd
        out, lse, probs = autograd.paged_forward(q, k, v, **args)
    elif use_ops:
        from . import autograd  # imports torch: reached only with torch tensors (grad, or torch.compile)
        out, lse, probs = autograd.attention_with_grad(q, k, v, **args)
    else:
        out, lse, probs = attention_forward(q, k, v, **args)
        if plan_key is not None:
            plan_key.store_attention(args, return_attn_probs)
    return (out, lse, probs) if return_attn_probs else out


# The plan cache first (flash_attn_cy/_core_planned_attn.pxi), called inline by every public function (a call
# of a form seen before returns its result from there; otherwise a PlanKey to store the general path's arguments
# under, or None): planned(form, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, <the options>,
# block_table, backend, seed, outputs in host buffers).
_planned = _dispatch.planned_attention
_DENSE, _QKV, _KV, _VARLEN, _VARLEN_QKV, _VARLEN_KV, _VARLEN_PAGED = (_dispatch.PLAN_FORMS[f] for f in (
    "dense", "qkvpacked", "kvpacked", "varlen", "varlen_qkvpacked", "varlen_kvpacked", "varlen_paged"))
_compiling = _arrays.dynamo_compiling


# ---------------------------------------------------------------------------------------------------------------
# public API

def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                    causal: bool = False, window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                    return_attn_probs: bool = False, *, backend: str = "auto", seed: Any = None) -> Result:
    """Scaled dot-product attention, FlashAttention-2 style (flash_attn 2.x semantics).

    Arguments:
        q: (batch, seqlen_q, nheads, headdim); k, v: (batch, seqlen_k, nheads_k, headdim) with nheads % nheads_k
            == 0 (MQA/GQA). NumPy (float16/bfloat16/float32/float64) or PyTorch tensors, all one kind and dtype.
        dropout_p: dropout probability on the attention weights (set 0.0 for evaluation).
        softmax_scale: scaling of QK^T before the softmax; default 1 / sqrt(headdim).
        causal: causal mask aligned to the bottom-right corner of the score matrix.
        window_size: (left, right) sliding window; query i sees keys
            [i + seqlen_k - seqlen_q - left, i + seqlen_k - seqlen_q + right]; -1 = unbounded.
        softcap: > 0 applies softcap * tanh(score / softcap).
        alibi_slopes: float32 (nheads,) or (batch, nheads); adds -slope * |i + seqlen_k - seqlen_q - j|.
        deterministic: deterministic backward pass.
        return_attn_probs: also return softmax_lse and S_dmask.
        backend: "auto" (Metal if usable, else CPU), "cpu", "sim" or "metal".
        seed: dropout RNG: int, (seed, offset) or numpy Generator; default torch's / NumPy's global RNG.

    Returns:
        out (batch, seqlen_q, nheads, headdim), or (out, softmax_lse, S_dmask) with return_attn_probs:
        softmax_lse float32 (batch, nheads, seqlen_q); S_dmask float32 (batch, nheads, seqlen_q, seqlen_k), the
        softmax probabilities, with the entries dropout removed negated (a debugging aid, as flash_attn's).
    """
    # a call of a form seen before runs from its stored plan (the outputs directly); else validate and run
    plan = None if _compiling() else _planned(
        _DENSE, q, k, v, None, None, None, None, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
        deterministic, return_attn_probs, None, backend, seed, _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not PlanKey:
        return plan
    V.dense_shapes(q, k, v)
    return _run(q, k, v, ("q", "k", "v"), plan, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)


def flash_attn_qkvpacked_func(qkv: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                              causal: bool = False, window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                              alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                              return_attn_probs: bool = False, *, backend: str = "auto", seed: Any = None) -> Result:
    """flash_attn_func with q, k, v stacked: qkv (batch, seqlen, 3, nheads, headdim). Same options and returns."""
    plan = None if _compiling() else _planned(
        _QKV, qkv, None, None, None, None, None, None, dropout_p, softmax_scale, causal, window_size, softcap,
        alibi_slopes, deterministic, return_attn_probs, None, backend, seed, _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not PlanKey:
        return plan
    q, k, v = V.unpack(qkv, "qkv", 2, 3, "(batch, seqlen, 3, nheads, headdim)", 5)
    V.dense_shapes(q, k, v)
    return _run(q, k, v, ("qkv", "qkv", "qkv"), plan, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)


def flash_attn_kvpacked_func(q: Tensor, kv: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                             causal: bool = False, window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                             alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                             return_attn_probs: bool = False, *, backend: str = "auto", seed: Any = None) -> Result:
    """flash_attn_func with k, v stacked: q (batch, seqlen_q, nheads, headdim), kv (batch, seqlen_k, 2, nheads_k,
    headdim). Same options and returns."""
    plan = None if _compiling() else _planned(
        _KV, q, kv, None, None, None, None, None, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
        deterministic, return_attn_probs, None, backend, seed, _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not PlanKey:
        return plan
    k, v = V.unpack(kv, "kv", 2, 2, "(batch, seqlen_k, 2, nheads_k, headdim)", 5)
    V.ndim(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    if kv.shape[0] != q.shape[0]:
        raise ValueError(f"kv: batch size {kv.shape[0]} must equal q's batch size {q.shape[0]}")
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape), "kv", "kv")
    return _run(q, k, v, ("q", "kv", "kv"), plan, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)


def flash_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                           softmax_scale: Optional[float] = None, causal: bool = False,
                           window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                           alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                           return_attn_probs: bool = False, block_table: Optional[Tensor] = None, *,
                           backend: str = "auto", seed: Any = None) -> Result:
    """Attention over a batch of variable-length sequences packed along the first axis.

    q: (total_q, nheads, headdim); k, v: (total_k, nheads_k, headdim), or with block_table (paged KV)
    (num_blocks, page_block_size, nheads_k, headdim). cu_seqlens_q/k: int32 (batch + 1,) cumulative lengths
    starting at 0; max_seqlen_q/k: the longest sequence. block_table: int32 (batch, max_blocks) page indices.
    Other options as flash_attn_func; masks align bottom-right per sequence.

    Returns out (total_q, nheads, headdim), or (out, softmax_lse (nheads, total_q) float32, S_dmask) with
    return_attn_probs (S_dmask: (batch, nheads, max_seqlen_q, max_seqlen_k), sequence b in the top-left corner).
    """
    plan = None if _compiling() else _planned(
        _VARLEN if block_table is None else _VARLEN_PAGED, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
        max_seqlen_k, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
        return_attn_probs, block_table, backend, seed, _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not PlanKey:
        return plan
    V.ndim(q, "q", 3, "(total_q, nheads, headdim)")
    if block_table is None:
        V.ndim(k, "k", 3, "(total_k, nheads_k, headdim)")
        V.ndim(v, "v", 3, "(total_k, nheads_k, headdim)")
        if v.shape[0] != k.shape[0]:
            raise ValueError(f"v: total_k {v.shape[0]} must equal k's {k.shape[0]}")
    else:
        V.ndim(k, "k", 4, "(num_blocks, page_block_size, nheads_k, headdim) with a block_table")
        V.ndim(v, "v", 4, "(num_blocks, page_block_size, nheads_k, headdim) with a block_table")
        if v.shape[:2] != k.shape[:2]:
            raise ValueError(f"v: (num_blocks, page_block_size) {tuple(v.shape[:2])} must equal k's "
                             f"{tuple(k.shape[:2])}")
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    cu_q, cu_k, max_q, max_k, bt = V.varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                block_table)
    return _run(q, k, v, ("q", "k", "v"), plan, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                max_seqlen_k=max_k, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, block_table=bt, backend=backend, seed=seed)


def flash_attn_varlen_qkvpacked_func(qkv: Tensor, cu_seqlens: Tensor, max_seqlen: int, dropout_p: float = 0.0,
                                     softmax_scale: Optional[float] = None, causal: bool = False,
                                     window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                     alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                                     return_attn_probs: bool = False, *, backend: str = "auto",
                                     seed: Any = None) -> Result:
    """flash_attn_varlen_func with q, k, v stacked: qkv (total, 3, nheads, headdim), one cu_seqlens/max_seqlen."""
    plan = None if _compiling() else _planned(
        _VARLEN_QKV, qkv, None, None, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, softmax_scale, causal,
        window_size, softcap, alibi_slopes, deterministic, return_attn_probs, None, backend, seed,
        _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not PlanKey:
        return plan
    q, k, v = V.unpack(qkv, "qkv", 1, 3, "(total, 3, nheads, headdim)", 4)
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape), "qkv", "qkv")
    cu_q, cu_k, max_q, max_k, _ = V.varlen_meta(q, k, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, None, "qkv",
                                               ("qkv", "cu_seqlens", "cu_seqlens", "max_seqlen", "max_seqlen"))
    return _run(q, k, v, ("qkv", "qkv", "qkv"), plan, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                max_seqlen_k=max_k, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)


def flash_attn_varlen_kvpacked_func(q: Tensor, kv: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                                    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float = 0.0,
                                    softmax_scale: Optional[float] = None, causal: bool = False,
                                    window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                                    alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                                    return_attn_probs: bool = False, *, backend: str = "auto",
                                    seed: Any = None) -> Result:
    """flash_attn_varlen_func with k, v stacked: q (total_q, nheads, headdim), kv (total_k, 2, nheads_k, headdim)."""
    plan = None if _compiling() else _planned(
        _VARLEN_KV, q, kv, None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
        causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs, None, backend, seed,
        _arrays._OUTPUTS_IN_HOST_BUFFERS)
    if plan is not None and type(plan) is not PlanKey:
        return plan
    V.ndim(q, "q", 3, "(total_q, nheads, headdim)")
    k, v = V.unpack(kv, "kv", 1, 2, "(total_k, 2, nheads_k, headdim)", 4)
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape), "kv", "kv")
    cu_q, cu_k, max_q, max_k, _ = V.varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, None,
                                               "kv")
    return _run(q, k, v, ("q", "kv", "kv"), plan, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                max_seqlen_k=max_k, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)
