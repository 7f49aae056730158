"""``python -m flash_attn_cy bench``: its options, their checks and the run (the cases, sides, timing and tables are
flash_attn_cy/_bench/, shared with the asv suite).

Without options it times every backend present (the simulator only on request) against PyTorch's CPU SDPA on the
default grid (cases.build_shapes); ``--decode`` and ``--backward`` time those modes; ``--group NAME`` runs one of the
asv suite's groups (the same cases asv times); ``--host-cost`` times the host cost per call at tiny shapes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Tuple

from . import _bench, _progress, _sysinfo
from ._cli_common import (choose_backends, csv_dtypes, csv_headdims, csv_ints, import_package, nonneg_float,
                          positive_int, progress_mode, progress_options)

GRID_FLAGS = ("seqlens", "headdims", "dtypes", "batch", "heads", "kv_heads", "causal", "decode", "backward", "quick")
# the asv groups the command runs with --group: one forward-style grid each (the rest measure memory or generate())
CLI_GROUPS = tuple(n for n, g in _bench.GROUPS.items()
                   if g.impls in ("all", "ours", "sim") and g.time_method and not g.impl_axis)


def _csv_isas(text: str) -> List[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in vals if v not in _bench.CPU_ISAS]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"kernel sets must be among {','.join(_bench.CPU_ISAS)}; got {text!r}")
    return list(dict.fromkeys(vals))


def _cpu_isa_runs(isa: str) -> bool:
    """_bench.cpu_isa_runs, saying on stderr what runs instead when the set cannot run here."""
    if _bench.cpu_isa_runs(isa):
        return True
    print(f"note: this CPU cannot run the {isa} kernels (FLASH_ATTN_CY_CPU_ISA={isa} gives "
          f"{_bench.cpu_kernel_set(isa)}): not timed", file=sys.stderr)
    return False


def add_parser(sub) -> None:
    """The ``bench`` subcommand's options."""
    pb = sub.add_parser("bench", help="time backends against PyTorch scaled_dot_product_attention")
    pb.add_argument("--backend", action="append", metavar="NAME",
                    help="backend to time (repeatable; default: every available backend except sim)")
    pb.add_argument("--quick", action="store_true", help="fewer shapes (seqlen 512,2048; head dim 64)")
    pb.add_argument("--seqlens", type=csv_ints, metavar="LIST",
                    help="e.g. 512,2048,4096 (key length for --decode and --host-cost)")
    pb.add_argument("--headdims", type=csv_headdims, metavar="LIST", help="e.g. 64,128")
    pb.add_argument("--dtypes", type=csv_dtypes, default=None, metavar="LIST",
                    help="comma-separated among fp32,fp16,bf16 (default fp32,bf16)")
    pb.add_argument("--batch", type=positive_int, default=None, help="batch size (default 1)")
    pb.add_argument("--heads", type=positive_int, default=None, help="number of heads (default 16)")
    pb.add_argument("--kv-heads", type=positive_int, default=0, metavar="N",
                    help="K/V heads for --decode (GQA/MQA; must divide --heads; default: --heads)")
    pb.add_argument("--causal", choices=["both", "true", "false"], default=None, help="default: both")
    pb.add_argument("--backward", action="store_true", help="time forward + backward (needs PyTorch)")
    pb.add_argument("--decode", action="store_true",
                    help="time flash_attn_with_kvcache with one query against a cache of --seqlens keys")
    pb.add_argument("--group", choices=CLI_GROUPS, metavar="NAME",
                    help="run one of the asv suite's groups, its whole grid, instead of the grid above: "
                         + ", ".join(CLI_GROUPS))
    pb.add_argument("--host-cost", action="store_true",
                    help="host time per call at tiny shapes (1 thread, batch 1, 4 heads over 2, d64, --seqlens "
                         f"default {','.join(map(str, _bench.HOST_COST_SEQLENS))}) of flash_attn_func (torch and "
                         "NumPy), flash_attn_with_kvcache and flash_attn_varlen_func against PyTorch SDPA")
    pb.add_argument("--cpu-isa", type=_csv_isas, metavar="LIST",
                    help="time the cpu backend once per kernel set, among portable,avx2,avx512,amx,neon "
                         "(FLASH_ATTN_CY_CPU_ISA per call), side by side")
    pb.add_argument("--threads", type=csv_ints, metavar="N[,N...]",
                    help="threads for flash_attn_cy's CPU backend and torch; several (e.g. 1,16): the thread-scaling "
                         "table (parallel efficiency of both, also with OMP_WAIT_POLICY=PASSIVE) on issue 20's cases "
                         "unless shapes are given")
    pb.add_argument("--cpu-time", action="store_true",
                    help="time with the calling thread's CPU time instead of wall time (needs --threads 1: on a "
                         "shared machine each side is then charged for its own work only)")
    pb.add_argument("--min-time", type=nonneg_float, default=None,
                    help=f"seconds of timed calls per side and shape (default {_bench.DEFAULT_MIN_TIME}; "
                         f"{_bench.DECODE_MIN_TIME} with --decode, {_bench.HOST_COST_MIN_TIME} with --host-cost)")
    # 3: the median of three alternating rounds ignores one call caught by a slow phase of a shared machine
    pb.add_argument("--min-reps", type=positive_int, default=3, help="calls per measurement at least (default 3)")
    pb.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    pb.add_argument("--compare", action="append", metavar="NAME", choices=_bench.COMPARISONS,
                    help="library to time beside flash_attn_cy (repeatable): torch (SDPA on the CPU), torch-mps, "
                         "mlx, copy (decode: a copy of the K/V bytes) (default: torch, with --decode also copy; on a "
                         "Mac also torch-mps and mlx when present)")
    pb.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    progress_options(pb)
    pb.add_argument("--plot", metavar="FILE.png", help="save a bar chart (needs matplotlib)")
    pb.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    pb.set_defaults(func=cmd_bench)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express: a usage error (exit 2) before anything is timed."""
    # --threads N: one count for both sides; --threads 1,N,...: the thread-scaling table (_bench_scaling)
    args.thread_counts = sorted(set(args.threads)) if args.threads else None
    args.threads = args.thread_counts[0] if args.thread_counts and len(args.thread_counts) == 1 else None
    if args.backward and args.decode:
        parser.error("--backward and --decode cannot be combined")
    if args.kv_heads and not args.decode:
        parser.error("--kv-heads is only used with --decode")
    if args.kv_heads and (args.heads or 16) % args.kv_heads:
        parser.error(f"--kv-heads {args.kv_heads} must divide --heads {args.heads or 16}")
    for mode in ("group", "host_cost"):
        if getattr(args, mode):
            allowed = ("seqlens",) if mode == "host_cost" else ()
            given = [f for f in GRID_FLAGS if f not in allowed and getattr(args, f) not in (None, False, 0)]
            if given:
                flag = "--" + mode.replace("_", "-")
                parser.error(f"{flag} takes its own cases: drop --{given[0].replace('_', '-')}")
    if args.group and args.host_cost:
        parser.error("--group and --host-cost cannot be combined")
    if args.host_cost and (args.no_torch or any(c != "torch" for c in args.compare or ())):
        parser.error("--host-cost compares with PyTorch SDPA on the CPU: drop --no-torch / --compare")
    if args.host_cost and args.backend and len(args.backend) > 1:
        parser.error("--host-cost times one backend (--backend cpu by default)")
    if args.cpu_time and args.threads != 1:
        parser.error("--cpu-time needs --threads 1 (other threads' work is not the calling thread's CPU time)")


def _import_torch(args: argparse.Namespace):
    wanted = (not args.no_torch or args.backward or args.host_cost
              or any(c.startswith("torch") for c in args.compare or ()))
    if not wanted:
        return None
    try:
        import torch

        return torch
    except ImportError:
        if not args.no_torch and not args.compare:
            print("note: PyTorch is not installed; timing flash_attn_cy only", file=sys.stderr)
        return None


def _comparisons(args: argparse.Namespace) -> Optional[List[str]]:
    """The libraries to time beside ours, or None after printing why a requested one cannot run."""
    if args.compare:
        names = list(dict.fromkeys(args.compare))
        for name in names:
            reason = _bench.comparison_available(name)
            if reason:
                print(f"error: --compare {name}: {reason}", file=sys.stderr)
                return None
        return names
    names = _bench.default_comparisons(with_torch=not args.no_torch)
    # decode is bound by memory bandwidth: time a copy of the same bytes beside it (issue 20's decode target)
    return names + ["copy"] if args.decode else names


def _dtypes(args: argparse.Namespace) -> Optional[List[str]]:
    dtypes = args.dtypes or list(_bench.DEFAULT_DTYPES)
    if "bf16" in dtypes:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            if args.dtypes:
                print("error: bf16 needs ml_dtypes (pip install ml_dtypes) or --dtypes fp32,fp16", file=sys.stderr)
                return None
            print("note: ml_dtypes is not installed, so NumPy has no bfloat16: timing fp32 only "
                  "(pip install ml_dtypes for bf16)", file=sys.stderr)
            dtypes = [d for d in dtypes if d != "bf16"]
    return dtypes


def _cases(args: argparse.Namespace, backends: List[str], comparisons: List[str], dtypes: List[str]
           ) -> Tuple[List[_bench.Shape], List[str], List[str]]:
    """(shapes, backends, comparisons) of the run."""
    if args.group:
        group = _bench.GROUPS[args.group]
        if group.impls == "sim":
            return group.shapes(), ["sim"], []
        return group.shapes(), backends, comparisons if group.impls == "all" else []
    quick = args.quick
    seqlens = args.seqlens or (_bench.QUICK_SEQLENS if quick else _bench.DEFAULT_SEQLENS)
    headdims = args.headdims or (_bench.QUICK_HEADDIMS if quick else _bench.DEFAULT_HEADDIMS)
    causal = {"both": (False, True), "true": (True,), "false": (False,)}[args.causal or "both"]
    shapes = _bench.build_shapes(seqlens, headdims, dtypes, causal, args.batch or 1, args.heads or 16,
                                 backward=args.backward, decode=args.decode, heads_kv=args.kv_heads)
    return shapes, backends, comparisons


def _header(fa, torch, hw: dict) -> None:
    threads = torch.get_num_threads() if torch is not None else None
    print(f"flash_attn_cy {getattr(fa, '__version__', '?')} on {hw['cpu']} ({hw['cores']['usable']} usable cores"
          f"{', ' + hw['gpu'] if 'gpu' in hw else ''}); torch {torch.__version__ if torch else 'absent'}"
          f"{f' with {threads} threads' if threads else ''}")
    print(f"cpu kernel path: {hw['cpu_kernel_path']}; measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        if load > 1.5 * max(1, hw["cores"]["usable"]):
            print(f"warning: load average {load:.1f} on {hw['cores']['usable']} cores: other processes compete for "
                  "the CPU and the timings below are unreliable", file=sys.stderr)


def _set_threads(fa, torch, n: Optional[int]) -> None:
    if n:
        fa.set_num_threads(n)
        if torch is not None:
            torch.set_num_threads(n)


def cmd_bench(args: argparse.Namespace) -> int:
    fa = import_package()
    if args.thread_counts and len(args.thread_counts) > 1:  # thread scaling: its own cases and table
        from . import _bench_scaling

        return _bench_scaling.cmd_scaling(args, fa)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib, which is not installed (pip install matplotlib)", file=sys.stderr)
            return 2
    torch = _import_torch(args)
    if (args.backward or args.host_cost) and torch is None:
        print(f"error: {'--backward' if args.backward else '--host-cost'} needs PyTorch "
              f"({'autograd drives the backward pass' if args.backward else 'SDPA and torch tensors are timed'})",
              file=sys.stderr)
        return 2
    comparisons, dtypes = _comparisons(args), _dtypes(args)
    if comparisons is None or dtypes is None:
        return 2
    default = ("cpu",) if args.host_cost else None
    backends = choose_backends(args.backend or default, exclude_by_default=("sim",))
    if args.group and _bench.GROUPS[args.group].impls == "sim":
        choose_backends(["sim"])  # exits 2 with the reason when the simulator is unavailable
    if args.cpu_isa:
        if "cpu" not in backends:
            print("error: --cpu-isa times the cpu backend, which is not among --backend", file=sys.stderr)
            return 2
        runnable = [isa for isa in args.cpu_isa if _cpu_isa_runs(isa)]
        if not runnable:
            print("error: this CPU can run none of the kernel sets of --cpu-isa", file=sys.stderr)
            return 2
        i = backends.index("cpu")
        backends[i:i + 1] = [f"cpu:{isa}" for isa in runnable]
    _set_threads(fa, torch, args.threads)
    hw = _sysinfo.hardware_summary()
    hw["cpu_kernel_path"] = _sysinfo.cpu_kernel_path()
    _header(fa, torch, hw)
    if args.host_cost:
        return _host_cost(args, backends[0], hw, torch)
    return _timing_table(args, fa, torch, hw, *_cases(args, backends, comparisons, dtypes))


def _run(args, what: str, shapes, run):
    report = _progress.Progress(what, len(shapes), progress_mode(args))

    def progress(row):
        ms = ", ".join(f"{k} {v:.2f} ms" if v else f"{k} -" for k, v in row.ms.items())
        report.done(f"{row.shape.label()}: {ms}")

    try:
        return run(progress=progress, started=lambda shape: report.start(shape.label()))
    finally:
        report.close()


def _clock(args):
    return time.thread_time if args.cpu_time else time.perf_counter


def _host_cost(args, backend: str, hw: dict, torch) -> int:
    seqlens = args.seqlens or _bench.HOST_COST_SEQLENS
    min_time = _bench.HOST_COST_MIN_TIME if args.min_time is None else args.min_time
    n = len(seqlens) * len(_bench.HOST_COST_CALLS)
    print(f"host cost per call: {backend} against torch on {n} cases, 1 thread each "
          f"(median of >= {args.min_reps} calls, >= {min_time}s each)\n", flush=True)
    rows = _run(args, "bench", [None] * n, lambda **kw: _bench.run_host_cost(
        seqlens, min_time=min_time, min_reps=args.min_reps, backend=backend, clock=_clock(args), **kw))
    print(_bench.format_host_cost(rows, backend, "torch"))
    _write_json(args, rows, {"hardware": hw, "versions": _sysinfo.package_versions(), "host_cost": True,
                             "backends": [backend], "comparisons": ["torch"], "threads": 1})
    return _failed(rows, [backend])


def _timing_table(args, fa, torch, hw, shapes, backends, comparisons) -> int:
    if args.min_time is None:
        decode = any(s.mode == "decode" for s in shapes)
        args.min_time = _bench.DECODE_MIN_TIME if decode else _bench.DEFAULT_MIN_TIME
    peak = None
    if not args.no_peak:
        peaks = _bench.matmul_peak_gflops()
        peak = max(peaks.values())
        print("fp32 matmul peak (1024^3): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"timing {', '.join(backends) or '(no backend)'}"
          f"{' against ' + ', '.join(comparisons) if comparisons else ''} on "
          f"{len(shapes)} shapes (median of >= {args.min_reps} calls, >= {args.min_time}s each)\n", flush=True)
    kw = {"clock": time.thread_time} if args.cpu_time else {}
    rows = _run(args, "bench", shapes, lambda **p: _bench.run_bench(
        shapes, backends, comparisons, min_time=args.min_time, min_reps=args.min_reps, **p, **kw))
    if peak is not None:
        # measured again after the run: on a shared machine one measurement can catch a busy moment
        peaks2 = _bench.matmul_peak_gflops()
        if max(peaks2.values()) > peak:
            peak = max(peaks2.values())
            print("fp32 matmul peak re-measured after the run: " +
                  ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks2.items()))
    print(_bench.format_table(rows, backends, comparisons, peak))
    for c in comparisons:
        for be in backends:
            ratios = [r.ms[c] / r.ms[be] for r in rows if r.ms.get(be) and r.ms.get(c)]
            if ratios and c == "copy":
                print(f"{be}'s K/V read rate as a share of the copy's, geometric mean: {_bench.geomean(ratios):.2f} "
                      f"(lowest {min(ratios):.2f})")
            elif ratios:
                print(f"geometric mean speed-up of {be} over {c}: {_bench.geomean(ratios):.2f}x")
    threads = torch.get_num_threads() if torch is not None else None
    _write_json(args, rows, {"hardware": hw, "versions": _sysinfo.package_versions(), "matmul_peak_gflops": peak,
                             "backends": list(backends), "comparisons": comparisons, "torch_threads": threads})
    if args.plot:
        names = list(backends) + comparisons
        _bench.plot(rows, names, args.plot, f"flash_attn_cy {getattr(fa, '__version__', '')} on {hw['cpu']}",
                    peak=peak)
        print(f"wrote {args.plot}")
    return _failed(rows, backends)


def _write_json(args, rows, meta: dict) -> None:
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(_bench.to_json(rows, meta))
        print(f"wrote {args.json}")


def _failed(rows, backends) -> int:
    """1 when one of our backends failed a case (n/a is not a failure), else 0."""
    return int(any(r.ms.get(be) is None and not r.notes.get(be, "").startswith("n/a") for r in rows
                   for be in backends))
