"""``flash_attn.flash_attn_interface`` served by flash_attn_cy.

Every function has the exact name, positional order, keyword names and defaults of Dao-AILab flash_attn 2.8.3, so
model code (and transformers, which inspects these signatures to decide which keywords to pass) can call it
unchanged. The work is done by the matching ``flash_attn_cy`` function on its default backend ("auto").

Errors: flash_attn's CUDA extension reports bad arguments as ``RuntimeError``; flash_attn_cy raises ``ValueError``
or ``TypeError`` naming the argument. Here those are re-raised as :class:`FlashAttnValueError` /
:class:`FlashAttnTypeError`, which derive from BOTH the flash_attn_cy type and ``RuntimeError``, so
``except RuntimeError`` (code written for flash_attn) and ``except ValueError`` both catch them.
``NotImplementedError`` (a ``RuntimeError`` already) passes through unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union

import flash_attn_cy as _cy
from flash_attn_cy import _validate
from flash_attn_cy import interface as _interface
from flash_attn_cy.flash_attn_compat._s_dmask import (  # noqa: F401  (_get_block_size_n: re-exported API)
    _flash_scaled_s_dmask,
    _get_block_size_n,
)

__all__ = [
    "FlashAttnTypeError",
    "FlashAttnValueError",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]


from flash_attn_cy.errors import FlashAttnTypeError, FlashAttnValueError  # noqa: E402  (declared in flash_attn_cy/errors.py)


try:  # the semi-private functions and ops of flash_attn 2.8.3 (torch.library custom ops: they need PyTorch)
    # absolute import: one module (one set of registered ops) whether this file loads as flash_attn.* or not
    from flash_attn_cy.flash_attn_compat._lowlevel import (  # noqa: F401  (re-exported API)
        _flash_attn_backward,
        _flash_attn_forward,
        _flash_attn_varlen_backward,
        _flash_attn_varlen_forward,
        _wrapped_flash_attn_backward,
        _wrapped_flash_attn_forward,
        _wrapped_flash_attn_varlen_backward,
        _wrapped_flash_attn_varlen_forward,
    )
except ImportError:  # no torch: the public functions still take NumPy arrays
    pass


def maybe_contiguous(x: Any) -> Any:
    """flash_attn's helper: x with a unit stride on its last axis (a contiguous copy only when it has another)."""
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


def round_multiple(x: int, m: int) -> int:
    """flash_attn's helper: x rounded up to a multiple of m."""
    return (x + m - 1) // m * m


def _flash_attn_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise flash_attn_cy's ValueError/TypeError as types that are also RuntimeError (see module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FlashAttnValueError, FlashAttnTypeError):
            raise
        except ValueError as exc:
            raise FlashAttnValueError(str(exc)) from exc
        except TypeError as exc:
            raise FlashAttnTypeError(str(exc)) from exc

    return wrapper


def _flash_attn_semantics(fn: Callable[..., Any]) -> Callable[..., Any]:
    """flash_attn's rules on top of flash_attn_cy's function: errors as above; with return_attn_probs the third value
    is materialised only when dropout_p > 0 (flash_attn: ``return_softmax=return_attn_probs and dropout_p > 0``),
    otherwise it is None, as flash_attn 2.0-2.6 return it and as this project's issue 16 asks (2.7+ hand back an
    empty (0,) tensor from their kernel instead; the low-level ``_flash_attn_forward`` family, whose custom-op
    schemas must return a tensor, keeps that); when present it is scaled per row as flash_attn's kernel does for one
    key block (see _flash_scaled_s_dmask)."""
    checked = _flash_attn_errors(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        res = checked(*args, **kwargs)
        if not isinstance(res, tuple):
            return res
        out, lse, s_dmask = res
        if s_dmask is not None:
            s_dmask = _flash_scaled_s_dmask(s_dmask)
        return out, lse, s_dmask

    return wrapper


def _probs(return_attn_probs: Any) -> Any:
    """return_attn_probs as flash_attn_cy's functions take it under flash_attn's rule (see _flash_attn_semantics)."""
    return _interface.FLASH_ATTN_PROBS if _validate.flag(return_attn_probs, "return_attn_probs") else False


@_flash_attn_semantics
def flash_attn_qkvpacked_func(
    qkv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # <=0.0 means deactivate
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention on packed ``qkv`` of shape (batch, seqlen, 3, nheads, headdim); returns (batch, seqlen, nheads,
    headdim), or ``(out, softmax_lse, S_dmask)`` with ``return_attn_probs=True``. Same semantics as flash_attn 2.x."""
    return _cy.flash_attn_qkvpacked_func(
        qkv,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        deterministic=deterministic,
        return_attn_probs=_probs(return_attn_probs),
    )


@_flash_attn_semantics
def flash_attn_kvpacked_func(
    q,
    kv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention with q (batch, seqlen_q, nheads, headdim) and packed kv (batch, seqlen_k, 2, nheads_k, headdim).
    Same semantics and return values as flash_attn 2.x."""
    return _cy.flash_attn_kvpacked_func(
        q,
        kv,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        deterministic=deterministic,
        return_attn_probs=_probs(return_attn_probs),
    )


@_flash_attn_semantics
def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention with q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_k, headdim); causal and
    window masks aligned bottom-right; GQA/MQA when nheads % nheads_k == 0. Returns out like q, or
    ``(out, softmax_lse, S_dmask)`` with ``return_attn_probs=True``. Same semantics as flash_attn 2.x."""
    return _cy.flash_attn_func(
        q,
        k,
        v,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        deterministic=deterministic,
        return_attn_probs=_probs(return_attn_probs),
    )


@_flash_attn_semantics
def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Variable-length attention on packed qkv (total, 3, nheads, headdim) with int32 ``cu_seqlens`` (batch + 1,).
    Same semantics and return values as flash_attn 2.x."""
    return _cy.flash_attn_varlen_qkvpacked_func(
        qkv,
        cu_seqlens,
        max_seqlen,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        deterministic=deterministic,
        return_attn_probs=_probs(return_attn_probs),
    )


@_flash_attn_semantics
def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Variable-length attention with q (total_q, nheads, headdim) and packed kv (total_k, 2, nheads_k, headdim).
    Same semantics and return values as flash_attn 2.x."""
    return _cy.flash_attn_varlen_kvpacked_func(
        q,
        kv,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        deterministic=deterministic,
        return_attn_probs=_probs(return_attn_probs),
    )


@_flash_attn_semantics
def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Variable-length attention: q (total_q, nheads, headdim), k/v (total_k, nheads_k, headdim), int32
    ``cu_seqlens_q``/``cu_seqlens_k`` (batch + 1,); with ``block_table`` k/v are a paged cache
    (num_blocks, page_block_size, nheads_k, headdim). Same semantics and return values as flash_attn 2.x."""
    return _cy.flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        deterministic=deterministic,
        return_attn_probs=_probs(return_attn_probs),
        block_table=block_table,
    )


@_flash_attn_errors
def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens: Optional[Union[(int, Any)]] = None,
    cache_batch_idx: Optional[Any] = None,
    cache_leftpad: Optional[Any] = None,
    block_table: Optional[Any] = None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """Incremental decoding against a K/V cache: new ``k``/``v`` are written into ``k_cache``/``v_cache`` in place
    at ``cache_seqlens``, optional rotary embedding on q and the new k, paged caches through ``block_table``.
    Returns out (batch, seqlen, nheads, headdim), or ``(out, softmax_lse)`` with ``return_softmax_lse=True``.
    Same semantics as flash_attn 2.x."""
    return _cy.flash_attn_with_kvcache(
        q,
        k_cache,
        v_cache,
        k=k,
        v=v,
        rotary_cos=rotary_cos,
        rotary_sin=rotary_sin,
        cache_seqlens=cache_seqlens,
        cache_batch_idx=cache_batch_idx,
        cache_leftpad=cache_leftpad,
        block_table=block_table,
        softmax_scale=softmax_scale,
        causal=causal,
        window_size=window_size,
        softcap=softcap,
        rotary_interleaved=rotary_interleaved,
        alibi_slopes=alibi_slopes,
        num_splits=num_splits,
        return_softmax_lse=return_softmax_lse,
    )
