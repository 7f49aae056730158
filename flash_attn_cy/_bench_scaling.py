"""``python -m flash_attn_cy bench --threads 1,N``: thread scaling of the CPU backend beside PyTorch's CPU SDPA.

For every case, flash_attn_cy's CPU backend and PyTorch are timed at each thread count of the list (both set to the
same count), in alternating rounds: every round sets a thread count, then times each side after a settle pause (see
_bench's module docstring), so that a slow phase of a shared machine lands on all of them. Parallel efficiency at N
threads is ``(time at B threads * B) / (time at N threads * N)`` for the smallest count B of the list (with B = 1:
time at 1 thread / (N x time at N), issue 20's definition): 1.0 is perfect scaling.

PyTorch's OpenMP workers keep spinning for a while after its calls (libgomp's default wait policy), which can take
cores away from whatever runs next in the process. So the cases are timed twice: once in this process (default wait
policy, as a user who mixes both libraries sees it) and once in a child process started with
OMP_WAIT_POLICY=PASSIVE (idle OpenMP workers sleep at once), and both efficiencies are printed side by side.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ._bench import cases as _cases
from ._bench import sides as _sides
from ._bench.cases import Shape
from ._bench.timing import DEFAULT_MIN_TIME, MAX_ROUNDS, SETTLE_SECONDS

# Issue 20's table (B1 H8 unless stated): the cases its parallel-efficiency target is stated on.
SCALING_CASES: Tuple[Shape, ...] = (
    Shape(1, 8, 2048, 2048, 64, "bf16", False),
    Shape(1, 8, 2048, 2048, 128, "bf16", True),
    Shape(1, 8, 2048, 2048, 64, "fp16", False),
    Shape(1, 8, 2048, 2048, 64, "fp32", False),
    Shape(4, 32, 512, 512, 128, "fp32", False),
    Shape(1, 8, 2048, 2048, 64, "bf16", True, "fwd+bwd"),
    Shape(1, 32, 1, 8192, 128, "bf16", False, "decode", 8),
    Shape(1, 32, 1, 8192, 128, "fp32", False, "decode", 8),
)
# `--quick`: one forward, one decode, smaller shapes.
QUICK_SCALING_CASES: Tuple[Shape, ...] = (
    Shape(1, 8, 512, 512, 64, "fp32", False),
    Shape(1, 32, 1, 4096, 128, "bf16", False, "decode", 8),
)

Times = Dict[str, Dict[int, float]]  # side -> threads -> median ms


def _set_threads(fa, torch, n: int) -> None:
    fa.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def time_scaling(shape: Shape, threads: Sequence[int], min_time: float, min_reps: int,
                 with_torch: bool = True) -> Tuple[Times, Dict[str, str]]:
    """Median ms of each side ("cpu", and "torch" when asked and installed) at each thread count, timed in
    alternating rounds (see the module docstring); and a note per side that failed."""

    import flash_attn_cy as fa

    torch = None
    if with_torch:
        try:
            import torch
        except ImportError:
            pass
    old = fa.get_num_threads()
    old_torch = torch.get_num_threads() if torch is not None else None
    notes: Dict[str, str] = {}
    sides: Dict[str, Callable[[], object]] = {}
    makers = [("cpu", lambda: _sides.make_side("cpu", shape))]  # both sides get the same values (one case table)
    if torch is not None:
        makers.append(("torch", lambda: _sides.make_side("torch", shape)))
    warm: Dict[str, float] = {}
    try:
        for name, make in makers:
            try:
                fn = make()
                for n in threads:  # warm-up at every count: pools started, pages touched
                    _set_threads(fa, torch, n)
                    t0 = time.perf_counter()
                    fn()
                    warm[name] = max(warm.get(name, 0.0), time.perf_counter() - t0)
                sides[name] = fn
            except Exception as e:  # noqa: BLE001 - report it, time the other side
                notes[name] = f"{type(e).__name__}: {e}"
        longest = max(warm.values(), default=0.0) * len(threads)
        rounds = max(min_reps, min(MAX_ROUNDS, int(min_time / longest) if longest > 0 else MAX_ROUNDS))
        round_time = min_time / rounds
        samples: Dict[Tuple[str, int], List[float]] = {(s, n): [] for s in sides for n in threads}
        for _ in range(rounds):
            for n in threads:
                _set_threads(fa, torch, n)
                for name, fn in sides.items():
                    time.sleep(SETTLE_SECONDS)
                    spent, calls = 0.0, 0
                    while calls < -(-min_reps // rounds) or (spent < round_time and calls < 10000):
                        t0 = time.perf_counter()
                        fn()
                        dt = time.perf_counter() - t0
                        samples[(name, n)].append(dt)
                        spent += dt
                        calls += 1
    finally:
        fa.set_num_threads(old)
        if torch is not None:
            torch.set_num_threads(old_torch)
    out: Times = {}
    for (name, n), t in samples.items():
        out.setdefault(name, {})[n] = statistics.median(t) * 1e3
    return out, notes


def efficiency(ms: Dict[int, float], n: int) -> Optional[float]:
    """Parallel efficiency at n threads relative to the smallest count timed (see the module docstring)."""
    base = min(ms)
    if n == base or not ms.get(n) or not ms.get(base):
        return None
    return ms[base] * base / (ms[n] * n)


def _run_passive_child(shapes: Sequence[Shape], threads: Sequence[int], min_time: float, min_reps: int,
                       with_torch: bool) -> Optional[List[Times]]:
    """The same timings in a child process with OMP_WAIT_POLICY=PASSIVE; None when it failed."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    job = {"shapes": [asdict(s) for s in shapes], "threads": list(threads), "min_time": min_time,
           "min_reps": min_reps, "with_torch": with_torch}
    try:
        r = subprocess.run([sys.executable, "-c", "from flash_attn_cy._bench_scaling import _child; _child()"],
                           input=json.dumps(job), capture_output=True, text=True, env=env, timeout=7200)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"note: the OMP_WAIT_POLICY=PASSIVE run failed: {e}", file=sys.stderr)
        return None
    if r.returncode != 0:
        print(f"note: the OMP_WAIT_POLICY=PASSIVE run failed: {r.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    data = json.loads(r.stdout.strip().splitlines()[-1])
    return [{side: {int(n): ms for n, ms in per.items()} for side, per in row.items()} for row in data]


def _child() -> None:
    job = json.loads(sys.stdin.read())
    rows = []
    for s in job["shapes"]:
        shape = Shape(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})  # JSON made tuples lists
        times, _ = time_scaling(shape, job["threads"], job["min_time"], job["min_reps"], job["with_torch"])
        rows.append(times)
    print(json.dumps(rows))


def run_scaling(shapes: Sequence[Shape], threads: Sequence[int], min_time: float, min_reps: int,
                with_torch: bool = True, passive: bool = True,
                progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Rows of {shape, times (this process), passive (OMP_WAIT_POLICY=PASSIVE child, or None), notes}."""
    rows = []
    for shape in shapes:
        times, notes = time_scaling(shape, threads, min_time, min_reps, with_torch)
        rows.append({"shape": shape, "times": times, "notes": notes, "passive": None})
        if progress is not None:
            progress(shape.label())
    if passive and with_torch:
        if progress is not None:
            progress("OMP_WAIT_POLICY=PASSIVE run (child process)")
        child = _run_passive_child(shapes, threads, min_time, min_reps, with_torch)
        if child is not None:
            for row, times in zip(rows, child):
                row["passive"] = times
    return rows


def _f(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_scaling(rows: Sequence[dict], threads: Sequence[int]) -> str:
    """The scaling table: ms per side and thread count, efficiencies (this process, then the passive child)."""
    base, others = min(threads), [n for n in threads if n != min(threads)]
    header = ["case"] + [f"cpu ms @{n}" for n in threads] + [f"torch ms @{n}" for n in threads]
    for n in others:
        header += [f"cpu eff@{n}", f"torch eff@{n}", f"cpu eff@{n} P", f"torch eff@{n} P", f"torch/cpu @{n}"]
    body = []
    for row in rows:
        t, p = row["times"], row["passive"] or {}
        line = [row["shape"].label()]
        line += [_f(t.get("cpu", {}).get(n), ".2f") for n in threads]
        line += [_f(t.get("torch", {}).get(n), ".2f") for n in threads]
        for n in others:
            cpu, tor = t.get("cpu", {}), t.get("torch", {})
            line += [_f(efficiency(cpu, n) if cpu else None, ".2f"), _f(efficiency(tor, n) if tor else None, ".2f"),
                     _f(efficiency(p["cpu"], n) if p.get("cpu") else None, ".2f"),
                     _f(efficiency(p["torch"], n) if p.get("torch") else None, ".2f"),
                     _f(tor[n] / cpu[n] if tor.get(n) and cpu.get(n) else None, ".2f")]
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda r: "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
    notes = [f"  {row['shape'].label()}: {side}: {msg}" for row in rows for side, msg in row["notes"].items()]
    if notes:
        out += ["", "notes:"] + notes
    out += ["", f"eff@N = parallel efficiency: (ms at {base} thread{'s' if base > 1 else ''} x {base}) / "
                f"(ms at N threads x N); 1.00 = perfect scaling.",
            "P = timed again in a child process with OMP_WAIT_POLICY=PASSIVE (PyTorch's idle OpenMP workers sleep "
            "instead of spinning after its calls); without P: this process, default wait policy.",
            f"flash_attn_cy uses at most the CPUs this process may run on ({_available_cpus()} here), and fewer for "
            "calls too small to keep them busy."]
    return "\n".join(out)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def scaling_json(rows: Sequence[dict], threads: Sequence[int], meta: dict) -> str:
    data = {"meta": dict(meta, threads=list(threads)), "rows": []}
    for row in rows:
        entry = {"shape": asdict(row["shape"]), "label": row["shape"].label(), "ms": row["times"],
                 "ms_omp_passive": row["passive"], "notes": row["notes"], "efficiency": {}}
        for source, times in (("default", row["times"]), ("omp_passive", row["passive"] or {})):
            for side, per in times.items():
                for n in threads:
                    e = efficiency(per, n)
                    if e is not None:
                        entry["efficiency"].setdefault(source, {}).setdefault(side, {})[n] = e
        data["rows"].append(entry)
    return json.dumps(data, indent=2)


def cmd_scaling(args, fa) -> int:
    """`bench --threads 1,N[,...]`: the scaling table (issue 20's cases unless shapes are given on the command line)."""
    from . import _sysinfo

    threads = sorted(set(getattr(args, "thread_counts", None) or args.threads))
    with_torch = not args.no_torch
    if with_torch and _sides.comparison_available("torch") is not None:
        print("note: PyTorch is not installed; timing flash_attn_cy only", file=sys.stderr)
        with_torch = False
    if args.seqlens or args.headdims or args.dtypes or args.decode or args.backward:
        causal = {"both": (False, True), "true": (True,), "false": (False,)}[args.causal or "both"]
        shapes = _cases.build_shapes(args.seqlens or _cases.QUICK_SEQLENS, args.headdims or _cases.QUICK_HEADDIMS,
                                     args.dtypes or list(_cases.DEFAULT_DTYPES), causal, args.batch or 1,
                                     args.heads or 16,
                                     backward=args.backward, decode=args.decode, heads_kv=args.kv_heads)
    else:
        shapes = list(QUICK_SCALING_CASES if args.quick else SCALING_CASES)
    min_time = args.min_time if args.min_time is not None else DEFAULT_MIN_TIME
    hw = _sysinfo.hardware_summary()
    print(f"flash_attn_cy {getattr(fa, '__version__', '?')} thread scaling on {hw['cpu']} "
          f"({hw['cores']['usable']} usable cores); cpu kernel path: {_sysinfo.cpu_kernel_path()}")
    print(f"threads {', '.join(map(str, threads))}; {len(shapes)} cases, >= {min_time}s per side, count and "
          f"process{'' if with_torch else '; PyTorch not timed'}\n", flush=True)
    quiet = getattr(args, "quiet", False)
    rows = run_scaling(shapes, threads, min_time, args.min_reps, with_torch=with_torch,
                       progress=None if quiet else (lambda what: print(f"  done: {what}", file=sys.stderr,
                                                                       flush=True)))
    print(format_scaling(rows, threads))
    if args.json:
        meta = {"hardware": hw, "versions": _sysinfo.package_versions()}
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(scaling_json(rows, threads, meta))
        print(f"wrote {args.json}")
    failed = any("cpu" in row["notes"] for row in rows)
    return 1 if failed else 0
