"""Command line of the Metal simulator.

    python -m flash_attn_cy.sim run FILE.metal --kernel NAME --grid X[,Y[,Z]] --threadgroup X[,Y[,Z]]
        [--buffer INDEX=PATH.npy | --buffer INDEX=zeros:DTYPE:COUNT]... [--bytes INDEX=DTYPE:V1[,V2,...]]...
        [--constant NAME=VALUE | --constant INDEX=VALUE]... [-D NAME[=VALUE]]... [--threadgroup-memory INDEX=BYTES]...
        [--schedules N] [--schedule-mode interleaved|run-ahead|mixed] [--no-hazards] [--fast-math]
        [--only-kernel] [--out DIR]
    python -m flash_attn_cy.sim profile FILE.metal <the arguments of run> [--json] [--chip NAME] [--useful-flops N]
    python -m flash_attn_cy.sim check [-D NAME[=VALUE]]... FILE.metal...

Exit status: 0 clean, 1 faults found (run, profile) or check failed (check), 2 usage or translation/compile error,
130 interrupted (Ctrl-C stops a run promptly, even a kernel stuck in a loop).

Simulating a kernel means compiling it as C++ and running it as a native program inside this process: simulate only
files you trust (see TRUST below).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from . import _compile, chips
from ._constants import normalize_defines, parse_constant_value
from ._profile import format_dispatch, profile
from ._run import run
from .check import check_files, find_clang
from .translate import TranslateError

DTYPES = ("float32", "float16", "bfloat16", "int32", "uint32", "int64", "uint64", "int8", "uint8", "bool")


class UsageError(ValueError):
    pass


def _dtype(name: str) -> np.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r} (one of {', '.join(DTYPES)})")
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise UsageError("bfloat16 needs the ml_dtypes package (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _dims(s: str, opt: str) -> List[int]:
    try:
        v = [int(x) for x in s.split(",")]
    except ValueError:
        raise UsageError(f"{opt} expects X[,Y[,Z]] positive integers, got {s!r}") from None
    if not 1 <= len(v) <= 3 or min(v) < 1:
        raise UsageError(f"{opt} expects X[,Y[,Z]] positive integers, got {s!r}")
    if max(v) > 2**32 - 1:
        raise UsageError(f"{opt}: each size must be at most 2**32 - 1 = {2**32 - 1} (Metal's sizes are 32-bit), "
                         f"got {s!r}")
    return v


def _split_index(s: str, opt: str):
    k, sep, rest = s.partition("=")
    if not sep or not k.strip().isdigit() or not 0 <= int(k) <= 30:
        raise UsageError(f"{opt} expects INDEX=..., INDEX in 0..30, got {s!r}")
    return int(k), rest


def _buffer(s: str) -> (int, np.ndarray):
    k, rest = _split_index(s, "--buffer")
    if rest.startswith("zeros:"):
        parts = rest.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise UsageError(f"--buffer expects INDEX=zeros:DTYPE:COUNT, got {s!r}")
        dt, count = _dtype(parts[1]), int(parts[2])
        try:
            return k, np.zeros(count, dtype=dt)
        except (MemoryError, ValueError) as e:
            raise UsageError(f"--buffer {s!r}: cannot allocate {count} x {dt.itemsize} = {count * dt.itemsize} bytes "
                             f"({type(e).__name__})") from None
    if not os.path.isfile(rest):
        raise UsageError(f"--buffer {s!r}: no such file {rest!r}")
    try:
        return k, np.load(rest, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises several types for a bad file
        raise UsageError(f"--buffer {s!r}: cannot load {rest!r} as .npy: {e}") from None


def _bytes(s: str) -> (int, bytes):
    k, rest = _split_index(s, "--bytes")
    dt, sep, vals = rest.partition(":")
    if not sep or not vals:
        raise UsageError(f"--bytes expects INDEX=DTYPE:V1[,V2,...], got {s!r}")
    dtype = _dtype(dt)
    try:
        if dtype == np.bool_:
            items = [v.strip().lower() in ("1", "true") for v in vals.split(",")]
        elif dtype.kind in "iu":
            items = [int(v, 0) for v in vals.split(",")]
        else:
            items = [float(v) for v in vals.split(",")]
        return k, np.array(items, dtype=dtype).tobytes()
    except (ValueError, OverflowError) as e:
        raise UsageError(f"--bytes {s!r}: {e}") from None


def _constants(specs: List[str]) -> Dict[str, object]:
    """--constant NAME=VALUE or INDEX=VALUE (VALUE: true/false, an integer or a number)."""
    out: Dict[str, object] = {}
    for s in specs:
        key, sep, value = s.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise UsageError(f"--constant expects NAME=VALUE or INDEX=VALUE, got {s!r}")
        if key in out:
            raise UsageError(f"--constant {key} given twice")
        try:
            out[key] = parse_constant_value(value)
        except ValueError as e:
            raise UsageError(f"--constant {s!r}: {e}") from None
    return out


def _tg_memory(specs: List[str]) -> Dict[int, int]:
    """--threadgroup-memory INDEX=BYTES."""
    out: Dict[int, int] = {}
    for s in specs:
        k, rest = _split_index(s, "--threadgroup-memory")
        if not rest.strip().isdigit():
            raise UsageError(f"--threadgroup-memory expects INDEX=BYTES, got {s!r}")
        if k in out:
            raise UsageError(f"--threadgroup-memory index {k} given twice")
        out[k] = int(rest)
    return out


def _run_args(a: argparse.Namespace):
    """Runs the dispatch `run` and `profile` describe; returns the SimResult."""
    if not os.path.isfile(a.file):
        raise UsageError(f"no such file {a.file!r} (run takes the path of a .metal file)")
    buffers: Dict[int, np.ndarray] = {}
    for s in a.buffer:
        k, arr = _buffer(s)
        if k in buffers:
            raise UsageError(f"--buffer index {k} given twice")
        buffers[k] = arr
    byts: Dict[int, bytes] = {}
    for s in a.bytes:
        k, raw = _bytes(s)
        if k in byts or k in buffers:
            raise UsageError(f"--bytes index {k} already bound")
        byts[k] = raw
    if not 1 <= a.schedules <= 2**31 - 1:
        raise UsageError(f"--schedules must be in [1, 2**31 - 1], got {a.schedules}")
    if a.fast_math:  # read by the runtime at every launch (csrc/sim/include/fasim_fast_math.h)
        os.environ["FLASH_ATTN_CY_SIM_FAST_MATH"] = "1"

    return run(a.file, a.kernel, _dims(a.grid, "--grid"), _dims(a.threadgroup, "--threadgroup"), buffers, byts,
               a.schedules, include_dirs=a.include, defines=a.define, constants=_constants(a.constant),
               threadgroup_memory=_tg_memory(a.threadgroup_memory), hazards=a.hazards, schedule_mode=a.schedule_mode,
               only_kernel=a.only_kernel)


def _save_buffers(a: argparse.Namespace, res) -> None:
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        for k, arr in res.buffers.items():
            np.save(os.path.join(a.out, f"buffer{k}.npy"), arr)


def cmd_run(a: argparse.Namespace) -> int:
    res = _run_args(a)
    for f in res.faults:
        print(f"{f.kind}: {f.message}")
    _save_buffers(a, res)
    if not res.faults:
        print(f"ok: {a.kernel}: no faults ({a.schedules} schedule(s))")
    return 1 if res.faults else 0


def cmd_profile(a: argparse.Namespace) -> int:
    chip = chips.chip(a.chip) if a.chip else None  # a bad name fails before the kernel runs
    if a.useful_flops is not None and a.useful_flops < 0:
        raise UsageError(f"--useful-flops must be >= 0, got {a.useful_flops}")
    with profile() as p:
        res = _run_args(a)
    _save_buffers(a, res)
    roof = p.roofline(chip.name, a.useful_flops) if chip else None
    if a.json:
        doc = {"dispatches": [dict(d, buffers={str(i): b for i, b in d["buffers"].items()}) for d in p.dispatches],
               "faults": [{"kind": f.kind, "message": f.message} for f in res.faults]}
        if roof is not None:
            doc["roofline"] = roof.as_dict()
        print(json.dumps(doc, indent=1))
    else:
        for f in res.faults:
            print(f"{f.kind}: {f.message}")
        for d in p.dispatches:
            print(format_dispatch(d))
        if roof is not None:
            print(roof)
    return 1 if res.faults else 0


def cmd_check(a: argparse.Namespace) -> int:
    if not find_clang():
        print("error: the strict check needs clang++ (none found; set FLASH_ATTN_CY_CLANG)", file=sys.stderr)
        return 2
    bad = 0
    for r in check_files(a.files, a.include, dict(normalize_defines(a.define))):
        if r.ok:
            print(f"ok: {r.path}")
        else:
            bad += 1
            print(f"FAILED: {r.path}\n{r.message}")
    return 1 if bad else 0


TRUST = """\
trust: simulating a kernel means compiling the .metal file as C++ and running it as a native program inside this
process, with your rights. `run` and `check` refuse files outside the MSL subset (extern, asm, calls to anything but
the MSL built-ins and the file's own functions, code run at load time, includes other than <metal_*> and files beside
the kernel; see kernels/README.md, 'Trust'), but that is a filter, not a sandbox: a kernel can still forge a pointer
and write anywhere in the process. Simulate only files you trust."""


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flash_attn_cy.sim", description="Metal simulator", epilog=TRUST,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one dispatch of a kernel and report faults (runs the file as native code: "
                       "trusted files only)", epilog=TRUST, formatter_class=argparse.RawDescriptionHelpFormatter)
    pr = sub.add_parser("profile", help="run one dispatch like `run` and report its work counters (memory traffic, "
                        "simdgroup_matrix products, barriers, flops, threadgroup and thread-private memory) and, with "
                        "--chip, the roofline lower bound on its time on that Apple GPU", epilog=TRUST,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.add_argument("--json", action="store_true", help="print the counters (and roofline) as JSON")
    pr.add_argument("--chip", help="Apple GPU for the roofline: " + ", ".join(chips.chip_names()))
    pr.add_argument("--useful-flops", type=float, help="the kernel's useful flops (e.g. an attention's 4*N*M*d per "
                    "head), for the roofline's useful / simdgroup_matrix flops ratio")
    for r in (r, pr):
        _add_run_arguments(r)
    c = sub.add_parser("check", help="strict clang check with MSL address spaces")
    c.add_argument("files", nargs="+")
    c.add_argument("-I", "--include", action="append", default=[])
    c.add_argument("-D", "--define", action="append", default=[], metavar="NAME[=VALUE]",
                   help="define a preprocessor macro (VALUE defaults to 1)")
    a = p.parse_args(argv)
    try:
        return {"run": cmd_run, "profile": cmd_profile, "check": cmd_check}[a.cmd](a)
    except (UsageError, TranslateError, _compile.SimCompileError, ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"error: out of memory: {e or 'an allocation failed'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _add_run_arguments(r: argparse.ArgumentParser) -> None:
    """The arguments of `run`, which `profile` takes too."""
    r.add_argument("file")
    r.add_argument("--kernel", required=True)
    r.add_argument("--grid", required=True, help="threadgroups per grid X[,Y[,Z]]")
    r.add_argument("--threadgroup", required=True, help="threads per threadgroup X[,Y[,Z]]")
    r.add_argument("--buffer", action="append", default=[], help="INDEX=PATH.npy or INDEX=zeros:DTYPE:COUNT")
    r.add_argument("--bytes", action="append", default=[], help="INDEX=DTYPE:V1[,V2,...] (setBytes)")
    r.add_argument("--schedules", type=int, default=3,
                   help="runs under different thread orders whose results are compared (default 3)")
    r.add_argument("--schedule-mode", choices=("interleaved", "run-ahead", "mixed"), default="mixed",
                   help="thread orders of those runs: interleaved (every ready thread one step at a time), run-ahead "
                        "(each SIMD group runs ahead of the others up to its next threadgroup barrier, in forward, "
                        "reverse and random SIMD-group order) or mixed (both; default)")
    r.add_argument("--no-hazards", dest="hazards", action="store_false",
                   help="turn the hazard detector off (on by default: every load and store of the first run is "
                        "checked, and races are reported naming both threads and source lines; the kernel is then "
                        "compiled with instrumentation and its first run takes about twice the CPU time)")
    r.add_argument("--out", help="write buffer<INDEX>.npy files here")
    r.add_argument("--only-kernel", action="store_true",
                   help="compile only --kernel and what it uses, not every kernel of the file (files of hundreds of "
                        "kernels, e.g. llama.cpp's ggml-metal.metal)")
    r.add_argument("-I", "--include", action="append", default=[], help="extra directory for #include \"...\"")
    r.add_argument("--fast-math", action="store_true",
                   help="model Metal's default fast math: transcendental functions at the MSL specification's error "
                        "bounds (Table 8.2), denormals flushed, NaN/Inf and out-of-range arguments reported as "
                        "fast-math-hazard (same as FLASH_ATTN_CY_SIM_FAST_MATH=1)")
    r.add_argument("-D", "--define", action="append", default=[], metavar="NAME[=VALUE]",
                   help="define a preprocessor macro (VALUE defaults to 1)")
    r.add_argument("--threadgroup-memory", action="append", default=[], metavar="INDEX=BYTES",
                   help="length of a [[threadgroup(INDEX)]] argument (setThreadgroupMemoryLength; multiple of 16)")
    r.add_argument("--constant", action="append", default=[], metavar="NAME=VALUE",
                   help="function constant value ([[function_constant(INDEX)]]), by name or INDEX=VALUE; VALUE is "
                        "true/false, an integer or a number, converted to the declared type")


if __name__ == "__main__":
    sys.exit(main())
