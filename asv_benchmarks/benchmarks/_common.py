"""Shared pieces of the asv suite: which implementations exist here, input construction, FLOP/byte counts.

An "implementation" is one axis value of most benchmarks: a flash_attn_cy backend ("cpu", "metal") or a library
measured beside it in the same run ("torch-sdpa-cpu", "torch-sdpa-mps", "mlx"). Only what this machine can run is
listed, so result files from different machines differ in that axis. A baseline that cannot serve a combination
raises NotImplementedError in setup, which asv records as "n/a"; our own backends never do: anything broken there
fails the benchmark.

Environment knob: FLASH_ATTN_CY_ASV_BACKENDS, a comma-separated list overriding the implementations to measure.
The "sim" backend (the Metal simulator, a correctness tool orders of magnitude slower than the CPU backend) is not
in the default list: bench_simulator.py gives it its own tiny shapes.

asv starts a fresh interpreter for every parameter combination (its default "spawn" launch method), so this module
only *looks* for torch and MLX (importlib.util.find_spec) instead of importing them: a benchmark of our CPU backend
then never pays for `import torch` (seconds of start-up per process, hundreds of processes in a run).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import platform
import time
from typing import Callable, List, Sequence

import numpy as np

BASELINES = ("torch-sdpa-cpu", "torch-sdpa-mps", "mlx")
SLOW_BY_DESIGN = ("sim",)


def our_backends() -> List[str]:
    """flash_attn_cy backends usable here, in flash_attn_cy.backends() order, the simulator excluded."""
    import flash_attn_cy

    return [name for name, info in flash_attn_cy.backends().items()
            if info["available"] and name not in SLOW_BY_DESIGN]


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def baselines() -> List[str]:
    """Libraries measured beside ours. MPS can only exist on macOS, where torch is imported to ask for it."""
    found = []
    if _has_module("torch"):
        found.append("torch-sdpa-cpu")
        if platform.system() == "Darwin":
            import torch

            if torch.backends.mps.is_available():
                found.append("torch-sdpa-mps")
    if _has_module("mlx") and _has_module("mlx.core"):
        found.append("mlx")
    return found


def _override() -> List[str]:
    raw = os.environ.get("FLASH_ATTN_CY_ASV_BACKENDS", "")
    return [x.strip() for x in raw.split(",") if x.strip()]


def implementations() -> List[str]:
    """Implementations measured on this machine (flash_attn_cy backends first, then the baselines)."""
    return _override() or our_backends() + baselines()


def our_implementations() -> List[str]:
    """Only flash_attn_cy backends: for features no baseline has (sliding window)."""
    return [x for x in implementations() if not is_baseline(x)]


def is_baseline(impl: str) -> bool:
    return impl in BASELINES


def require_torch_baseline(impl: str) -> None:
    """Baselines are optional comparisons: a missing library or device is n/a, not a failure."""
    if impl.startswith("torch-sdpa") and not _has_module("torch"):
        raise NotImplementedError("torch is not installed")
    if impl == "torch-sdpa-mps":
        import torch

        if not torch.backends.mps.is_available():
            raise NotImplementedError("torch MPS is not available")
    if impl == "mlx" and not _has_module("mlx.core"):
        raise NotImplementedError("mlx is not installed")


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def numpy_dtype(name: str):
    if name == "bf16":
        import ml_dtypes  # a dependency of the suite (asv.conf.json matrix): missing it is an error, not n/a

        return np.dtype(ml_dtypes.bfloat16)
    return {"fp16": np.dtype(np.float16), "fp32": np.dtype(np.float32)}[name]


def torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def randn(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(numpy_dtype(dtype))


def random_arrays(shapes: Sequence[tuple], dtype: str, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    return tuple(randn(rng, shape, dtype) for shape in shapes)


def _metal_inputs(arrays, dtype: str) -> list:
    """The Metal backend is timed the way a PyTorch user calls it (MPS tensors, no host copies), when torch has
    MPS; otherwise on NumPy arrays."""
    if not (_has_module("torch") and platform.system() == "Darwin"):
        return list(arrays)
    import torch

    if not torch.backends.mps.is_available():
        return list(arrays)
    return [torch.from_numpy(a.astype(np.float32)).to("mps", torch_dtype(dtype)) for a in arrays]


def convert(impl: str, arrays: Sequence[np.ndarray], dtype: str) -> tuple:
    """Move flash-layout NumPy arrays to what ``impl`` consumes."""
    require_torch_baseline(impl)
    if impl == "metal":
        return tuple(_metal_inputs(arrays, dtype))
    if impl in ("torch-sdpa-cpu", "torch-sdpa-mps"):
        import torch

        device = "mps" if impl.endswith("mps") else "cpu"
        # SDPA layout is [batch, heads, seq, dim]; made contiguous once here, outside the timed region.
        return tuple(torch.from_numpy(a.astype(np.float32)).to(device, torch_dtype(dtype)).transpose(1, 2)
                     .contiguous() for a in arrays)
    if impl == "mlx":
        import mlx.core as mx

        mdt = {"fp16": mx.float16, "bf16": mx.bfloat16, "fp32": mx.float32}[dtype]
        return tuple(mx.array(a.astype(np.float32).transpose(0, 2, 1, 3)).astype(mdt) for a in arrays)
    return tuple(arrays)


@functools.lru_cache(maxsize=1)
def inputs(impl: str, shapes: tuple, dtype: str, seed: int) -> tuple:
    """Random flash-layout inputs for ``impl``, memoised: asv re-runs setup() before every timing sample, and
    generating a 64k-token cache each time would cost more than the attention being timed. The benchmarks only
    read them."""
    return convert(impl, random_arrays(shapes, dtype, seed), dtype)


def synchronize(impl: str) -> None:
    """Wait for queued GPU work so that timings include it."""
    if impl in ("metal", "torch-sdpa-mps") and _has_module("torch") and platform.system() == "Darwin":
        import torch

        if torch.backends.mps.is_available():
            torch.mps.synchronize()


def attention_call(impl: str, q, k, v, *, causal: bool, window: tuple = (-1, -1)) -> Callable[[], object]:
    """A no-argument callable running one forward of ``impl`` on inputs from :func:`inputs` or :func:`convert`."""
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


_warm = set()


def warm_up(impl: str, dtype: str, headdim: int = 64) -> None:
    """Run one tiny forward of ``impl`` once per process, so that one-time costs (thread pools, lazy library
    initialisation, GPU pipeline compilation) stay out of the first timed call: `asv run --quick` times exactly
    one call per benchmark."""
    key = (impl, dtype, headdim)
    if key in _warm:
        return
    q, k, v = random_arrays([(1, 64, 2, headdim)] * 3, dtype, 0)
    q, k, v = convert(impl, (q, k, v), dtype)
    attention_call(impl, q, k, v, causal=True)()
    synchronize(impl)
    _warm.add(key)


# ---------------------------------------------------------------------------------------------------------------
# Work counts and rates
# ---------------------------------------------------------------------------------------------------------------

def visible_pairs(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple = (-1, -1)) -> int:
    """Number of (query, key) pairs attended (bottom-right aligned masks, flash_attn semantics)."""
    left, right = window
    if causal:
        right = 0
    if left < 0 and right < 0:
        return seqlen_q * seqlen_k
    i = np.arange(seqlen_q, dtype=np.int64) + (seqlen_k - seqlen_q)
    lo = np.zeros_like(i) if left < 0 else np.maximum(0, i - left)
    hi = np.full_like(i, seqlen_k - 1) if right < 0 else np.minimum(seqlen_k - 1, i + right)
    return int(np.maximum(0, hi - lo + 1).sum())


def forward_flops(batch: int, nheads: int, headdim: int, pairs: int) -> float:
    """FLOPs of the two matrix products of the forward (2 per multiply-add): S = QK^T and O = PV."""
    return 4.0 * batch * nheads * headdim * pairs


def best_time(fn: Callable[[], object], impl: str, budget: float = 0.3, max_calls: int = 5) -> float:
    """Best wall time of ``fn`` (GPU work included) for the track_* rates: calls repeat until ``budget`` seconds
    have been spent (at most ``max_calls``); a single call longer than the budget is reported as it is, since
    :func:`warm_up` already took the one-time costs out of it. Bounded so that `asv run --quick` stays short."""
    best, spent, calls = float("inf"), 0.0, 0
    while calls < max_calls and (calls == 0 or spent < budget):
        t0 = time.perf_counter()
        fn()
        synchronize(impl)
        dt = time.perf_counter() - t0
        best, spent, calls = min(best, dt), spent + dt, calls + 1
    return best
