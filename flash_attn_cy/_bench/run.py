"""``bench``'s runs: every side of every case, timed in interleaved rounds (timing.py), one Row per case."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import sides, timing
from .cases import HOST_COST_SEQLENS, Shape, host_cost_shapes, kv_bytes


@dataclass
class Row:
    shape: Shape
    ms: Dict[str, Optional[float]] = field(default_factory=dict)  # side -> median ms (None: failed / n/a)
    notes: Dict[str, str] = field(default_factory=dict)
    spread: Dict[str, float] = field(default_factory=dict)  # side -> spread_pct of its timed calls
    calls: Dict[str, int] = field(default_factory=dict)  # side -> number of timed calls
    name: str = ""  # the case's name where it has one (host cost: the call timed)

    def gflops(self, name: str) -> Optional[float]:
        ms = self.ms.get(name)
        return None if not ms else self.shape.flops() / (ms * 1e-3) / 1e9

    def gbps(self, name: str) -> Optional[float]:
        ms = self.ms.get(name)
        return None if not ms else kv_bytes(self.shape) / (ms * 1e-3) / 1e9


def comparison_list(comparisons) -> List[str]:
    """``comparisons`` as run_bench takes it: names from sides.COMPARISONS, True for ["torch"], False/None for none."""
    if comparisons is True:
        return ["torch"]
    if comparisons is False or comparisons is None:
        return []
    return list(comparisons)


def run_bench(shapes: Sequence[Shape], backends: Sequence[str], comparisons, min_time: float = timing.DEFAULT_MIN_TIME,
              min_reps: int = 3, progress: Optional[Callable[[Row], None]] = None,
              started: Optional[Callable[[Shape], None]] = None, clock: timing.Clock = time.perf_counter,
              names: Sequence[str] = ()) -> List[Row]:
    """Time every backend and comparison on every shape. ``started(shape)`` is called before each shape,
    ``progress(row)`` after it; ``names`` (optional) names the shapes' rows."""
    comparisons = comparison_list(comparisons)
    rows = []
    for i, shape in enumerate(shapes):
        if started is not None:
            started(shape)
        row = Row(shape, name=names[i] if i < len(names) else "")
        fns: Dict[str, sides.Side] = {}
        warm: Dict[str, float] = {}
        for name in list(backends) + comparisons:
            try:
                fn = sides.make_side(name, shape)
                warm.update(timing.warm_up({name: fn}, clock))  # and fail here, before timing, if it cannot run
                fns[name] = fn
            except NotImplementedError as e:
                row.ms[name], row.notes[name] = None, f"n/a: {e}"
            except Exception as e:  # noqa: BLE001 - report and continue with the other sides and shapes
                row.ms[name], row.notes[name] = None, f"{type(e).__name__}: {e}"
        try:
            for name, t in timing.interleaved_times(fns, min_time, min_reps, warm=warm, clock=clock).items():
                row.ms[name] = statistics.median(t) * 1e3
                row.spread[name] = timing.spread_pct(t)
                row.calls[name] = len(t)
        except Exception as e:  # noqa: BLE001 - a side that ran once but failed later
            for name in fns:
                row.ms[name], row.notes[name] = None, f"{type(e).__name__}: {e}"
        fns.clear()
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


@contextlib.contextmanager
def threads(n: Optional[int]) -> Iterator[None]:
    """flash_attn_cy's CPU backend and PyTorch (when installed) on ``n`` threads inside the block (None: unchanged);
    the previous counts come back after it."""
    if n is None:
        yield
        return
    import flash_attn_cy as fa

    try:
        import torch
    except ImportError:
        torch = None
    old = (fa.get_num_threads(), torch.get_num_threads() if torch is not None else None)
    fa.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        fa.set_num_threads(old[0])
        if torch is not None:
            torch.set_num_threads(old[1])


HOST_COST_THREADS = 1  # one thread on both sides: what is measured is the calling thread's own work


def run_host_cost(seqlens: Sequence[int] = HOST_COST_SEQLENS, min_time: float = timing.HOST_COST_MIN_TIME,
                  min_reps: int = 3, progress: Optional[Callable[[Row], None]] = None,
                  started: Optional[Callable[[Shape], None]] = None,
                  backend: str = "cpu", comparison: str = "torch", clock: timing.Clock = time.perf_counter
                  ) -> List[Row]:
    """Host time per call (cases.HOST_COST_CALLS at ``seqlens``) of flash_attn_cy's ``backend`` and of PyTorch SDPA
    on the same shapes, one thread each, timed in alternating rounds in this process."""
    named: List[Tuple[str, Shape]] = host_cost_shapes(seqlens)
    with threads(HOST_COST_THREADS):
        return run_bench([s for _, s in named], [backend], [comparison], min_time=min_time, min_reps=min_reps,
                         progress=progress, started=started, clock=clock, names=[n for n, _ in named])
