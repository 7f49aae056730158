"""Where the dropout RNG state comes from.

The kernels draw their dropout mask from Philox4x32-10 keyed by a (seed, offset) pair (kernels/fa_philox.h), as
flash_attn does with PyTorch's Philox generator state. This module picks that pair:
- an explicit `seed=` keyword wins: an int (offset 0) or a (seed, offset) pair;
- otherwise, for PyTorch inputs, two 64-bit values drawn from torch's default generator, so `torch.manual_seed`
  makes dropout reproducible exactly as it does for flash_attn;
- otherwise NumPy's global RNG (`np.random.seed` makes it reproducible).
A backward regenerates the same mask from the pair the forward used (`rng_pair`): it is never stored.
"""
from __future__ import annotations

import numbers
import sys
from typing import Any, Tuple

import numpy as np

from . import _arrays

__all__ = ["philox_state", "rng_pair"]

_U64 = (1 << 64) - 1


def _as_u64(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    v = int(v)
    # torch.manual_seed's range: negative seeds wrap modulo 2**64, anything outside 64 bits is an error
    if not -(1 << 63) <= v <= _U64:
        raise ValueError(f"{name}: expected an integer in [-2**63, 2**64 - 1], got {v}")
    return v & _U64


def philox_state(kind: str, seed: Any = None) -> Tuple[int, int]:
    """The (seed, offset) pair for one dropout call; `kind` is the caller's array kind ('numpy', 'torch', 'mps')."""
    if seed is not None:
        if isinstance(seed, tuple) and len(seed) == 2:
            return _as_u64(seed[0], "seed[0]"), _as_u64(seed[1], "seed[1]")
        if isinstance(seed, np.random.Generator):
            s, o = seed.integers(0, 1 << 63, size=2, dtype=np.int64)
            return int(s), int(o)
        if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
            return _as_u64(seed, "seed"), 0
        raise TypeError("seed: expected None, an int, a (seed, offset) pair of ints or a numpy.random.Generator, "
                        f"got {type(seed).__name__}")
    if kind in ("torch", "mps"):
        torch = sys.modules["torch"]
        pair = torch.randint(-(1 << 63), (1 << 63) - 1, (2,), dtype=torch.int64)  # default CPU generator
        return int(pair[0]) & _U64, int(pair[1]) & _U64
    s, o = np.random.randint(0, (1 << 63) - 1, size=2, dtype=np.int64)
    return int(s), int(o)


def rng_pair(seed: Any = None, rng_state: Any = None) -> Tuple[int, int]:
    """The (seed, offset) pair the forward drew its dropout mask with, as a backward is given it.

    ``seed``: an int (offset 0) or a (seed, offset) pair; ``rng_state``: a 2-element integer array/tensor holding
    (seed, offset) as the forward returned it (64-bit values stored as int64 wrap around).
    """
    if rng_state is not None:
        if seed is not None:
            raise ValueError("seed and rng_state: give one of them, not both")
        a = rng_state.detach().cpu().numpy() if _arrays.is_torch(rng_state) else np.asarray(rng_state)
        if a.dtype.kind not in "iu" or a.shape != (2,):
            raise ValueError(f"rng_state: expected 2 integers (seed, offset), got shape {a.shape} dtype {a.dtype}")
        return int(a[0]) & _U64, int(a[1]) & _U64
    if isinstance(seed, tuple) and len(seed) == 2:
        vals = seed
    elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        vals = (seed, 0)
    else:
        raise TypeError("seed: with dropout_p > 0 the backward needs the forward's seed: an int or a "
                        f"(seed, offset) pair of ints (or rng_state=), got {type(seed).__name__}")
    for v, name in zip(vals, ("seed", "offset")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return int(vals[0]) & _U64, int(vals[1]) & _U64
