"""Command line: ``python -m flash_attn_cy {info,verify,bench,demo}``.

- ``info``    version, backends (and why one is missing), build, package versions, hardware.
- ``verify``  every backend present against the float64 reference on built-in shapes; exit 1 on any failure.
- ``bench``   every backend present against PyTorch's scaled_dot_product_attention on built-in shapes.
- ``demo``    the README's main job: ``verify --quick`` then ``bench --quick``.

No arguments print the help and the commands. ``verify``, ``bench`` and ``demo`` report progress on stderr
(flash_attn_cy/_progress.py; ``--quiet`` silences it); their results go to stdout.

Exit status: 0 success, 1 a check failed (verify) or a run failed (bench), 2 bad arguments or a missing optional
dependency that was explicitly asked for (argparse's convention).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional, Sequence

from . import _progress, _sysinfo


def _package_version() -> str:
    """The installed distribution's version (no import of the compiled extension, so it works when that is broken)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("flash_attn_cy")
    except (ImportError, PackageNotFoundError):
        return "unknown"


def _import_package():
    """The package with its compiled extension, or a clear message and exit 1."""
    try:
        import flash_attn_cy
        from flash_attn_cy import _core  # noqa: F401
    except ImportError as e:
        here = os.path.abspath(os.getcwd())
        hint = ""
        if os.path.isdir(os.path.join(here, "flash_attn_cy")) and os.path.isfile(os.path.join(here, "meson.build")):
            hint = ("\nYou are in the source tree: its flash_attn_cy/ has no compiled extension and shadows the "
                    "installed package. Run from another directory (e.g. `cd /tmp`) or use `python -P -m ...`.")
        print(f"error: flash_attn_cy's compiled extension cannot be imported: {e}{hint}", file=sys.stderr)
        raise SystemExit(1)
    return flash_attn_cy


def _csv_ints(text: str) -> List[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _csv_headdims(text: str) -> List[int]:
    vals = _csv_ints(text)
    bad = [v for v in vals if v > 256]
    if bad:  # rejected before any timing: every flash_attn_cy backend would fail on each such shape
        raise argparse.ArgumentTypeError(f"head dims must be in 1..256, got {text!r}")
    return vals


def _csv_dtypes(text: str) -> List[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in vals if v not in ("fp32", "fp16", "bf16")]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"dtypes must be among fp32,fp16,bf16; got {text!r}")
    return vals


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return v


def _choose_backends(requested: Optional[Sequence[str]], *, exclude_by_default=()) -> List[str]:
    """Available backends, or the requested ones after checking that they exist and are available."""
    status = _sysinfo.backend_status()
    if not status:
        print("error: flash_attn_cy.backends() reports no backends", file=sys.stderr)
        raise SystemExit(1)
    if not requested:
        return [n for n, r in status.items() if r.get("available") and n not in exclude_by_default]
    chosen = []
    for name in requested:
        if name not in status:
            print(f"error: --backend: unknown backend {name!r}; this build has {', '.join(status)}", file=sys.stderr)
            raise SystemExit(2)
        if not status[name].get("available"):
            print(f"error: --backend: {name!r} is not available here: {status[name].get('reason')}", file=sys.stderr)
            raise SystemExit(2)
        chosen.append(name)
    return chosen


def _progress_mode(args: argparse.Namespace) -> str:
    """--quiet: none; --progress: a line per finished case even on a terminal; else a live line on a terminal."""
    if args.quiet:
        return "quiet"
    return "lines" if args.progress else "auto"


# --------------------------------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace) -> int:
    fa = _import_package()
    info = {"version": getattr(fa, "__version__", "unknown"), "package": os.path.dirname(fa.__file__)}
    status = _sysinfo.backend_status()
    core = fa._core
    describe = getattr(core, "backend_describe", None)
    for name, rec in status.items():
        if describe is not None and rec.get("available") and "description" not in rec:
            try:
                rec["description"] = describe(name)
            except Exception:  # noqa: BLE001 - a description is optional
                pass
    info["backends"] = status
    info["build"] = {"extension": getattr(core, "__file__", "?")}
    build = getattr(fa, "build_info", None) or getattr(core, "build_info", None)
    if callable(build):
        try:
            extra = build()
            info["build"].update(extra if isinstance(extra, dict) else {"details": extra})
        except Exception as e:  # noqa: BLE001 - report, do not fail `info`
            info["build"]["details"] = f"unavailable: {e}"
    get_threads = getattr(fa, "get_num_threads", None) or getattr(core, "get_num_threads", None)
    if callable(get_threads):
        info["cpu_threads"] = get_threads()
    info["versions"] = _sysinfo.package_versions()
    info["hardware"] = _sysinfo.hardware_summary()
    info["hardware"]["cpu_kernel_path"] = _sysinfo.cpu_kernel_path()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"flash_attn_cy {info['version']}  ({info['package']})")
    print("\nbackends:")
    for name, rec in status.items():
        mark = "yes" if rec.get("available") else "no "
        extra = rec.get("description") or rec.get("reason") or ""
        print(f"  {name:<6} {mark}  {extra}")
    print("\nbuild:")
    for k, v in info["build"].items():
        print(f"  {k}: {v}")
    if "cpu_threads" in info:
        print(f"\ncpu backend threads: {info['cpu_threads']}")
    print("\nversions:")
    print("  " + ", ".join(f"{k} {v if v else '(not installed)'}" for k, v in info["versions"].items()))
    hw = info["hardware"]
    print("\nhardware:")
    print(f"  platform: {hw['platform']}")
    print(f"  cpu:      {hw['cpu']}")
    print(f"  kernels:  {hw['cpu_kernel_path']}  (the CPU backend's kernel path in use)")
    print(f"  features: {' '.join(hw['cpu_features']) or '(none detected)'}")
    print(f"  cores:    " + ", ".join(f"{k} {v}" for k, v in hw["cores"].items()))
    print(f"  memory:   {hw['memory_gib']} GiB" if hw["memory_gib"] else "  memory:   unknown")
    if "gpu" in hw:
        print(f"  gpu:      {hw['gpu']}")
    return 0


# --------------------------------------------------------------------------------------------------------------------
# verify


def cmd_verify(args: argparse.Namespace) -> int:
    _import_package()
    from . import _verify

    backends = _choose_backends(args.backend)
    if not backends:
        print("error: no backend available to verify", file=sys.stderr)
        return 1
    dtypes = args.dtypes or ["fp32", "fp16", "bf16"]
    if args.dtypes is None:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            print("note: ml_dtypes is not installed, so NumPy has no bfloat16: bf16 is not checked "
                  "(pip install ml_dtypes)", file=sys.stderr)
            dtypes.remove("bf16")
    print(f"verifying {', '.join(backends)} against the float64 reference "
          f"({'quick' if args.quick else 'full'} grid, dtypes {','.join(dtypes)}); rule: "
          "max err <= 2 x error of the reference computed in the dtype + floor")
    t0 = time.perf_counter()
    cases = _verify.builtin_cases(args.quick)
    if args.case:
        cases = [c for c in cases if any(p.lower() in c.name.lower() for p in args.case)]
        if not cases:
            names = ", ".join(c.name for c in _verify.builtin_cases(args.quick))
            print(f"error: --case: no built-in case matches {args.case}; cases: {names}", file=sys.stderr)
            return 2
    report = _progress.Progress("verify", len(backends) * len(cases) * len(dtypes), _progress_mode(args))

    def progress(r):
        report.done(f"{r.backend} {r.case} {r.dtype} {r.status} in {r.seconds:.2f}s")

    try:
        results = _verify.run_verify(backends, dtypes=dtypes, seed=args.seed, progress=progress, cases=cases,
                                     started=report.start)
    finally:
        report.close()
    print(_verify.format_table(results, verbose=args.verbose))
    passed, failed, na = _verify.summary(results)
    print(f"\n{passed} passed, {failed} failed, {na} not applicable in {time.perf_counter() - t0:.1f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([r.__dict__ for r in results], f, indent=2, default=str)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------------------------
# bench


def cmd_bench(args: argparse.Namespace) -> int:
    fa = _import_package()
    from . import _bench

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib, which is not installed (pip install matplotlib)", file=sys.stderr)
            return 2
    torch = None
    if not args.no_torch or args.backward or any(c.startswith("torch") for c in args.compare or ()):
        try:
            import torch
        except ImportError:
            if not args.no_torch and not args.compare:
                print("note: PyTorch is not installed; timing flash_attn_cy only", file=sys.stderr)
    if args.backward and torch is None:
        print("error: --backward needs PyTorch (autograd drives the backward pass)", file=sys.stderr)
        return 2
    if args.compare:
        comparisons = list(dict.fromkeys(args.compare))
        for name in comparisons:
            reason = _bench.comparison_available(name)
            if reason:
                print(f"error: --compare {name}: {reason}", file=sys.stderr)
                return 2
    else:
        comparisons = _bench.default_comparisons(with_torch=not args.no_torch)
    dtypes = args.dtypes or list(_bench.DEFAULT_DTYPES)
    if "bf16" in dtypes:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            if args.dtypes:
                print("error: bf16 needs ml_dtypes (pip install ml_dtypes) or --dtypes fp32,fp16", file=sys.stderr)
                return 2
            print("note: ml_dtypes is not installed, so NumPy has no bfloat16: timing fp32 only "
                  "(pip install ml_dtypes for bf16)", file=sys.stderr)
            dtypes = [d for d in dtypes if d != "bf16"]
    if args.threads and len(set(args.threads)) > 1:  # thread scaling: its own cases and table
        from . import _bench_scaling

        return _bench_scaling.cmd_scaling(args, fa)
    backends = _choose_backends(args.backend, exclude_by_default=("sim",))
    if args.threads:
        setter = getattr(fa, "set_num_threads", None) or getattr(fa._core, "set_num_threads", None)
        if setter:
            setter(args.threads[0])
        if torch is not None:
            torch.set_num_threads(args.threads[0])

    if args.min_time is None:
        args.min_time = _bench.DECODE_MIN_TIME if args.decode else _bench.DEFAULT_MIN_TIME
    quick = args.quick
    seqlens = args.seqlens or (_bench.QUICK_SEQLENS if quick else _bench.DEFAULT_SEQLENS)
    headdims = args.headdims or (_bench.QUICK_HEADDIMS if quick else _bench.DEFAULT_HEADDIMS)
    causal = {"both": (False, True), "true": (True,), "false": (False,)}[args.causal]
    shapes = _bench.build_shapes(seqlens, headdims, dtypes, causal, args.batch, args.heads,
                                 backward=args.backward, decode=args.decode, heads_kv=args.kv_heads)
    hw = _sysinfo.hardware_summary()
    hw["cpu_kernel_path"] = _sysinfo.cpu_kernel_path()
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
    peak = None
    if not args.no_peak:
        peaks = _bench.matmul_peak_gflops()
        peak = max(peaks.values())
        print("fp32 matmul peak (1024^3): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    print(f"timing {', '.join(backends) or '(no backend)'}"
          f"{' against ' + ', '.join(comparisons) if comparisons else ''} on "
          f"{len(shapes)} shapes (median of >= {args.min_reps} calls, >= {args.min_time}s each)\n", flush=True)

    report = _progress.Progress("bench", len(shapes), _progress_mode(args))

    def progress(row):
        ms = ", ".join(f"{k} {v:.2f} ms" if v else f"{k} -" for k, v in row.ms.items())
        report.done(f"{row.shape.label()}: {ms}")

    try:
        rows = _bench.run_bench(shapes, backends, comparisons, min_time=args.min_time, min_reps=args.min_reps,
                                progress=progress, started=lambda shape: report.start(shape.label()))
    finally:
        report.close()
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
            if ratios:
                print(f"geometric mean speed-up of {be} over {c}: {_bench.geomean(ratios):.2f}x")
    meta = {"hardware": hw, "versions": _sysinfo.package_versions(), "matmul_peak_gflops": peak,
            "backends": list(backends), "comparisons": comparisons, "torch_threads": threads}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(_bench.to_json(rows, meta))
        print(f"wrote {args.json}")
    if args.plot:
        names = list(backends) + comparisons
        _bench.plot(rows, names, args.plot, f"flash_attn_cy {getattr(fa, '__version__', '')} on {hw['cpu']}",
                    peak=peak)
        print(f"wrote {args.plot}")
    failed = any(r.ms.get(be) is None and not r.notes.get(be, "").startswith("n/a") for r in rows for be in backends)
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------------------------
# demo = verify --quick + bench --quick


def cmd_demo(args: argparse.Namespace) -> int:
    parser = build_parser()
    flags = ["--quiet"] if args.quiet else ["--progress"] if args.progress else []
    rc = cmd_verify(parser.parse_args(["verify", "--quick", *flags]))
    print()
    rc_bench = cmd_bench(parser.parse_args(["bench", "--quick", *flags]))
    return rc or rc_bench


# --------------------------------------------------------------------------------------------------------------------


def _progress_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", "-q", action="store_true", help="no progress report on stderr")
    g.add_argument("--progress", action="store_true",
                   help="a line per finished case on stderr even on a terminal (default there: one live line with "
                        "case i of n, elapsed time and ETA; elsewhere a line per case)")


def build_parser() -> argparse.ArgumentParser:
    from . import _bench  # defaults and choices of `bench` (imports NumPy only, not torch)

    p = argparse.ArgumentParser(prog="python -m flash_attn_cy",
                                description="flash_attn_cy: FlashAttention-2 for Apple Silicon and CPUs.",
                                epilog="`python -m flash_attn_cy COMMAND --help` lists a command's options.")
    p.add_argument("--version", action="version", version=f"flash_attn_cy {_package_version()}")
    sub = p.add_subparsers(dest="command", metavar="{info,verify,bench,demo}")
    sub.required = True

    pi = sub.add_parser("info", help="version, backends, build options and hardware")
    pi.add_argument("--json", action="store_true", help="print as JSON")
    pi.set_defaults(func=cmd_info)

    pv = sub.add_parser("verify", help="check every backend against the float64 reference")
    pv.add_argument("--backend", action="append", metavar="NAME",
                    help="backend to check (repeatable; default: every available backend)")
    pv.add_argument("--quick", action="store_true", help="one small case per feature")
    pv.add_argument("--dtypes", type=_csv_dtypes, default=None, metavar="LIST",
                    help="comma-separated among fp32,fp16,bf16 (default: all)")
    pv.add_argument("--case", action="append", metavar="TEXT",
                    help="only cases whose name contains TEXT (repeatable), e.g. --case kvcache --case varlen")
    pv.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    pv.add_argument("--verbose", "-v", action="store_true", help="one line per checked quantity")
    _progress_options(pv)
    pv.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    pv.set_defaults(func=cmd_verify)

    pb = sub.add_parser("bench", help="time backends against PyTorch scaled_dot_product_attention")
    pb.add_argument("--backend", action="append", metavar="NAME",
                    help="backend to time (repeatable; default: every available backend except sim)")
    pb.add_argument("--quick", action="store_true", help="fewer shapes (seqlen 512,2048; head dim 64)")
    pb.add_argument("--seqlens", type=_csv_ints, metavar="LIST", help="e.g. 512,2048,4096 (key length for --decode)")
    pb.add_argument("--headdims", type=_csv_headdims, metavar="LIST", help="e.g. 64,128")
    pb.add_argument("--dtypes", type=_csv_dtypes, default=None, metavar="LIST",
                    help="comma-separated among fp32,fp16,bf16 (default fp32,bf16)")
    pb.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    pb.add_argument("--heads", type=_positive_int, default=16, help="number of heads (default 16)")
    pb.add_argument("--kv-heads", type=_positive_int, default=0, metavar="N",
                    help="K/V heads for --decode (GQA/MQA; must divide --heads; default: --heads)")
    pb.add_argument("--causal", choices=["both", "true", "false"], default="both", help="default: both")
    pb.add_argument("--backward", action="store_true", help="time forward + backward (needs PyTorch)")
    pb.add_argument("--decode", action="store_true",
                    help="time flash_attn_with_kvcache with one query against a cache of --seqlens keys")
    pb.add_argument("--threads", type=_csv_ints, metavar="N[,N...]",
                    help="threads for flash_attn_cy's CPU backend and torch; several (e.g. 1,16): the thread-scaling "
                         "table (parallel efficiency of both, also with OMP_WAIT_POLICY=PASSIVE) on issue 20's cases "
                         "unless shapes are given")
    pb.add_argument("--min-time", type=_nonneg_float, default=None,
                    help=f"seconds of timed calls per side and shape (default {_bench.DEFAULT_MIN_TIME}; "
                         f"{_bench.DECODE_MIN_TIME} with --decode)")
    # 3: the median of three alternating rounds ignores one call caught by a slow phase of a shared machine
    pb.add_argument("--min-reps", type=_positive_int, default=3, help="calls per measurement at least (default 3)")
    pb.add_argument("--no-torch", action="store_true", help="do not time PyTorch")
    from ._bench import COMPARISONS

    pb.add_argument("--compare", action="append", metavar="NAME", choices=COMPARISONS,
                    help="library to time beside flash_attn_cy (repeatable): torch (SDPA on the CPU), torch-mps, "
                         "mlx (default: torch; on a Mac also torch-mps and mlx when present)")
    pb.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    _progress_options(pb)
    pb.add_argument("--plot", metavar="FILE.png", help="save a bar chart (needs matplotlib)")
    pb.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    pb.set_defaults(func=cmd_bench)

    pd = sub.add_parser("demo", help="verify --quick, then bench --quick (the README's main job)")
    _progress_options(pd)
    pd.set_defaults(func=cmd_demo)
    return p


def _output_path_problem(path: str) -> Optional[str]:
    """Why `path` cannot be written as an output file, or None: checked before a long run, not after it."""
    if os.path.isdir(path):
        return f"{path!r} is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    if not os.access(parent, os.W_OK):
        return f"directory {parent!r} is not writable"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a first try with no arguments: show what there is rather than a usage error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if getattr(args, "backward", False) and getattr(args, "decode", False):
        parser.error("--backward and --decode cannot be combined")
    kv_heads = getattr(args, "kv_heads", 0)
    if kv_heads and not getattr(args, "decode", False):
        parser.error("--kv-heads is only used with --decode")
    if kv_heads and args.heads % kv_heads:
        parser.error(f"--kv-heads {kv_heads} must divide --heads {args.heads}")
    for flag in ("json", "plot"):
        path = getattr(args, flag, None)
        if isinstance(path, str):  # `info --json` is a switch, not a file
            problem = _output_path_problem(path)
            if problem:
                parser.error(f"--{flag}: cannot write {path!r}: {problem}")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
