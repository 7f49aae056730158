"""``python -m flash_attn_cy bench``: time every backend present against PyTorch's scaled_dot_product_attention.

Both sides get the same values in their native layouts (ours: [batch, seqlen, heads, dim] NumPy arrays; PyTorch:
contiguous [batch, heads, seqlen, dim] tensors), run in the same process with the same number of threads. Each
timing is the median of repeated calls after a warm-up call, repeated until ``min_time`` seconds have been spent
(at least ``min_reps`` calls).

The sides of one shape (every backend, then each comparison) are timed in interleaved rounds rather than one after the
other, so that a slow phase of a shared or virtual machine (a core taken away for a second) lands on all of them
instead of deciding the ratio. Before each side's round the bench sleeps ``SETTLE_SECONDS``: an OpenMP runtime such
as PyTorch's keeps its idle worker threads spinning for milliseconds after a parallel region, and a side timed
inside that window would be measured while another library's threads still occupy its cores.

FLOP counts follow flash-attention's benchmarks: forward 4 * b * h * sq * sk * d (two matrix products), halved for
causal square attention; backward 2.5x the forward. The fp32 matrix-multiply peak of the machine (NumPy and PyTorch
matmul, best of both) is measured in the same run so that "share of peak" is comparable across machines.

Comparisons (``COMPARISONS``): "torch" is PyTorch's SDPA on the CPU, the one the CPU backend's targets are stated
against; "torch-mps" (PyTorch on Apple's GPU) and "mlx" (``mx.fast.scaled_dot_product_attention`` on MLX's default
device: the GPU on a Mac, the CPU elsewhere) are what the Metal backend competes with. GPU sides wait for their
queue (``torch.mps.synchronize``, ``mx.eval``) inside the timed call; on a Mac the ``metal`` backend is given MPS
tensors (no host copies) when PyTorch has MPS. fwd+bwd rows time a forward and a backward on every side (MLX:
``mx.vjp``, which computes both).

The simulator backend (``sim``) executes the Metal kernels on the CPU for correctness only; it is timed only when
asked for explicitly (``--backend sim``) and with small shapes.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

DEFAULT_SEQLENS = (512, 2048, 4096)
DEFAULT_HEADDIMS = (64, 128)
DEFAULT_DTYPES = ("fp32", "bf16")
QUICK_SEQLENS = (512, 2048)
QUICK_HEADDIMS = (64,)
COMPARISONS = ("torch", "torch-mps", "mlx")


@dataclass
class Shape:
    batch: int
    heads: int
    seqlen_q: int
    seqlen_k: int
    headdim: int
    dtype: str
    causal: bool
    mode: str = "fwd"  # "fwd" | "fwd+bwd" | "decode"
    heads_kv: int = 0  # K/V heads (GQA/MQA when fewer than heads); 0 = heads

    def kv_heads(self) -> int:
        return self.heads_kv or self.heads

    def label(self) -> str:
        s = f"{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"{self.seqlen_q}x{self.seqlen_k}"
        kv = f"/{self.kv_heads()}" if self.kv_heads() != self.heads else ""
        return (f"b{self.batch} h{self.heads}{kv} s{s} d{self.headdim} {self.dtype}"
                f"{' causal' if self.causal else ''}{'' if self.mode == 'fwd' else ' ' + self.mode}")

    def flops(self) -> float:
        f = 4.0 * self.batch * self.heads * self.seqlen_q * self.seqlen_k * self.headdim
        if self.causal and self.seqlen_q == self.seqlen_k:
            f /= 2
        if self.mode == "fwd+bwd":
            f *= 3.5
        return f


_ELEM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def kv_bytes(shape: Shape) -> float:
    """Bytes of K and V one call must read: what bounds decode (one query against a long cache)."""
    return 2.0 * shape.batch * shape.kv_heads() * shape.seqlen_k * shape.headdim * _ELEM_BYTES[shape.dtype]


@dataclass
class Row:
    shape: Shape
    ms: Dict[str, Optional[float]] = field(default_factory=dict)  # backend -> median ms (None: failed / n/a)
    notes: Dict[str, str] = field(default_factory=dict)
    spread: Dict[str, float] = field(default_factory=dict)  # backend -> spread_pct of its timed calls
    calls: Dict[str, int] = field(default_factory=dict)  # backend -> number of timed calls

    def gflops(self, name: str) -> Optional[float]:
        ms = self.ms.get(name)
        return None if not ms else self.shape.flops() / (ms * 1e-3) / 1e9

    def gbps(self, name: str) -> Optional[float]:
        ms = self.ms.get(name)
        return None if not ms else kv_bytes(self.shape) / (ms * 1e-3) / 1e9


SETTLE_SECONDS = 0.02  # libgomp spins ~300k pause instructions (a few ms) before an idle thread sleeps
MAX_ROUNDS = 5
# Calls per side at most. Generous, so that min_time (not a call count) decides how long a short call is timed: a
# decode call against a short cache takes well under a millisecond, and 50 calls of it (the former cap) were a few ms
# of measurement, too little for a stable median on a shared machine (PyTorch's side varied 0.09-8 ms between runs).
MAX_REPS = 20000
DEFAULT_MIN_TIME = 0.3  # seconds of timed calls per side and shape
# Decode: two runs of the decode grid on a 16-core Xeon VM gave torch/cpu ratios that moved by up to 39% between runs
# with 0.3 s per side and by at most 13% with 1.0 s (2 threads, 4k-64k keys, fp32/bf16, d64/d128).
DECODE_MIN_TIME = 1.0
NOISY_SPREAD_PCT = 20.0  # a spread above this says the machine was busy (quiet machines measure a few %)


def spread_pct(times: Sequence[float]) -> float:
    """Half the interquartile range of ``times``, in percent of their median: the "±" printed beside a median
    (robust to the odd call caught by a slow phase, unlike the standard deviation)."""
    if len(times) < 2:
        return 0.0
    q = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return 0.0 if med <= 0 else 100.0 * (q[2] - q[0]) / 2 / med


def _median_ms(fn: Callable[[], object], min_time: float, min_reps: int, max_reps: int = 50) -> float:
    fn()  # warm-up: thread pools, page faults, pipeline compilation
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _interleaved_median_ms(fns: Dict[str, Callable[[], object]], min_time: float, min_reps: int,
                           max_reps: int = MAX_REPS, warm: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Median ms per side, the sides timed in alternating rounds (see the module docstring)."""
    times = _interleaved_times(fns, min_time, min_reps, max_reps, warm)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _interleaved_times(fns: Dict[str, Callable[[], object]], min_time: float, min_reps: int,
                       max_reps: int = MAX_REPS, warm: Optional[Dict[str, float]] = None) -> Dict[str, List[float]]:
    """Seconds of every timed call per side, the sides timed in alternating rounds (see the module docstring).

    Each side gets at least ``min_reps`` timed calls and about ``min_time`` seconds of calls in all (up to
    ``max_reps`` calls), split over up to MAX_ROUNDS rounds; calls longer than a round's share get one call per
    round (at least ``min_reps`` rounds). ``warm`` holds the seconds of a warm-up call already made per side;
    without it each side is warmed up here."""
    if warm is None:
        warm = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()  # warm-up: thread pools, page faults, pipeline compilation
            warm[name] = time.perf_counter() - t0
    longest = max(warm.values(), default=0.0)
    rounds = max(min_reps, min(MAX_ROUNDS, int(min_time / longest) if longest > 0 else MAX_ROUNDS))
    round_time = min_time / rounds
    reps_per_round = max(1, -(-min_reps // rounds))
    cap_per_round = max(reps_per_round, max_reps // rounds)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            spent = 0.0  # time inside the calls: the measured time, not counting the timer's own overhead
            n = 0
            while n < reps_per_round or (spent < round_time and n < cap_per_round):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent += dt
                n += 1
    return times


def matmul_peak_gflops(n: int = 1024, min_time: float = 0.5) -> Dict[str, float]:
    """fp32 matrix-multiply throughput of NumPy's BLAS and (if installed) PyTorch, GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    peaks = {"numpy": flops / (_median_ms(lambda: np.matmul(a, b, out=c), min_time, 3) * 1e-3) / 1e9}
    try:
        import torch
    except ImportError:
        return peaks
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tc = torch.empty((n, n))
    peaks["torch"] = flops / (_median_ms(lambda: torch.mm(ta, tb, out=tc), min_time, 3) * 1e-3) / 1e9
    return peaks


def _np_dtype(name: str):
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"fp32": np.float32, "fp16": np.float16}[name])


def _torch_mps_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def _mps_sync() -> None:
    import torch

    torch.mps.synchronize()


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _make_ours(fa, backend: str, shape: Shape, rng) -> Callable[[], object]:
    b, h, sq, sk, d = shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim
    on_mps = backend == "metal" and _torch_mps_available()  # a Mac: time the GPU without host copies
    if shape.mode == "fwd+bwd":
        import torch

        tdt, dev = _torch_dtype(shape.dtype), "mps" if on_mps else "cpu"
        q, k, v = (torch.randn(b, s, h, d, dtype=tdt, device=dev, requires_grad=True) for s in (sq, sk, sk))
        dout = torch.randn(b, sq, h, d, dtype=tdt, device=dev)

        def fwd_bwd():
            out = fa.flash_attn_func(q, k, v, causal=shape.causal, backend=backend)
            out.backward(dout)
            if on_mps:
                _mps_sync()  # autograd's own MPS work (gradient accumulation) is queued on PyTorch's stream
        return fwd_bwd
    dt = _np_dtype(shape.dtype)
    hk = shape.kv_heads() if shape.mode == "decode" else h
    q = rng.standard_normal((b, sq, h, d)).astype(dt)
    k = rng.standard_normal((b, sk, hk, d)).astype(dt)
    v = rng.standard_normal((b, sk, hk, d)).astype(dt)
    lens = np.full(b, sk, dtype=np.int32)
    if on_mps:
        # MPS tensors, as a PyTorch user on a Mac calls the metal backend. No synchronize in the timed call: the
        # public functions synchronize PyTorch's queue before the call and the shim waits for its own command buffer.
        import torch

        q, k, v = (torch.from_numpy(x.astype(np.float32)).to("mps", _torch_dtype(shape.dtype)) for x in (q, k, v))
        lens = torch.from_numpy(lens).to("mps")
    if shape.mode == "decode":
        return lambda: fa.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, causal=shape.causal, backend=backend)
    return lambda: fa.flash_attn_func(q, k, v, causal=shape.causal, backend=backend)


def _make_torch(shape: Shape, device: str = "cpu") -> Callable[[], object]:
    import torch
    import torch.nn.functional as F

    tdt = _torch_dtype(shape.dtype)
    b, h, sq, sk, d = shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim
    grad = shape.mode == "fwd+bwd"
    hkv = shape.kv_heads()
    sync = _mps_sync if device == "mps" else (lambda: None)
    q = torch.randn(b, h, sq, d, dtype=tdt, device=device, requires_grad=grad)
    k = torch.randn(b, hkv, sk, d, dtype=tdt, device=device, requires_grad=grad)
    v = torch.randn(b, hkv, sk, d, dtype=tdt, device=device, requires_grad=grad)
    gqa = {"enable_gqa": True} if hkv != h else {}
    # torch's is_causal is top-left aligned; it equals flash_attn's bottom-right one only for square attention,
    # and decode (one query seeing the whole cache) is unmasked in both conventions.
    causal = shape.causal and sq == sk
    if grad:
        dout = torch.randn(b, h, sq, d, dtype=tdt, device=device)

        def fwd_bwd():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa).backward(dout)
            sync()
        return fwd_bwd

    def fwd():
        with torch.no_grad():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)
        sync()
        return out
    return fwd


def _make_mlx(shape: Shape) -> Callable[[], object]:
    """MLX's fused attention on its default device, [batch, heads, seqlen, dim] inputs, evaluated inside the call."""
    import mlx.core as mx

    mdt = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}[shape.dtype]
    b, h, sq, sk, d = shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim
    hkv = shape.kv_heads()
    key = mx.random.key(0)
    kq, kk, kv, kd = mx.random.split(key, 4)
    q = mx.random.normal((b, h, sq, d), key=kq).astype(mdt)
    k = mx.random.normal((b, hkv, sk, d), key=kk).astype(mdt)
    v = mx.random.normal((b, hkv, sk, d), key=kv).astype(mdt)
    mask = "causal" if shape.causal and sq == sk else None  # as for torch: decode sees the whole cache
    scale = d ** -0.5

    def attention(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)

    if shape.mode == "fwd+bwd":
        dout = mx.random.normal((b, h, sq, d), key=kd).astype(mdt)

        def fwd_bwd():
            out, grads = mx.vjp(attention, [q, k, v], [dout])
            mx.eval(out, grads)
        return fwd_bwd

    def fwd():
        out = attention(q, k, v)
        mx.eval(out)
        return out
    return fwd


def comparison_available(name: str) -> Optional[str]:
    """None if comparison ``name`` can run here, else the reason it cannot."""
    if name not in COMPARISONS:
        return f"unknown comparison {name!r} (choose from {', '.join(COMPARISONS)})"
    if name in ("torch", "torch-mps"):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "PyTorch is not installed"
        if name == "torch-mps" and not _torch_mps_available():
            return "PyTorch has no MPS device here (macOS on Apple Silicon only)"
        return None
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return "mlx is not installed (pip install mlx; on Linux mlx[cpu])"
    return None


def default_comparisons(with_torch: bool = True) -> List[str]:
    """PyTorch's CPU SDPA when installed; on a Mac also PyTorch MPS and MLX (the GPU competitors) when present.
    Elsewhere MLX runs on the CPU only and is timed on request (``--compare mlx``)."""
    import platform

    names = []
    if with_torch and comparison_available("torch") is None:
        names.append("torch")
        if comparison_available("torch-mps") is None:
            names.append("torch-mps")
    if platform.system() == "Darwin" and comparison_available("mlx") is None:
        names.append("mlx")
    return names


def _make_comparison(name: str, shape: Shape) -> Callable[[], object]:
    if name == "torch":
        return _make_torch(shape)
    if name == "torch-mps":
        return _make_torch(shape, device="mps")
    return _make_mlx(shape)


def build_shapes(seqlens: Sequence[int], headdims: Sequence[int], dtypes: Sequence[str], causal: Sequence[bool],
                 batch: int, heads: int, backward: bool = False, decode: bool = False,
                 heads_kv: int = 0) -> List[Shape]:
    shapes = []
    for dtype in dtypes:
        for d in headdims:
            for s in seqlens:
                for c in causal:
                    if decode:
                        shapes.append(Shape(batch, heads, 1, s, d, dtype, c, "decode", heads_kv))
                    else:
                        shapes.append(Shape(batch, heads, s, s, d, dtype, c, "fwd+bwd" if backward else "fwd"))
    return shapes


def run_bench(shapes: Sequence[Shape], backends: Sequence[str], comparisons, min_time: float = DEFAULT_MIN_TIME,
              min_reps: int = 3, progress: Optional[Callable[[Row], None]] = None,
              started: Optional[Callable[[Shape], None]] = None) -> List[Row]:
    """Time every backend and comparison on every shape. ``comparisons``: names from COMPARISONS (True means
    ["torch"], False none). ``started(shape)`` is called before each shape, ``progress(row)`` after it."""
    import flash_attn_cy as fa

    comparisons = _comparison_list(comparisons)

    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
        if started is not None:
            started(shape)
        row = Row(shape)
        sides: Dict[str, Callable[[], object]] = {}
        warm: Dict[str, float] = {}
        makers = [(backend, lambda b=backend: _make_ours(fa, b, shape, rng)) for backend in backends]
        makers += [(name, lambda n=name: _make_comparison(n, shape)) for name in comparisons]
        for name, make in makers:
            try:
                fn = make()
                t0 = time.perf_counter()
                fn()  # warm-up, and fail here (before timing) if this side cannot run the shape
                warm[name] = time.perf_counter() - t0
                sides[name] = fn
            except NotImplementedError as e:
                row.ms[name], row.notes[name] = None, f"n/a: {e}"
            except Exception as e:  # noqa: BLE001 - report and continue with the other sides and shapes
                row.ms[name], row.notes[name] = None, f"{type(e).__name__}: {e}"
        try:
            for name, t in _interleaved_times(sides, min_time, min_reps, warm=warm).items():
                row.ms[name] = statistics.median(t) * 1e3
                row.spread[name] = spread_pct(t)
                row.calls[name] = len(t)
        except Exception as e:  # noqa: BLE001 - a side that ran once but failed later
            for name in sides:
                row.ms[name], row.notes[name] = None, f"{type(e).__name__}: {e}"
        sides.clear()
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _comparison_list(comparisons) -> List[str]:
    if comparisons is True:
        return ["torch"]
    if comparisons is False or comparisons is None:
        return []
    return list(comparisons)


def format_table(rows: Sequence[Row], backends: Sequence[str], comparisons, peak: Optional[float]) -> str:
    """The bench table; ``comparisons`` as for run_bench (each gets its own ms and rate columns and one ratio
    column per backend: comparison ms / backend ms)."""
    comparisons = _comparison_list(comparisons)
    decode = any(r.shape.mode == "decode" for r in rows)
    rate = "GB/s" if decode else "GFLOP/s"
    header = ["shape"]
    for be in backends:
        header += [f"{be} ms", f"{be} {rate}"]
        if peak and not decode:
            header.append(f"{be} %mm")
    for c in comparisons:
        header += [f"{c} ms", f"{c} {rate}"]
    header += [f"{c}/{be}" for c in comparisons for be in backends]
    body = []
    for row in rows:
        line = [row.shape.label()]
        for be in backends:
            g = row.gflops(be)
            line += [_fmt(row.ms.get(be), ".2f"), _fmt(row.gbps(be) if decode else g, ".1f")]
            if peak and not decode:
                line.append(_fmt(None if g is None else 100 * g / peak, ".0f"))
        for c in comparisons:
            line += [_fmt(row.ms.get(c), ".2f"), _fmt(row.gbps(c) if decode else row.gflops(c), ".1f")]
        for c in comparisons:
            for be in backends:
                a, t = row.ms.get(be), row.ms.get(c)
                line.append(_fmt(None if not a or not t else t / a, ".2f"))
        body.append(line)
    # the spread (half the interquartile range of the timed calls) beside each median: a ratio is only as good
    # as the two medians it divides
    for line, row in zip(body, rows):
        col = 1
        for name in list(backends) + comparisons:
            if row.ms.get(name) and name in row.spread:
                line[col] += f" ±{row.spread[name]:.0f}%"
            col += 3 if (name in backends and peak and not decode) else 2
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    notes = [f"  {row.shape.label()}: {be}: {msg}" for row in rows for be, msg in row.notes.items()]
    if notes:
        out += ["", "notes:"] + notes
    out += [""]
    out += ["ms = median of the timed calls ± half their interquartile range (in % of the median)."]
    if decode:
        out += ["GB/s = bytes of K and V read per call / time (decode is bound by memory bandwidth)."]
    elif peak:
        out += [f"<backend> %mm = share of the measured fp32 matrix-multiply peak ({peak:.1f} GFLOP/s); bf16/fp16 "
                "kernels can exceed 100 with 16-bit dot-product instructions."]
    noisy = [(row.shape.label(), name) for row in rows for name, pct in row.spread.items()
             if row.ms.get(name) and pct > NOISY_SPREAD_PCT]
    if noisy:
        out += [f"note: {len(noisy)} timing(s) spread by more than ±{NOISY_SPREAD_PCT:.0f}% (e.g. {noisy[0][1]} on "
                f"{noisy[0][0]}): something else used the CPU meanwhile, and ratios involving them are unreliable; "
                "rerun on a quieter machine, or with a longer --min-time."]
    names = {"torch": "PyTorch SDPA on the CPU", "torch-mps": "PyTorch SDPA on MPS", "mlx": "MLX fast SDPA"}
    for c in comparisons:
        out += [f"{c}/<backend> = {c} ms / backend ms ({names[c]}): above 1 means flash_attn_cy is faster."]
    return "\n".join(out)


def to_json(rows: Sequence[Row], meta: dict) -> str:
    data = {"meta": meta, "rows": []}
    for row in rows:
        data["rows"].append({"shape": asdict(row.shape), "label": row.shape.label(), "flops": row.shape.flops(),
                             "ms": row.ms, "gflops": {k: row.gflops(k) for k in row.ms},
                             "kv_gbps": {k: row.gbps(k) for k in row.ms}, "notes": row.notes,
                             "spread_pct": row.spread, "calls": row.calls})
    return json.dumps(data, indent=2)


def plot(rows: Sequence[Row], names: Sequence[str], path: str, title: str, peak: Optional[float] = None) -> None:
    """Bar chart of GFLOP/s per shape and implementation, with the fp32 matmul peak as a line (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.shape.label() for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.5))
    for i, name in enumerate(names):
        vals = [r.gflops(name) or 0.0 for r in rows]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    if peak:
        ax.axhline(peak, color="gray", linestyle="--", linewidth=1, label=f"fp32 matmul peak ({peak:.0f})")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("GFLOP/s (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def geomean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
