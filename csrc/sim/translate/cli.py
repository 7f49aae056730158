"""Build-time entry of the translator: csrc/sim/meson.build translates every kernels/*.metal file with it (python
csrc/sim/translate/__main__.py FILE -o OUT.cpp --depfile OUT.d ...); it needs only the standard library."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import translate_file
from .errors import TranslateError

__all__ = ["main"]


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return
    except OSError:
        pass
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Translate an MSL file to C++ for the Metal simulator")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--depfile")
    p.add_argument("--header", default="metal_stdlib", help="include path of the compatibility header")
    p.add_argument("-I", "--include", action="append", default=[])
    a = p.parse_args(argv)
    try:
        tr = translate_file(a.input, a.include, "exec", a.header)
    except (TranslateError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in tr.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _write_if_changed(a.output, tr.code)
    if a.depfile:
        deps = " ".join(d.replace(" ", "\\ ") for d in [os.path.abspath(a.input)] + tr.dependencies)
        _write_if_changed(a.depfile, f"{a.output}: {deps}\n")
    return 0
