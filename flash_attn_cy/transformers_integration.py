"""Hugging Face transformers integration: ``attn_implementation="flash_attn_cy"``.

``register_transformers()`` registers :func:`flash_attn_cy_attention_forward` with transformers'
``AttentionInterface`` and the flash-attention mask builder with ``AttentionMaskInterface`` under the name
``"flash_attn_cy"``. Models that use the attention interface (Llama, Mistral, Qwen2/3, Gemma, Phi3, ...) then
run their attention through flash_attn_cy.

What the attention function receives (transformers' attention-interface contract, same as its own
``flash_attention_forward``): ``query`` (batch, heads, q_len, head_dim), ``key``/``value`` (batch, kv_heads, kv_len,
head_dim) with the KV cache already updated, and ``attention_mask`` either ``None`` (no padding: plain causal) or the
2-D (batch, kv_len) padding mask (1 = token, 0 = pad), because the flash mask builder registered with it returns
exactly that. It returns (batch, q_len, heads, head_dim) and ``None`` for the attention weights.

How a call is served:
- no mask: ``flash_attn_func`` (causal aligned bottom-right, so decode steps against a longer cache are right);
- padding mask, decode steps (q_len < kv_len) on a left-padded batch (what ``generate()`` builds for decoder-only
  models): ``flash_attn_with_kvcache`` reads the K/V cache in place with ``cache_leftpad`` = each row's pad count,
  so nothing is copied per step;
- any other padding mask: the valid tokens are packed with :mod:`flash_attn_cy.bert_padding`,
  ``flash_attn_varlen_func`` runs on the packed batch and the output is scattered back (pad rows are zero). Query
  rows are taken from the right end of the mask when q_len < kv_len;
- packed sequences given as ``cu_seq_lens_q/k`` + ``max_length_q/k`` keyword arguments, or one row whose
  ``position_ids`` restart (padding-free training), go to ``flash_attn_varlen_func`` with one entry per sequence;
- ``sliding_window=w`` becomes ``window_size=(w - 1, w - 1)`` (the window counts the token itself), ``softcap`` and
  ``scaling`` pass through, GQA/MQA is native (no repeat of K/V heads).

Importing flash_attn_cy never imports transformers (nor this module); transformers is imported by
``register_transformers()`` only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

from . import bert_padding, interface, kvcache  # modules, not the package: the package imports this one

__all__ = ["ATTN_IMPLEMENTATION", "flash_attn_cy_attention_forward", "register_transformers"]

#: The name to pass as ``attn_implementation``.
ATTN_IMPLEMENTATION = "flash_attn_cy"

_logger = logging.getLogger(__name__)


def _window(sliding_window: Optional[int], kv_len: int) -> tuple[int, int]:
    """flash_attn window for transformers' ``sliding_window`` (the number of keys a query sees, itself included)."""
    if sliding_window is None or sliding_window <= 0 or kv_len <= sliding_window:
        return (-1, -1)
    return (int(sliding_window) - 1, int(sliding_window) - 1)


def _unpad_qkv(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Pack q/k/v ([b, s, h, d]) by a (b, kv_len) padding mask; returns the packed tensors, the query row indices,
    cu_seqlens_q/k and max_seqlen_q/k."""
    q_len = query.shape[1]
    kv_mask = attention_mask.to(torch.bool)
    k_packed, indices_k, cu_k, max_k, _ = bert_padding.unpad_input(key, kv_mask)
    v_packed = bert_padding.index_first_axis(value.reshape(-1, *value.shape[2:]), indices_k)
    if q_len == key.shape[1]:
        q_packed = bert_padding.index_first_axis(query.reshape(-1, *query.shape[2:]), indices_k)
        return q_packed, k_packed, v_packed, indices_k, cu_k, cu_k, max_k, max_k
    # Fewer queries than keys (decode or chunked prefill on top of a cache): the queries are the LAST q_len
    # positions of each row, so their validity is the right end of the mask (left padding).
    q_mask = kv_mask[:, -q_len:]
    q_packed, indices_q, cu_q, max_q, _ = bert_padding.unpad_input(query, q_mask)
    return q_packed, k_packed, v_packed, indices_q, cu_q, cu_k, max_q, max_k


def _left_padding(attention_mask: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-row count of leading pad positions (int32) if every row of the (batch, kv_len) mask is pads followed
    only by tokens (left padding, what ``generate()`` builds), else None."""
    valid = attention_mask.to(torch.bool)
    # left padding <=> each row is non-decreasing (0...0 1...1)
    if bool((valid[:, 1:].to(torch.int8) < valid[:, :-1].to(torch.int8)).any()):
        return None
    return (valid.shape[1] - valid.sum(dim=1)).to(torch.int32)


def _packed_cu_seqlens(position_ids: Optional[torch.Tensor], batch: int, q_len: int, kv_len: int):
    """(cu_seqlens int32, max_seqlen) when ``position_ids`` describe several sequences packed into one row
    (padding-free batching: positions restart), else None. A new sequence starts wherever a position is not its
    predecessor + 1 (the rule transformers' mask builder uses, so eager attention sees the same blocks)."""
    if position_ids is None or batch != 1 or q_len != kv_len or q_len <= 1:
        return None
    pos = position_ids.reshape(-1)
    if pos.numel() != q_len:
        return None
    starts = torch.ones(q_len, dtype=torch.bool, device=pos.device)
    starts[1:] = pos[1:] != pos[:-1] + 1
    start_idx = torch.nonzero(starts, as_tuple=False).flatten()
    if start_idx.numel() <= 1:
        return None
    cu = torch.cat([start_idx, torch.tensor([q_len], device=pos.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max().item())


def flash_attn_cy_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    is_causal: Optional[bool] = None,
    s_aux: Optional[torch.Tensor] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function backed by flash_attn_cy (see the module docstring).

    Args:
        module: the attention module (its ``is_causal`` is used when ``is_causal`` is None).
        query: (batch, heads, q_len, head_dim); key/value: (batch, kv_heads, kv_len, head_dim).
        attention_mask: None or the 2-D (batch, >= kv_len) padding mask built by the flash mask function.
        dropout: attention dropout probability (models pass 0.0 in eval mode).
        scaling: softmax scale; None means head_dim ** -0.5.
        sliding_window: keys visible to each query, itself included; None for full attention.
        softcap: tanh soft-capping of the scores (Gemma 2), None or 0 for none.
    Returns:
        (attn_output of shape (batch, q_len, heads, head_dim), None).
    """
    if kwargs.get("output_attentions", False):
        _logger.warning("flash_attn_cy does not return attention weights (output_attentions=True); returning None")
    if s_aux is not None:
        raise NotImplementedError(
            "attn_implementation='flash_attn_cy' does not support attention sinks (s_aux); use 'eager' for this model"
        )
    if attention_mask is not None and attention_mask.ndim != 2:
        raise ValueError(
            "attn_implementation='flash_attn_cy' expects a 2-D (batch, seq) padding mask or None, got a "
            f"{attention_mask.ndim}-D mask of shape {tuple(attention_mask.shape)}; custom 4-D masks are not supported"
        )
    if any(dim == 0 for dim in query.shape):
        raise ValueError(f"query has a zero-sized dimension {tuple(query.shape)}; flash attention needs non-empty inputs")

    causal = bool(module.is_causal if is_causal is None else is_causal)
    # Attention-interface layout is [batch, heads, seq, dim]; flash_attn's is [batch, seq, heads, dim]. The
    # transposed views are strided, not copied: flash_attn_cy takes strided inputs.
    q = query.transpose(1, 2)
    k = key.transpose(1, 2)
    v = value.transpose(1, 2)
    head_dim, v_head_dim = q.shape[-1], v.shape[-1]
    if v_head_dim != head_dim:  # e.g. MLA: pad V up to the query head dim, crop the output afterwards
        v = torch.nn.functional.pad(v, [0, head_dim - v_head_dim])

    flash_kwargs: dict[str, Any] = dict(
        dropout_p=float(dropout or 0.0),
        softmax_scale=scaling,
        causal=causal,
        window_size=_window(sliding_window, k.shape[1]),
        softcap=float(softcap) if softcap else 0.0,
    )

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    if attention_mask is not None:
        if k.shape[1] > attention_mask.shape[-1]:
            # A static cache is longer than the tokens seen so far: only the first mask-length rows are real.
            k, v = k[:, : attention_mask.shape[-1]], v[:, : attention_mask.shape[-1]]
        elif k.shape[1] < attention_mask.shape[-1]:
            attention_mask = attention_mask[:, -k.shape[1] :]
        batch, q_len = q.shape[0], q.shape[1]
        leftpad = _left_padding(attention_mask) if q_len < k.shape[1] and not flash_kwargs["dropout_p"] else None
        if leftpad is not None:
            # Decode (or a chunk) on top of a left-padded cache: read the cache where it lies, skipping each row's
            # leading pads, instead of packing the whole cache again in every layer at every step.
            cache_seqlens = torch.full((batch,), k.shape[1], dtype=torch.int32, device=k.device)
            kv_kwargs = {key: val for key, val in flash_kwargs.items() if key != "dropout_p"}
            out = kvcache.flash_attn_with_kvcache(q, k, v, cache_seqlens=cache_seqlens, cache_leftpad=leftpad,
                                             **kv_kwargs)
        else:
            qp, kp, vp, indices_q, cu_q, cu_k, max_q, max_k = _unpad_qkv(q, k, v, attention_mask)
            out = interface.flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, max_q, max_k, **flash_kwargs)
            out = bert_padding.pad_input(out, indices_q, batch, q_len)
    elif all(x is not None for x in (cu_q, cu_k, max_q, max_k)):
        batch = q.shape[0]
        qp, kp, vp = (x.reshape(-1, *x.shape[2:]) for x in (q, k, v))
        out = interface.flash_attn_varlen_func(
            qp, kp, vp, cu_q.to(torch.int32), cu_k.to(torch.int32), int(max_q), int(max_k), **flash_kwargs
        )
        out = out.view(batch, -1, *out.shape[-2:])
    elif (packed := _packed_cu_seqlens(kwargs.get("position_ids"), q.shape[0], q.shape[1], k.shape[1])) is not None:
        cu, max_len = packed
        out = interface.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, max_len, max_len, **flash_kwargs).unsqueeze(0)
    else:
        out = interface.flash_attn_func(q, k, v, **flash_kwargs)

    if v_head_dim != head_dim:
        out = out[..., :v_head_dim]
    return out, None


def _make_lazy_imports_hook(original: Callable[..., Any], with_kvcache: bool) -> Callable[..., Any]:
    """Wrap transformers' ``_lazy_imports`` so that asking it for "flash_attn_cy" returns our functions.

    transformers (5.x) treats every implementation whose name contains "flash" as a flash_attn package and, when
    a model is created with it, imports its functions through ``lazy_import_flash_attention(name)``; for names it
    does not know it would try to download a kernel from the Hub and fail. This answers with flash_attn_cy's
    flash_attn-compatible functions instead, so transformers' own flash machinery (padding-free paths, continuous
    batching helpers) also gets working functions.
    """
    if getattr(original, "_flash_attn_cy_hook", False):
        return original

    def _lazy_imports(implementation: Optional[str], *args: Any, **kwargs: Any) -> Any:
        if implementation != ATTN_IMPLEMENTATION:
            return original(implementation, *args, **kwargs)
        from .flash_attn_compat import flash_attn_interface as fai

        if with_kvcache:  # transformers >= 5: (func, varlen, with_kvcache, pad, unpad)
            return (
                fai.flash_attn_func,
                fai.flash_attn_varlen_func,
                fai.flash_attn_with_kvcache,
                bert_padding.pad_input,
                bert_padding.unpad_input,
            )
        return (fai.flash_attn_func, fai.flash_attn_varlen_func, bert_padding.pad_input, bert_padding.unpad_input)

    _lazy_imports._flash_attn_cy_hook = True  # type: ignore[attr-defined]
    _lazy_imports.__wrapped__ = original  # type: ignore[attr-defined]
    return _lazy_imports


def register_transformers() -> str:
    """Register flash_attn_cy with transformers so ``from_pretrained(..., attn_implementation="flash_attn_cy")``
    (or ``model.set_attn_implementation("flash_attn_cy")``) uses it. Idempotent; returns the name.

    Raises:
        ImportError: transformers is not installed or too old to have ``AttentionInterface``.
    """
    try:
        from transformers import AttentionInterface
    except ImportError as exc:
        raise ImportError(
            "flash_attn_cy.register_transformers() needs transformers with AttentionInterface (tested: 5.23.0); "
            "install it with `pip install transformers`"
        ) from exc
    name = ATTN_IMPLEMENTATION
    AttentionInterface.register(name, flash_attn_cy_attention_forward)

    # The mask builder decides what `attention_mask` the attention function gets. An implementation missing from
    # AttentionMaskInterface receives NO mask at all (padding would silently be ignored), so register the
    # flash-attention one: it yields None without padding and the 2-D padding mask otherwise.
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # older transformers build masks per model from the implementation name (untested)
        pass
    else:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])

    try:
        from transformers import modeling_flash_attention_utils as mfau
    except ImportError:
        mfau = None
    if mfau is not None and hasattr(mfau, "_lazy_imports"):
        with_kvcache = hasattr(mfau, "_flash_with_kvcache_fn")
        mfau._lazy_imports = _make_lazy_imports_hook(mfau._lazy_imports, with_kvcache)
    return name
