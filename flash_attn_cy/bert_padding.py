"""Padding helpers for variable-length attention, with flash_attn 2.x's ``flash_attn.bert_padding`` API.

Model code that batches sequences of different lengths keeps a padded ``(batch, seqlen, ...)`` tensor plus a
``(batch, seqlen)`` mask; the varlen attention functions want the valid rows packed into ``(total, ...)`` plus
``cu_seqlens``. These helpers convert between the two. They are plain PyTorch ops (so autograd and every device
PyTorch supports work), with the argument names, return arity and dtypes of flash_attn 2.8:

- ``unpad_input(hidden_states, attention_mask, unused_mask=None)`` returns five values
  ``(hidden_states, indices, cu_seqlens, max_seqlen_in_batch, seqused)``;
- ``cu_seqlens`` and ``seqused`` are int32, ``indices`` int64, ``max_seqlen_in_batch`` a Python int.

Importing this module imports torch; ``import flash_attn_cy`` does not import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "index_first_axis",
    "index_put_first_axis",
    "pad_input",
    "unpad_input",
    "unpad_input_for_concatenated_sequences",
]


def _check_indices(indices: torch.Tensor, rows: int, rows_name: str, name: str = "indices") -> None:
    """1-D integer indices, each in [0, rows): torch's own out-of-range error would name no argument."""
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer indices, got {type(indices).__name__}")
    if indices.ndim != 1:
        raise ValueError(f"{name} must be 1-D (total_nnz,), got shape {tuple(indices.shape)}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= rows):
        raise ValueError(f"{name} must be in [0, {rows}) ({rows_name}), got range [{int(indices.min())}, "
                         f"{int(indices.max())}]")


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``input[indices]`` of a tensor whose first axis is already flattened: ``(N, ...) -> (len(indices), ...)``.

    Differentiable; the gradient scatters back into zeros of ``input``'s shape.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise ValueError(f"input must have at least 2 dims (first_axis, ...), got shape {tuple(input.shape)}")
    _check_indices(indices, input.shape[0], "input.shape[0]")
    return input.index_select(0, indices.to(device=input.device, dtype=torch.long))


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """Scatter ``values`` (``(nnz, ...)``) into rows ``indices`` of zeros shaped ``(first_axis_dim, ...)``.

    Differentiable; the gradient of ``values`` gathers the same rows back.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.ndim < 2:
        raise ValueError(f"values must have at least 2 dims (nnz, ...), got shape {tuple(values.shape)}")
    first_axis_dim = int(first_axis_dim)
    if first_axis_dim < 0:
        raise ValueError(f"first_axis_dim must be >= 0, got {first_axis_dim}")
    _check_indices(indices, first_axis_dim, "first_axis_dim")
    if indices.shape[0] != values.shape[0]:
        raise ValueError(
            f"indices has {indices.shape[0]} entries but values has {values.shape[0]} rows; they must match"
        )
    output = values.new_zeros((first_axis_dim, *values.shape[1:]))
    return output.index_copy(0, indices.to(device=values.device, dtype=torch.long), values)


def _check_mask(mask: torch.Tensor, hidden_states: torch.Tensor, name: str) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a (batch, seqlen) torch.Tensor, got {type(mask).__name__}")
    if mask.ndim != 2 or hidden_states.ndim < 2 or tuple(mask.shape) != tuple(hidden_states.shape[:2]):
        raise ValueError(
            f"{name} must have shape (batch, seqlen) = {tuple(hidden_states.shape[:2])} matching hidden_states "
            f"{tuple(hidden_states.shape)}, got {tuple(mask.shape)}"
        )


def unpad_input(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    unused_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Pack the valid rows of a padded batch (flash_attn 2.8 semantics).

    Arguments:
        hidden_states: (batch, seqlen, ...).
        attention_mask: (batch, seqlen), bool or int; 1 marks a valid token, 0 padding.
        unused_mask: optional (batch, seqlen), 1 marks a row that is allocated but unused: it is kept in the packed
            output and counted in ``cu_seqlens`` but not in ``seqused``.
    Returns:
        hidden_states: (total_nnz, ...) rows selected by ``attention_mask + unused_mask``, in row-major order.
        indices: (total_nnz,) int64 positions of those rows in the flattened ``(batch * seqlen)`` input.
        cu_seqlens: (batch + 1,) int32 cumulative sequence lengths, starting at 0.
        max_seqlen_in_batch: int.
        seqused: (batch,) int32 number of tokens selected by ``attention_mask`` alone.
    """
    if not isinstance(hidden_states, torch.Tensor):
        raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    _check_mask(attention_mask, hidden_states, "attention_mask")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        # a 0.5 would be selected by nonzero() but counted as 0 in cu_seqlens: refuse it, not a torn packing
        raise ValueError("attention_mask must hold 0/1 (or bool) values")
    all_masks = attention_mask
    if unused_mask is not None:
        _check_mask(unused_mask, hidden_states, "unused_mask")
        if bool(((unused_mask != 0) & (unused_mask != 1)).any()):
            raise ValueError("unused_mask must hold 0/1 (or bool) values")
        all_masks = attention_mask.to(torch.int32) + unused_mask.to(torch.int32)
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen_in_batch, used_seqlens_in_batch


def unpad_input_for_concatenated_sequences(
    hidden_states: torch.Tensor, attention_mask_in_length: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pack rows when each batch row holds several short sequences back to back (flash_attn 2.x semantics).

    ``attention_mask_in_length`` is (batch, seqlen) int: row b lists the lengths of the sequences concatenated in
    ``hidden_states[b]`` followed by zeros, e.g. ``[2, 3, 0, 0, 0, 0]``. Every sequence becomes its own entry of
    ``cu_seqlens``. Returns ``(hidden_states, indices, cu_seqlens, max_seqlen_in_batch)`` (four values, as upstream).
    """
    if not isinstance(hidden_states, torch.Tensor):
        raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    _check_mask(attention_mask_in_length, hidden_states, "attention_mask_in_length")
    lengths = attention_mask_in_length.to(torch.int64)
    if bool((lengths < 0).any()):
        raise ValueError("attention_mask_in_length must hold non-negative sequence lengths")
    seqlen = lengths.shape[-1]
    total_per_row = lengths.sum(dim=-1)
    if bool((total_per_row > seqlen).any()):
        raise ValueError(f"attention_mask_in_length rows must sum to at most seqlen={seqlen}")
    positions = torch.arange(seqlen, device=lengths.device).expand(lengths.shape[0], seqlen)
    valid_rows = positions < total_per_row.unsqueeze(1)
    flat_lengths = lengths.flatten()
    seqlens_in_batch = flat_lengths[flat_lengths != 0].to(torch.int32)
    indices = torch.nonzero(valid_rows.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen_in_batch


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: scatter packed rows ``(total_nnz, ...)`` back to ``(batch, seqlen, ...)``.

    Rows not listed in ``indices`` are zero.
    """
    batch, seqlen = int(batch), int(seqlen)
    if batch < 0 or seqlen < 0:
        raise ValueError(f"batch and seqlen must be >= 0, got batch={batch}, seqlen={seqlen}")
    if not isinstance(hidden_states, torch.Tensor):
        raise TypeError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    if hidden_states.ndim < 2:
        raise ValueError(f"hidden_states must be (total_nnz, ...) with at least 2 dims, got shape "
                         f"{tuple(hidden_states.shape)}")
    _check_indices(indices, batch * seqlen, "batch * seqlen")
    output = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return output.view(batch, seqlen, *hidden_states.shape[1:])
