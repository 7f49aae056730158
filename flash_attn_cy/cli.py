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
from typing import Optional, Sequence

from . import _bench_cli, _progress, _sysinfo  # _bench_cli: `bench` (imports NumPy only, not torch)
from ._cli_common import choose_backends, csv_dtypes, import_package, progress_mode, progress_options


def _package_version() -> str:
    """The installed distribution's version (no import of the compiled extension, so it works when that is broken)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("flash_attn_cy")
    except (ImportError, PackageNotFoundError):
        return "unknown"


# --------------------------------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace) -> int:
    fa = import_package()
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
    import_package()
    from . import _verify

    backends = choose_backends(args.backend)
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
    report = _progress.Progress("verify", len(backends) * len(cases) * len(dtypes), progress_mode(args))

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
# demo = verify --quick + bench --quick


def cmd_demo(args: argparse.Namespace) -> int:
    parser = build_parser()
    flags = ["--quiet"] if args.quiet else ["--progress"] if args.progress else []
    rc = cmd_verify(parser.parse_args(["verify", "--quick", *flags]))
    print()
    rc_bench = _bench_cli.cmd_bench(parser.parse_args(["bench", "--quick", *flags]))
    return rc or rc_bench


# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
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
    pv.add_argument("--dtypes", type=csv_dtypes, default=None, metavar="LIST",
                    help="comma-separated among fp32,fp16,bf16 (default: all)")
    pv.add_argument("--case", action="append", metavar="TEXT",
                    help="only cases whose name contains TEXT (repeatable), e.g. --case kvcache --case varlen")
    pv.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    pv.add_argument("--verbose", "-v", action="store_true", help="one line per checked quantity")
    progress_options(pv)
    pv.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    pv.set_defaults(func=cmd_verify)

    _bench_cli.add_parser(sub)

    pd = sub.add_parser("demo", help="verify --quick, then bench --quick (the README's main job)")
    progress_options(pd)
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
    if args.command == "bench":
        _bench_cli.check_args(parser, args)
    for flag in ("json", "plot"):
        path = getattr(args, flag, None)
        if isinstance(path, str):  # `info --json` is a switch, not a file
            problem = _output_path_problem(path)
            if problem:
                parser.error(f"--{flag}: cannot write {path!r}: {problem}")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
