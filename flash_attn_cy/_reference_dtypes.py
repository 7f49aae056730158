"""Float dtype helpers of the reference implementations (flash_attn_cy.reference): widening any array or tensor to
float64, rounding to a low-precision dtype the way the low-precision reference does, and naming compute dtypes."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

ArrayLike = Any


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _is_low_precision(dtype: np.dtype) -> bool:
    return dtype != np.dtype(np.float64)


def to_float64(x: ArrayLike, name: Optional[str] = None) -> np.ndarray:
    """Any array-like (NumPy of any float dtype incl. ml_dtypes.bfloat16, PyTorch CPU/MPS tensor) as a float64 array.
    None stays None unless `name` is given (a required argument): then None, or anything that is not numbers, is a
    TypeError naming it."""
    if x is None:
        if name is not None:
            raise TypeError(f"{name}: expected a float array or tensor, got None")
        return None
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.double().numpy()
    try:
        return np.asarray(x).astype(np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name or 'input'}: expected a float array or tensor, got {type(x).__name__} ({e})") from None


def round_to(x: np.ndarray, dtype) -> np.ndarray:
    """Round float values to ``dtype`` and return them widened to float32 (float64 stays float64).

    This is how the low-precision reference keeps every intermediate representable in the input dtype while doing
    arithmetic in float32 (the accumulation precision of flash-attention's kernels and of PyTorch's half matmuls).
    """
    dtype = np.dtype(dtype)
    if dtype == np.dtype(np.float64):
        return np.asarray(x, dtype=np.float64)
    return np.asarray(x).astype(dtype).astype(np.float32)


def _normalise_compute_dtype(compute_dtype) -> np.dtype:
    if isinstance(compute_dtype, str):
        names = {"fp64": np.float64, "float64": np.float64, "fp32": np.float32, "float32": np.float32,
                 "fp16": np.float16, "float16": np.float16}
        if compute_dtype in ("bf16", "bfloat16"):
            bf = _bfloat16()
            if bf is None:
                raise ImportError("compute_dtype='bfloat16' needs the ml_dtypes package")
            return bf
        if compute_dtype not in names:
            raise ValueError(f"compute_dtype: unknown dtype name {compute_dtype!r}")
        return np.dtype(names[compute_dtype])
    dt = np.dtype(compute_dtype)
    allowed = {np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16)}
    bf = _bfloat16()
    if bf is not None:
        allowed.add(bf)
    if dt not in allowed:
        raise ValueError(f"compute_dtype: expected float64, float32, float16 or bfloat16, got {dt}")
    return dt
