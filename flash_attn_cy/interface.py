"""The flash_attn 2.x compatible functions: flash_attn_func, the packed variants and the varlen family.

Argument names, order, defaults, shapes and return values follow Dao-AILab flash_attn 2.x
(`flash_attn/flash_attn_interface.py`), plus two keyword-only extras: `backend` ("auto", "cpu", "sim", "metal")
and `seed` (dropout RNG, see `_dropout.py`). Inputs are NumPy arrays (float16, float32, float64,
ml_dtypes.bfloat16) or PyTorch tensors (CPU, or MPS with the Metal backend); outputs come back in the same kind and
dtype. Contiguous inputs are never copied.

Layering: the public functions validate and normalise their arguments, then either call
`flash_attn_cy.autograd.attention_with_grad` (PyTorch tensors that require grad, grad mode on) or
`attention_forward`. `attention_forward` / `attention_backward` take the normalised arguments (below) and are what
the autograd Function calls too.

Normalised arguments (keyword names used by attention_forward, attention_backward and attention_with_grad):
    cu_seqlens_q, cu_seqlens_k : C-contiguous int32 NumPy arrays (batch + 1,) or None (dense layout)
    max_seqlen_q, max_seqlen_k : int or None (dense)
    dropout_p      : float in [0, 1)
    softmax_scale  : float (default already applied: q.shape[-1] ** -0.5)
    causal         : bool, as the caller gave it; not read: the mask is window_size, into which
                     _validate.window (the one fold) has already folded it
    window_size    : (left, right) ints, -1 = unbounded, right == 0 when causal
    softcap        : float >= 0
    alibi_slopes   : float32 NumPy array of shape (1, nheads) or (batch, nheads), or None
    deterministic  : bool
    return_attn_probs : bool (S_dmask, the attention probabilities, is computed only when asked for)
    block_table    : int32 NumPy array (batch, max_blocks) or None (varlen only)
    backend        : resolved backend name: "cpu", "sim" or "metal"
    rng            : (seed, offset) pair of ints for dropout (ignored when dropout_p == 0)
"""
from __future__ import annotations

import re
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _arrays, _core, _dropout
from . import _validate as V

# A NumPy array (float16, ml_dtypes.bfloat16, float32, float64) or a PyTorch tensor (CPU, or MPS with Metal).
Tensor = Any
# out, or (out, softmax_lse, S_dmask) with return_attn_probs=True
Result = Union[Tensor, Tuple[Tensor, Tensor, Optional[Tensor]]]

__all__ = [
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_varlen_kvpacked_func",
    "attention_forward",
    "attention_backward",
]


# ---------------------------------------------------------------------------------------------------------------
# normalised entry points (also used by flash_attn_cy.autograd)

def _core_kwargs(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, window_size,
                 softcap, alibi_slopes, block_table, rng, deterministic=False, **_ignored) -> dict:
    kw = dict(softmax_scale=softmax_scale, window_left=window_size[0], window_right=window_size[1],
              softcap=softcap, dropout_p=dropout_p, deterministic=bool(deterministic))
    if dropout_p > 0.0:
        kw["seed"], kw["offset"] = rng
    if alibi_slopes is not None:
        kw["alibi_slopes"] = alibi_slopes
    if cu_seqlens_q is not None:
        kw.update(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                  max_seqlen_k=max_seqlen_k)
    if block_table is not None:
        kw["block_table"] = block_table
    return kw


def _zero_unowned_rows(cu_seqlens, *arrays) -> int:
    """Varlen: packed rows from cu_seqlens[-1] on belong to no sequence and no backend writes them; give them
    defined zeros in each array (out, dq, dk, dv), here and nowhere else. Returns cu_seqlens[-1]."""
    end = int(cu_seqlens[-1])
    for x in arrays:
        if end < x.shape[0]:
            x[end:] = 0
    return end


def _kind_dtype(q) -> Tuple[str, str]:
    return _arrays.kind_of(q, "q"), _arrays.float_dtype(q, "q")


def _mps_sync(kind: str) -> None:
    if kind == "mps":
        from . import _mps
        _mps.synchronize()


def attention_forward(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                      dropout_p=0.0, softmax_scale, causal=False, window_size=(-1, -1), softcap=0.0,
                      alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None,
                      backend="cpu", rng=(0, 0)):
    """Forward attention on validated, normalised arguments (see the module docstring).

    Returns (out, softmax_lse, S_dmask): out like q; softmax_lse float32 (batch, nheads, seqlen_q), or
    (nheads, total_q) in the varlen layout; S_dmask float32 (batch, nheads, seqlen_q, seqlen_k) attention
    probabilities (dropped entries negated when dropout_p > 0) when return_attn_probs, else None. Varlen:
    (batch, nheads, max_seqlen_q, max_seqlen_k), sequence b in the top-left corner of its slice, zeros elsewhere.
    """
    kind, dtype = _kind_dtype(q)
    varlen = cu_seqlens_q is not None
    nheads = q.shape[-2]
    out = _arrays.empty(kind, q, tuple(q.shape))
    if varlen:
        batch = cu_seqlens_q.shape[0] - 1
        lse = _arrays.empty(kind, q, (nheads, q.shape[0]), "float32")
        sq, sk = max_seqlen_q, max_seqlen_k
        rows_q = q.shape[0]
        rows_k = 0 if block_table is not None else k.shape[0]
        no_keys = block_table is None and (rows_k == 0 or int(cu_seqlens_k[-1]) == 0)
    else:
        batch, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        lse = _arrays.empty(kind, q, (batch, nheads, sq), "float32")
        rows_q = batch * sq
        no_keys = sk == 0
    want_probs = return_attn_probs
    probs = _arrays.empty(kind, q, (batch, nheads, sq, sk), "float32", fill=0.0) if want_probs else None

    if varlen:
        lse[:, _zero_unowned_rows(cu_seqlens_q, out):] = float("inf")
    if rows_q == 0 or batch == 0:
        return out, lse, probs
    if no_keys:  # no key anywhere: every row sees nothing -> zeros and +inf LSE (as flash_attn)
        out[...] = 0
        lse[...] = float("inf")
        return out, lse, probs

    kw = _core_kwargs(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                      window_size, softcap, alibi_slopes, block_table, rng)
    kw.pop("deterministic")
    if varlen and block_table is not None:
        # paged varlen: keys of sequence b are the first cu_seqlens_k[b+1]-cu_seqlens_k[b] rows of its pages
        kw["seqused_k"] = np.ascontiguousarray(np.diff(cu_seqlens_k), dtype=np.int32)
    lead = varlen
    kv_lead = varlen and block_table is None
    # S_dmask: every backend writes it itself (cpu: attention_forward.cpp; sim, metal: the fa_probs_* kernels that
    # close the forward plan), into host memory; a tensor on a device gets it by a copy afterwards.
    host_probs = probs.cpu() if probs is not None and _arrays.is_torch(probs) and probs.device.type != "cpu" else probs
    if host_probs is not None:
        kw["attn_probs"] = _arrays.core_view(host_probs, "attn_probs", writable=True)
    _mps_sync(kind)
    _core.forward(backend, dtype,
                  _arrays.core_view(q, "q", lead_axis=lead),
                  _arrays.core_view(k, "k", lead_axis=kv_lead),
                  _arrays.core_view(v, "v", lead_axis=kv_lead),
                  _arrays.core_view(out, "out", lead_axis=lead, writable=True),
                  _arrays.core_view(lse, "softmax_lse", lead_axis=lead, writable=True),
                  **kw)
    if host_probs is not probs:
        probs.copy_(host_probs)
    return out, lse, probs


def attention_backward(dout, q, k, v, out, softmax_lse, *, dq=None, dk=None, dv=None, cu_seqlens_q=None,
                       cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0, softmax_scale,
                       causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                       block_table=None, backend="cpu", rng=(0, 0), **_ignored):
    """Gradients dq, dk, dv of the attention (normalised arguments as attention_forward, plus the forward's
    out and softmax_lse). dq/dk/dv are allocated in q's kind and dtype unless given. Returns (dq, dk, dv)."""
    kind, dtype = _kind_dtype(q)
    if block_table is not None:
        raise NotImplementedError("block_table: backward through a paged KV cache is not supported")
    varlen = cu_seqlens_q is not None
    dq = _arrays.empty(kind, q, tuple(q.shape)) if dq is None else dq
    dk = _arrays.empty(kind, k, tuple(k.shape)) if dk is None else dk
    dv = _arrays.empty(kind, v, tuple(v.shape)) if dv is None else dv
    if varlen:
        _zero_unowned_rows(cu_seqlens_q, dq)
        _zero_unowned_rows(cu_seqlens_k, dk, dv)
    if q.shape[0] == 0 or (not varlen and q.shape[1] == 0) or k.shape[0] == 0 or (not varlen and k.shape[1] == 0):
        dq[...] = 0
        dk[...] = 0
        dv[...] = 0
        return dq, dk, dv
    kw = _core_kwargs(q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                      window_size, softcap, alibi_slopes, None, rng, deterministic)
    L = varlen
    _mps_sync(kind)
    _core.backward(backend, dtype,
                   _arrays.core_view(dout, "dout", lead_axis=L),
                   _arrays.core_view(q, "q", lead_axis=L),
                   _arrays.core_view(k, "k", lead_axis=L),
                   _arrays.core_view(v, "v", lead_axis=L),
                   _arrays.core_view(out, "out", lead_axis=L),
                   _arrays.core_view(softmax_lse, "softmax_lse", lead_axis=L),
                   _arrays.core_view(dq, "dq", lead_axis=L, in_place=True),
                   _arrays.core_view(dk, "dk", lead_axis=L, in_place=True),
                   _arrays.core_view(dv, "dv", lead_axis=L, in_place=True),
                   **kw)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------------------
# shared front end of the public functions

class _ProbsWithDropoutOnly:
    """The type of FLASH_ATTN_PROBS (see there)."""

    def __repr__(self) -> str:
        return "flash_attn_cy.interface.FLASH_ATTN_PROBS"


#: Passed as ``return_attn_probs`` by the flash_attn drop-in (flash_attn_compat): return (out, softmax_lse, S_dmask)
#: but materialise S_dmask only when dropout_p > 0, as flash_attn does (``return_softmax=return_attn_probs and
#: dropout_p > 0``); S_dmask is None otherwise. flash_attn_cy's own ``return_attn_probs=True`` always computes it.
FLASH_ATTN_PROBS = _ProbsWithDropoutOnly()


def _needs_grad(kind: str, tensors) -> bool:
    if kind not in ("torch", "mps"):
        return False
    import torch
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _run(q, k, v, names, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
         dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs,
         block_table=None, backend, seed):
    """Validate + normalise everything, then compute. `names` are the caller's argument names for q, k, v."""
    backend = V.resolve_backend(backend)
    kind, _ = V.same_kind_and_dtype(list(zip(names, (q, k, v))))
    dropout_p = V.dropout(dropout_p)
    window = V.window(window_size, causal)
    softcap = V.softcap(softcap)
    deterministic = V.flag(deterministic, "deterministic")
    flash_attn_rule = return_attn_probs is FLASH_ATTN_PROBS
    return_attn_probs = flash_attn_rule or V.flag(return_attn_probs, "return_attn_probs")
    want_probs = return_attn_probs and (dropout_p > 0.0 or not flash_attn_rule)
    scale = V.softmax_scale(softmax_scale, q.shape[-1])
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    # torch.compile tracing: everything must stay in torch ops, so the custom ops carry the call (grad or not)
    traced = kind in ("torch", "mps") and block_table is None and _arrays.compiling()
    slopes = V.alibi(alibi_slopes, batch, q.shape[-2], traced=traced)
    use_ops = traced or _needs_grad(kind, (q, k, v))
    if dropout_p == 0.0:
        rng = (0, 0)
    elif use_ops and seed is None and block_table is None:
        rng = None  # drawn from torch's default generator as a tensor by the op path (same draw, no graph break)
    else:
        rng = _dropout.philox_state(kind, seed)
    args = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                max_seqlen_k=max_seqlen_k, dropout_p=dropout_p, softmax_scale=scale, causal=bool(causal),
                window_size=window, softcap=softcap, alibi_slopes=slopes, deterministic=deterministic,
                return_attn_probs=want_probs, block_table=block_table, backend=backend, rng=rng)

    if use_ops and block_table is not None:  # a paged cache: forward as flash_attn, a backward raises
        from . import autograd
        out, lse, probs = autograd.paged_forward(q, k, v, **args)
    elif use_ops:
        from . import autograd  # imports torch: reached only with torch tensors (grad, or torch.compile)
        out, lse, probs = autograd.attention_with_grad(q, k, v, **args)
    else:
        out, lse, probs = attention_forward(q, k, v, **args)
    return (out, lse, probs) if return_attn_probs else out


def _varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, k_name="k",
                 names=("q", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")):
    """Validate the varlen metadata; returns (cu_q, cu_k, max_q, max_k, block_table) normalised. `names`: the
    caller's argument names (q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k), so that a message names
    what the user passed (the packed variants call them qkv, cu_seqlens, max_seqlen)."""
    q_name, cu_q_name, cu_k_name, max_q_name, max_k_name = names
    max_q = V.integer(max_seqlen_q, max_q_name, 0)
    max_k = V.integer(max_seqlen_k, max_k_name, 0)
    if (block_table is None and _arrays.is_torch(q) and _arrays.is_torch(cu_seqlens_q)
            and _arrays.is_torch(cu_seqlens_k) and _arrays.compiling()):
        cu_q = V.cu_seqlens_traced(cu_seqlens_q, cu_q_name, None)
        cu_k = V.cu_seqlens_traced(cu_seqlens_k, cu_k_name, cu_q.shape[0] - 1)
        return cu_q, cu_k, max_q, max_k, None
    cu_q = V.cu_seqlens(cu_seqlens_q, cu_q_name, None, q.shape[0], max_q, max_q_name, q_name)
    batch = cu_q.shape[0] - 1
    total_k = None if block_table is not None else k.shape[0]
    cu_k = V.cu_seqlens(cu_seqlens_k, cu_k_name, batch, total_k, max_k, max_k_name, k_name, cu_q_name)
    bt = None
    if block_table is not None:
        lens = np.diff(cu_k.astype(np.int64))
        page = k.shape[1]
        bt_arr = _arrays.host_int32(block_table, "block_table", ndim=2)
        if bt_arr.shape[0] == batch and page > 0:
            need = (lens + page - 1) // page
            if need.size and need.max() > bt_arr.shape[1]:
                raise ValueError(f"block_table: sequence lengths need {int(need.max())} pages but block_table has "
                                 f"{bt_arr.shape[1]} columns")
        else:
            need = None
        bt = V.block_table(block_table, batch, k.shape[0], page, need)
    return cu_q, cu_k, max_q, max_k, bt


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
    V.dense_shapes(q, k, v)
    return _run(q, k, v, ("q", "k", "v"), dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)


def _unpack(x, name: str, axis: int, count: int, form: str, want_ndim: int):
    """Split a packed tensor along `axis` into `count` views (no copy)."""
    _arrays.kind_of(x, name)
    if x.ndim != want_ndim or x.shape[axis] != count:
        raise ValueError(f"{name}: expected shape {form}, got {tuple(x.shape)}")
    idx = [slice(None)] * x.ndim
    parts = []
    for i in range(count):
        idx[axis] = i
        parts.append(x[tuple(idx)])
    return parts


def flash_attn_qkvpacked_func(qkv: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                              causal: bool = False, window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                              alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                              return_attn_probs: bool = False, *, backend: str = "auto", seed: Any = None) -> Result:
    """flash_attn_func with q, k, v stacked: qkv (batch, seqlen, 3, nheads, headdim). Same options and returns."""
    q, k, v = _unpack(qkv, "qkv", 2, 3, "(batch, seqlen, 3, nheads, headdim)", 5)
    V.dense_shapes(q, k, v)
    return _run(q, k, v, ("qkv", "qkv", "qkv"), dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)


def flash_attn_kvpacked_func(q: Tensor, kv: Tensor, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                             causal: bool = False, window_size: Tuple[int, int] = (-1, -1), softcap: float = 0.0,
                             alibi_slopes: Optional[Tensor] = None, deterministic: bool = False,
                             return_attn_probs: bool = False, *, backend: str = "auto", seed: Any = None) -> Result:
    """flash_attn_func with k, v stacked: q (batch, seqlen_q, nheads, headdim), kv (batch, seqlen_k, 2, nheads_k,
    headdim). Same options and returns."""
    k, v = _unpack(kv, "kv", 2, 2, "(batch, seqlen_k, 2, nheads_k, headdim)", 5)
    V.ndim(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    if kv.shape[0] != q.shape[0]:
        raise ValueError(f"kv: batch size {kv.shape[0]} must equal q's batch size {q.shape[0]}")
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape), "kv", "kv")
    return _run(q, k, v, ("q", "kv", "kv"), dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
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
    cu_q, cu_k, max_q, max_k, bt = _varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                block_table)
    return _run(q, k, v, ("q", "k", "v"), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
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
    q, k, v = _unpack(qkv, "qkv", 1, 3, "(total, 3, nheads, headdim)", 4)
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape), "qkv", "qkv")
    cu_q, cu_k, max_q, max_k, _ = _varlen_meta(q, k, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, None, "qkv",
                                               ("qkv", "cu_seqlens", "cu_seqlens", "max_seqlen", "max_seqlen"))
    return _run(q, k, v, ("qkv", "qkv", "qkv"), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
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
    V.ndim(q, "q", 3, "(total_q, nheads, headdim)")
    k, v = _unpack(kv, "kv", 1, 2, "(total_k, 2, nheads_k, headdim)", 4)
    V.head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape), "kv", "kv")
    cu_q, cu_k, max_q, max_k, _ = _varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, None,
                                               "kv")
    return _run(q, k, v, ("q", "kv", "kv"), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                max_seqlen_k=max_k, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                window_size=window_size, softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic,
                return_attn_probs=return_attn_probs, backend=backend, seed=seed)
