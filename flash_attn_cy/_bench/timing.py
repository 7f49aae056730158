"""The one timing core of the benchmarks (``bench`` and the asv suite's track_* rates).

Each side's calls are timed one by one with a monotonic clock (wall time by default; ``time.thread_time`` for the
calling thread's CPU time on a shared machine, with one thread) and summarised by their median and spread. Several
sides of one case are timed in interleaved rounds rather than one after the other, so that a slow phase of a shared or
virtual machine (a core taken away for a second) lands on all of them instead of deciding the ratio. Before each
side's round the core sleeps ``SETTLE_SECONDS``: an OpenMP runtime such as PyTorch's keeps its idle worker threads
spinning for milliseconds after a parallel region, and a side timed inside that window would be measured while
another library's threads still occupy its cores.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

Clock = Callable[[], float]

SETTLE_SECONDS = 0.02  # libgomp spins ~300k pause instructions (a few ms) before an idle thread sleeps
MAX_ROUNDS = 5
# Calls per side at most. Generous, so that min_time (not a call count) decides how long a short call is timed: a
# decode call against a short cache takes well under a millisecond, and 50 calls of it (a former cap) were a few ms
# of measurement, too little for a stable median on a shared machine (PyTorch's side varied 0.09-8 ms between runs).
MAX_REPS = 20000
DEFAULT_MIN_TIME = 0.3  # seconds of timed calls per side and shape
# Decode: two runs of the decode grid on a 16-core Xeon VM gave torch/cpu ratios that moved by up to 39% between runs
# with 0.3 s per side and by at most 13% with 1.0 s (2 threads, 4k-64k keys, fp32/bf16, d64/d128).
DECODE_MIN_TIME = 1.0
# Host cost: calls of 5-60 us, so 0.5 s is ~10^4 calls per side, and a median that moves by a few % between runs.
HOST_COST_MIN_TIME = 0.5
NOISY_SPREAD_PCT = 20.0  # a spread above this says the machine was busy (quiet machines measure a few %)


def spread_pct(times: Sequence[float]) -> float:
    """Half the interquartile range of ``times``, in percent of their median: the "±" printed beside a median
    (robust to the odd call caught by a slow phase, unlike the standard deviation)."""
    if len(times) < 2:
        return 0.0
    q = statistics.quantiles(times, n=4, method="inclusive")
    med = statistics.median(times)
    return 0.0 if med <= 0 else 100.0 * (q[2] - q[0]) / 2 / med


def timed_calls(fn: Callable[[], object], min_reps: int, budget: float, max_reps: int,
                clock: Clock = time.perf_counter) -> List[float]:
    """Seconds of each of at least ``min_reps`` calls of ``fn``, more while their sum is under ``budget`` (at most
    ``max_reps``). Only the calls are summed, not the timer's own overhead."""
    times: List[float] = []
    spent = 0.0
    while len(times) < min_reps or (spent < budget and len(times) < max_reps):
        t0 = clock()
        fn()
        dt = clock() - t0
        times.append(dt)
        spent += dt
    return times


def warm_up(fns: Dict[str, Callable[[], object]], clock: Clock = time.perf_counter) -> Dict[str, float]:
    """One untimed call per side (thread pools, page faults, pipeline compilation); returns each call's seconds."""
    warm = {}
    for name, fn in fns.items():
        t0 = clock()
        fn()
        warm[name] = clock() - t0
    return warm


def interleaved_times(fns: Dict[str, Callable[[], object]], min_time: float, min_reps: int,
                      max_reps: int = MAX_REPS, warm: Optional[Dict[str, float]] = None,
                      clock: Clock = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds of every timed call per side, the sides timed in alternating rounds (see the module docstring).

    Each side gets at least ``min_reps`` timed calls and about ``min_time`` seconds of calls in all (up to
    ``max_reps`` calls), split over up to MAX_ROUNDS rounds; calls longer than a round's share get one call per
    round (at least ``min_reps`` rounds). ``warm`` holds the seconds of a warm-up call already made per side;
    without it each side is warmed up here."""
    if warm is None:
        warm = warm_up(fns, clock)
    longest = max(warm.values(), default=0.0)
    rounds = max(min_reps, min(MAX_ROUNDS, int(min_time / longest) if longest > 0 else MAX_ROUNDS))
    reps_per_round = max(1, -(-min_reps // rounds))
    cap_per_round = max(reps_per_round, max_reps // rounds)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(SETTLE_SECONDS)
            times[name] += timed_calls(fn, reps_per_round, min_time / rounds, cap_per_round, clock)
    return times


def interleaved_median_ms(fns: Dict[str, Callable[[], object]], min_time: float, min_reps: int,
                          max_reps: int = MAX_REPS, warm: Optional[Dict[str, float]] = None,
                          clock: Clock = time.perf_counter) -> Dict[str, float]:
    """Median ms per side, the sides timed in alternating rounds."""
    times = interleaved_times(fns, min_time, min_reps, max_reps, warm, clock)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def median_seconds(fn: Callable[[], object], min_time: float, min_reps: int = 1, max_reps: int = MAX_REPS) -> float:
    """Median seconds of ``fn``'s calls (already warmed up) over about ``min_time`` seconds: asv's track_* rates."""
    return statistics.median(timed_calls(fn, min_reps, min_time, max_reps))


def matmul_peak_gflops(n: int = 1024, min_time: float = 0.5) -> Dict[str, float]:
    """fp32 matrix-multiply throughput of NumPy's BLAS and (if installed) PyTorch, GFLOP/s: the machine's peak that
    "share of peak" is measured against, so that it is comparable across machines."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3

    def rate(fn):
        fn()  # warm-up
        return flops / statistics.median(timed_calls(fn, 3, min_time, 50)) / 1e9

    peaks = {"numpy": rate(lambda: np.matmul(a, b, out=c))}
    try:
        import torch
    except ImportError:
        return peaks
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    tc = torch.empty((n, n))
    peaks["torch"] = rate(lambda: torch.mm(ta, tb, out=tc))
    return peaks
