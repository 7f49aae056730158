"""What the command line's subcommands share (cli.py: info, verify, demo; _bench_cli.py: bench): importing the
package with its extension, the argument types, choosing backends, the progress option."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

from . import _sysinfo


def import_package():
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


def csv_ints(text: str) -> List[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def csv_headdims(text: str) -> List[int]:
    vals = csv_ints(text)
    bad = [v for v in vals if v > 256]
    if bad:  # rejected before any timing: every flash_attn_cy backend would fail on each such shape
        raise argparse.ArgumentTypeError(f"head dims must be in 1..256, got {text!r}")
    return vals


def csv_dtypes(text: str) -> List[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in vals if v not in ("fp32", "fp16", "bf16")]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"dtypes must be among fp32,fp16,bf16; got {text!r}")
    return vals


def _number(text: str, convert, bad, kind: str, wanted: str):
    """text converted by `convert` (int, float), or argparse's error naming what was wanted when it does not convert
    or bad(value)."""
    try:
        v = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if bad(v):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v <= 0, "a positive integer", "a positive integer")


def nonneg_float(text: str) -> float:
    return _number(text, float, lambda v: v < 0, "a number", "a non-negative number")


def choose_backends(requested: Optional[Sequence[str]], *, exclude_by_default=()) -> List[str]:
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


def progress_mode(args: argparse.Namespace) -> str:
    """--quiet: none; --progress: a line per finished case even on a terminal; else a live line on a terminal."""
    if args.quiet:
        return "quiet"
    return "lines" if args.progress else "auto"


def progress_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quiet", "-q", action="store_true", help="no progress report on stderr")
    g.add_argument("--progress", action="store_true",
                   help="a line per finished case on stderr even on a terminal (default there: one live line with "
                        "case i of n, elapsed time and ETA; elsewhere a line per case)")
