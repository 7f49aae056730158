"""S_dmask as flash_attn returns it (the drop-in's third value with ``return_attn_probs=True``). No torch import."""

from __future__ import annotations

from typing import Any


def _get_block_size_n(device: Any, head_dim: int, is_dropout: bool, is_causal: bool) -> int:
    """Width of the key blocks that share one scale in S_dmask. flash_attn's CUDA kernels scale S_dmask per block of
    keys (its value depends on the GPU); flash_attn_cy scales a whole row by one factor, so the whole row is one
    block: any seqlen_k fits (2**31 - 1). Tests that renormalise S_dmask block by block (flash_attn's own) use it."""
    return 2 ** 31 - 1


def _flash_scaled_s_dmask(probs: Any) -> Any:
    """flash_attn_cy's S_dmask (probabilities, dropped entries negated) scaled as flash_attn's kernel leaves it for
    one key block: exp(score - row max), i.e. the probabilities divided by the row's largest one (flash_attn documents
    S_dmask as "the output of softmax (possibly with different scaling)"); the sign still marks dropped entries."""
    if hasattr(probs, "detach"):  # torch
        probs = probs.detach()
        row_max = probs.abs().amax(dim=-1, keepdim=True)
        return probs / row_max.masked_fill(row_max == 0, 1.0)
    import numpy as np

    row_max = np.abs(probs).max(axis=-1, keepdims=True, initial=0.0)
    return probs / np.where(row_max == 0, 1.0, row_max).astype(probs.dtype)
