"""``flash_attn.layers.rotary`` served by flash_attn_cy: rotary position embedding in plain PyTorch.

flash_attn implements these with a Triton kernel (CUDA only). Here they are PyTorch tensor ops computed in fp32 and
cast back, so they run on every device and autograd differentiates them. Names, arguments and return values follow
flash_attn 2.8.3: ``apply_rotary_emb`` (+ its alias ``apply_rotary_emb_func``), ``apply_rotary_emb_qkv_`` and
``apply_rotary_emb_kv_`` (in place). The ``RotaryEmbedding`` module is not provided.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["apply_rotary_emb", "apply_rotary_emb_func", "apply_rotary_emb_kv_", "apply_rotary_emb_qkv_"]


def _positions(
    x: Tensor, seqlen_offsets: Union[int, Tensor], cu_seqlens: Optional[Tensor]
) -> Tensor:
    """Rotary position of every token: shape (batch, seqlen) for dense x, (total,) for packed x."""
    device = x.device
    if cu_seqlens is None:
        batch, seqlen = x.shape[0], x.shape[1]
        pos = torch.arange(seqlen, device=device).unsqueeze(0).expand(batch, seqlen)
        if isinstance(seqlen_offsets, Tensor):
            if seqlen_offsets.shape != (batch,):
                raise ValueError(f"seqlen_offsets must be an int or shape ({batch},), got {tuple(seqlen_offsets.shape)}")
            return pos + seqlen_offsets.to(device=device, dtype=torch.long).unsqueeze(1)
        return pos + int(seqlen_offsets)
    total = x.shape[0]
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    if cu.ndim != 1 or cu.numel() < 1 or int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must be 1-D (batch + 1,) ending at total={total}")
    lengths = cu[1:] - cu[:-1]
    seq_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    pos = torch.arange(total, device=device) - cu[:-1][seq_of_token]
    if isinstance(seqlen_offsets, Tensor):
        return pos + seqlen_offsets.to(device=device, dtype=torch.long)[seq_of_token]
    return pos + int(seqlen_offsets)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, interleaved: bool, conjugate: bool = False) -> Tensor:
    """Rotated first ``rotary_dim`` features of x (heads on axis -2), other features unchanged; dtype of x."""
    if cos.ndim != 2 or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must both be (seqlen_ro, rotary_dim / 2), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    half = cos.shape[1]
    rotary_dim = 2 * half
    if rotary_dim > x.shape[-1]:
        raise ValueError(f"rotary_dim = 2 * cos.shape[1] = {rotary_dim} must be <= headdim = {x.shape[-1]}")
    if pos.numel() and int(pos.max()) >= cos.shape[0]:
        raise ValueError(f"rotary positions reach {int(pos.max())} but cos/sin only have {cos.shape[0]} rows")
    c = cos.to(device=x.device, dtype=torch.float32)[pos].unsqueeze(-2)  # (..., 1, half)
    s = sin.to(device=x.device, dtype=torch.float32)[pos].unsqueeze(-2)
    if conjugate:
        s = -s
    xr = x[..., :rotary_dim].float()
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return torch.cat((rotated.to(x.dtype), x[..., rotary_dim:]), dim=-1)


def apply_rotary_emb(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    interleaved: bool = False,
    inplace: bool = False,
    seqlen_offsets: Union[int, Tensor] = 0,
    cu_seqlens: Optional[Tensor] = None,
    max_seqlen: Optional[int] = None,
) -> Tensor:
    """Rotary embedding on the first ``rotary_dim = 2 * cos.shape[1]`` features of x.

    Arguments:
        x: (batch, seqlen, nheads, headdim), or (total_seqlen, nheads, headdim) with ``cu_seqlens``.
        cos, sin: (seqlen_rotary, rotary_dim / 2).
        interleaved: rotate pairs (0, 1), (2, 3), ... (GPT-J) instead of halves (GPT-NeoX).
        inplace: write the result into x and return x.
        seqlen_offsets: int or (batch,) shift of every sequence's positions (KV-cache decoding).
        cu_seqlens: (batch + 1,) int32 for packed x. ``max_seqlen`` is accepted for compatibility and unused.
    """
    del max_seqlen  # only a launch-size hint for flash_attn's Triton kernel
    expected_ndim = 3 if cu_seqlens is not None else 4
    if x.ndim != expected_ndim:
        raise ValueError(f"x must have {expected_ndim} dims here, got shape {tuple(x.shape)}")
    out = _rotate(x, cos, sin, _positions(x, seqlen_offsets, cu_seqlens), interleaved)
    if inplace:
        x.copy_(out)
        return x
    return out


apply_rotary_emb_func = apply_rotary_emb


def apply_rotary_emb_qkv_(
    qkv: Tensor,
    cos: Tensor,
    sin: Tensor,
    cos_k: Optional[Tensor] = None,
    sin_k: Optional[Tensor] = None,
    interleaved: bool = False,
    seqlen_offsets: Union[int, Tensor] = 0,
    num_heads_q: Optional[int] = None,
) -> Tensor:
    """In-place rotary embedding on Q and K of a packed qkv: (batch, seqlen, 3, nheads, headdim), or
    (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim) with ``num_heads_q`` given (GQA/MQA). Returns qkv."""
    if qkv.ndim == 5:
        if qkv.shape[2] != 3:
            raise ValueError(f"qkv must be (batch, seqlen, 3, nheads, headdim), got {tuple(qkv.shape)}")
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    elif qkv.ndim == 4:
        if num_heads_q is None:
            raise ValueError("num_heads_q is required when qkv is (batch, seqlen, nheads_q + 2 * nheads_k, headdim)")
        num_heads_k = (qkv.shape[2] - num_heads_q) // 2
        if num_heads_k <= 0 or qkv.shape[2] != num_heads_q + 2 * num_heads_k:
            raise ValueError(f"qkv.shape[2]={qkv.shape[2]} is not num_heads_q={num_heads_q} + 2 * num_heads_k")
        q, k = qkv[:, :, :num_heads_q], qkv[:, :, num_heads_q : num_heads_q + num_heads_k]
    else:
        raise ValueError(f"qkv must have 4 or 5 dims, got shape {tuple(qkv.shape)}")
    pos = _positions(qkv, seqlen_offsets, None)
    q_new = _rotate(q, cos, sin, pos, interleaved)
    k_new = _rotate(k, cos if cos_k is None else cos_k, sin if sin_k is None else sin_k, pos, interleaved)
    q.copy_(q_new)
    k.copy_(k_new)
    return qkv


def apply_rotary_emb_kv_(
    kv: Tensor,
    cos: Tensor,
    sin: Tensor,
    interleaved: bool = False,
    seqlen_offsets: Union[int, Tensor] = 0,
) -> Tensor:
    """In-place rotary embedding on K of a packed kv (batch, seqlen, 2, nheads, headdim). Returns kv."""
    if kv.ndim != 5 or kv.shape[2] != 2:
        raise ValueError(f"kv must be (batch, seqlen, 2, nheads, headdim), got shape {tuple(kv.shape)}")
    k = kv[:, :, 0]
    k.copy_(_rotate(k, cos, sin, _positions(kv, seqlen_offsets, None), interleaved))
    return kv
