"""Strict syntax check of MSL files with clang, standing in for Apple's Metal compiler.

The file goes through the translator in "check" mode: ``device``, ``constant`` and ``threadgroup`` become clang
address spaces 1, 2 and 3 (so mixing them fails as it does on a Mac), threadgroup declarations become ``static``
address-space-3 variables, and what MSL lacks is poisoned after the compatibility header: ``double``, ``new``,
``delete``, ``virtual``, ``printf``, ``malloc``, the ``std`` namespace; system headers are rejected by the translator;
``-fno-exceptions -fno-rtti`` reject ``throw``, ``try`` and ``dynamic_cast``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import List, NamedTuple, Optional, Sequence

from . import _compile
from .translate import TranslateError, translate_file

__all__ = ["CheckResult", "find_clang", "check_file", "check_files"]

CLANG_FLAGS = ["-std=c++17", "-fsyntax-only", "-fno-exceptions", "-fno-rtti", "-Wno-unknown-attributes",
               "-Wno-unused-value", "-Wno-unknown-pragmas", "-ferror-limit=20"]


class CheckResult(NamedTuple):
    path: str
    ok: bool
    message: str


def find_clang() -> Optional[str]:
    """clang++ for the check: $FLASH_ATTN_CY_CLANG, else clang++, clang++-19 ... clang++-15."""
    env = os.environ.get("FLASH_ATTN_CY_CLANG")
    if env:
        return env if shutil.which(env) else None
    for name in ["clang++"] + [f"clang++-{v}" for v in range(22, 14, -1)]:
        if shutil.which(name):
            return name
    return None


def check_file(path: str, include_dirs: Sequence[str] = (), clang: Optional[str] = None) -> CheckResult:
    """Strict-check one .metal file."""
    clang = clang or find_clang()
    if not clang:
        raise RuntimeError("the strict check needs clang++ (none found; set FLASH_ATTN_CY_CLANG)")
    try:
        tr = translate_file(path, include_dirs, mode="check", header="fasim_check.h", strict=False)
    except (TranslateError, OSError) as e:
        return CheckResult(path, False, str(e))
    inc = _compile.runtime_dir() / "include"
    with tempfile.TemporaryDirectory(prefix="fasim-check-") as d:
        src = os.path.join(d, os.path.basename(path) + ".cpp")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(tr.code)
        p = subprocess.run([clang] + CLANG_FLAGS + ["-I", str(inc), "-x", "c++", src], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    return CheckResult(path, p.returncode == 0, p.stdout.strip())


def check_files(paths: Sequence[str], include_dirs: Sequence[str] = ()) -> List[CheckResult]:
    clang = find_clang()
    return [check_file(p, include_dirs, clang) for p in paths]
