"""Shared pieces of the asv suite: which implementations exist here, input construction, FLOP/byte counts.

An "implementation" is one axis value of every benchmark: a flash_attn_cy backend ("cpu", "metal", ...) or a
library measured beside it in the same run ("torch-sdpa-cpu", "torch-sdpa-mps", "mlx"). Only what this machine can
run is listed, so result files from different machines differ in that axis; combinations an implementation cannot
serve (e.g. a sliding window for SDPA) raise NotImplementedError in setup, which asv records as "n/a".

Environment knobs:
- FLASH_ATTN_CY_ASV_BACKENDS: comma-separated list overriding the implementations to measure. By default the
  "sim" backend (the Metal simulator, a correctness tool that is orders of magnitude slower) is left out.
"""
from __future__ import annotations

import importlib.util
import os
import time
from typing import Callable, List, Sequence

import numpy as np

BASELINES = ("torch-sdpa-cpu", "torch-sdpa-mps", "mlx")
SLOW_BY_DESIGN = ("sim",)


def _flash_attn_cy_backends() -> List[str]:
    """Names of the flash_attn_cy backends usable here (whatever form flash_attn_cy.backends() returns)."""
    try:
        import flash_attn_cy
    except ImportError:
        return []
    info = flash_attn_cy.backends()
    names = []
    items = info.items() if isinstance(info, dict) else ((getattr(x, "name", x), x) for x in info)
    for name, val in items:
        if isinstance(val, bool):
            ok = val
        elif isinstance(val, dict):
            ok = bool(val.get("available", True))
        elif isinstance(val, (tuple, list)) and val and isinstance(val[0], bool):
            ok = val[0]
        else:
            ok = bool(getattr(val, "available", True))
        if ok:
            names.append(str(name))
    return names


def _baselines() -> List[str]:
    found = []
    try:
        import torch

        found.append("torch-sdpa-cpu")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            found.append("torch-sdpa-mps")
    except ImportError:
        pass
    if importlib.util.find_spec("mlx") is not None and importlib.util.find_spec("mlx.core") is not None:
        found.append("mlx")
    return found


def implementations() -> List[str]:
    """Implementations measured on this machine (flash_attn_cy backends first, then the baselines)."""
    override = os.environ.get("FLASH_ATTN_CY_ASV_BACKENDS")
    if override:
        return [x.strip() for x in override.split(",") if x.strip()]
    ours = [b for b in _flash_attn_cy_backends() if b not in SLOW_BY_DESIGN]
    return ours + _baselines()


def is_baseline(impl: str) -> bool:
    return impl in BASELINES


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def numpy_dtype(name: str):
    if name == "bf16":
        try:
            import ml_dtypes
        except ImportError:
            raise NotImplementedError("bf16 NumPy inputs need ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32)}[name]


def torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def randn(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(numpy_dtype(dtype))


def to_impl(arrays: Sequence[np.ndarray], impl: str, dtype: str) -> list:
    """Move flash-layout NumPy arrays to what ``impl`` consumes (ours: NumPy on CPU, MPS tensors on Metal)."""
    if impl == "metal":
        import torch

        if not torch.backends.mps.is_available():
            raise NotImplementedError("metal benchmarks pass MPS tensors; torch MPS is not available")
        return [torch.from_numpy(a.astype(np.float32)).to("mps", torch_dtype(dtype)) for a in arrays]
    if impl in ("torch-sdpa-cpu", "torch-sdpa-mps"):
        import torch

        device = "mps" if impl.endswith("mps") else "cpu"
        # SDPA layout is [batch, heads, seq, dim]; made contiguous once here, outside the timed region.
        return [torch.from_numpy(a.astype(np.float32)).to(device, torch_dtype(dtype)).transpose(1, 2).contiguous()
                for a in arrays]
    if impl == "mlx":
        import mlx.core as mx

        mdt = {"fp16": mx.float16, "bf16": mx.bfloat16, "fp32": mx.float32}[dtype]
        return [mx.array(a.astype(np.float32).transpose(0, 2, 1, 3)).astype(mdt) for a in arrays]
    return list(arrays)


def synchronize(impl: str) -> None:
    """Wait for queued GPU work so that timings include it."""
    if impl in ("metal", "torch-sdpa-mps"):
        import torch

        torch.mps.synchronize()


def attention_call(impl: str, q, k, v, *, causal: bool, window: tuple = (-1, -1)) -> Callable[[], object]:
    """A no-argument callable running one forward of ``impl`` on prepared inputs (see :func:`to_impl`)."""
    if impl in ("torch-sdpa-cpu", "torch-sdpa-mps"):
        import torch
        import torch.nn.functional as F

        if window != (-1, -1):
            raise NotImplementedError("scaled_dot_product_attention has no sliding window")
        gqa = q.shape[1] != k.shape[1]

        def run():
            with torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)

        return run
    if impl == "mlx":
        import mlx.core as mx

        if window != (-1, -1):
            raise NotImplementedError("mlx.core.fast.scaled_dot_product_attention has no sliding window")
        scale = q.shape[-1] ** -0.5

        def run():
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal" if causal else None)
            mx.eval(out)
            return out

        return run
    import flash_attn_cy

    def run():
        return flash_attn_cy.flash_attn_func(q, k, v, causal=causal, window_size=window, backend=impl)

    return run


# ---------------------------------------------------------------------------------------------------------------
# Work counts
# ---------------------------------------------------------------------------------------------------------------

def visible_pairs(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple = (-1, -1)) -> int:
    """Number of (query, key) pairs attended (bottom-right aligned masks, flash_attn semantics)."""
    left, right = window
    if causal:
        right = 0
    total = 0
    offset = seqlen_k - seqlen_q
    if left < 0 and right < 0:
        return seqlen_q * seqlen_k
    for i in range(seqlen_q):
        lo = 0 if left < 0 else max(0, i + offset - left)
        hi = seqlen_k - 1 if right < 0 else min(seqlen_k - 1, i + offset + right)
        total += max(0, hi - lo + 1)
    return total


def forward_flops(batch: int, nheads: int, headdim: int, pairs: int) -> float:
    """FLOPs of the two matrix products of the forward (2 per multiply-add): S = QK^T and O = PV."""
    return 4.0 * batch * nheads * headdim * pairs


def best_time(fn: Callable[[], object], impl: str, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` runs after one warm-up run (thread pools, pipeline caches, lazy imports), GPU
    work included. Kept at 1 by the suite so `asv run --quick` stays short; the time_* benchmarks carry asv's
    full statistics."""
    fn()
    synchronize(impl)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        synchronize(impl)
        best = min(best, time.perf_counter() - t0)
    return best
