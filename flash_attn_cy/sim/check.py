"""Strict syntax check of MSL files with clang, standing in for Apple's Metal compiler.

The file goes through the translator in "check" mode: ``device``, ``constant`` and ``threadgroup`` become clang
address spaces 1, 2 and 3 (so mixing them fails as it does on a Mac), threadgroup declarations become ``static``
address-space-3 variables, and what MSL lacks is poisoned after the compatibility header: ``double``, ``new``,
``delete``, ``virtual``, ``printf``, ``malloc``, the ``std`` namespace; system headers are rejected by the translator;
``-fno-exceptions -fno-rtti`` reject ``throw``, ``try`` and ``dynamic_cast``; a call cycle in clang's LLVM IR of the
file (recursion, which MSL does not have) fails the check too. Then the simulator's trust rules (trust.py: no
``extern``, ``asm``, calls outside the MSL built-ins and the file's own functions, load-time code) run on the code
``sim run`` would compile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Dict, List, NamedTuple, Optional, Sequence, Set

from . import _compile, trust
from .translate import TranslateError, translate, translate_file

__all__ = ["CheckResult", "find_clang", "check_file", "check_files"]

# -Werror=vla: clang accepts variable-length arrays in C++ as an extension, MSL has none (an array sized by a function
# constant, which is no constant expression, must fail here as it does on a Mac).
CLANG_FLAGS = ["-std=c++17", "-fsyntax-only", "-fno-exceptions", "-fno-rtti", "-Wno-unknown-attributes",
               "-Wno-unused-value", "-Wno-unknown-pragmas", "-Werror=vla", "-ferror-limit=20"]


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


def check_file(path: str, include_dirs: Sequence[str] = (), clang: Optional[str] = None,
               defines: Optional[Dict[str, str]] = None) -> CheckResult:
    """Strict-check one .metal file (``defines``: macros as with ``-D NAME=VALUE``)."""
    clang = clang or find_clang()
    if not clang:
        raise RuntimeError("the strict check needs clang++ (none found; set FLASH_ATTN_CY_CLANG)")
    try:
        tr = translate_file(path, include_dirs, mode="check", header="fasim_check.h", defines=defines)
    except (TranslateError, OSError) as e:
        return CheckResult(path, False, str(e))
    inc = _compile.runtime_dir() / "include"
    with tempfile.TemporaryDirectory(prefix="fasim-check-") as d:
        src = os.path.join(d, os.path.basename(path) + ".cpp")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(tr.code)
        p = subprocess.run([clang] + CLANG_FLAGS + ["-I", str(inc), "-x", "c++", src], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            return CheckResult(path, False, p.stdout.strip())
        cycle = _find_recursion(clang, inc, src)
    if cycle:
        return CheckResult(path, False, f"{path}: error: recursion (MSL has none): {' -> '.join(cycle)}")
    refused = _trust_check(path, include_dirs, clang, defines)
    if refused:
        return CheckResult(path, False, refused)
    return CheckResult(path, True, p.stdout.strip())


def _trust_check(path: str, include_dirs: Sequence[str], clang: str, defines: Optional[Dict[str, str]]) -> str:
    """The simulator's trust rules (trust.py) on the code `sim run` would compile; '' when the file passes."""
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
        tr = translate(source, path, include_dirs, mode="exec", defines=defines)
        trust.check_translation(tr, source, path, include_dirs)
        trust.check_compiled(tr.code, path, clang)
    except (TranslateError, OSError, trust.KernelRefused, _compile.SimCompileError) as e:
        return str(e)
    return ""


def _find_recursion(clang: str, inc, src: str) -> List[str]:
    """A call cycle among the functions of the file, from clang's LLVM IR (mangled names keep overloads apart)."""
    flags = [f for f in CLANG_FLAGS if f != "-fsyntax-only"]
    p = subprocess.run([clang] + flags + ["-I", str(inc), "-x", "c++", "-O0", "-S", "-emit-llvm", "-o", "-", src],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.returncode != 0:
        return []  # the syntax check passed; without IR there is just no recursion check
    edges: Dict[str, Set[str]] = {}
    cur = None
    for line in p.stdout.splitlines():
        m = _DEFINE_RE.match(line)
        if m:
            cur = m.group(1)
            edges[cur] = set()
        elif line.startswith("}"):
            cur = None
        elif cur is not None:
            edges[cur].update(_CALL_RE.findall(line))
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(f: str) -> List[str]:
        state[f] = 1
        stack.append(f)
        for g in sorted(edges.get(f, ())):
            if g not in edges:
                continue
            if state.get(g) == 1:
                return stack[stack.index(g):] + [g]
            if g not in state:
                c = visit(g)
                if c:
                    return c
        stack.pop()
        state[f] = 2
        return []

    for f in sorted(edges):
        if f not in state:
            c = visit(f)
            if c:
                return _demangle(c)
    return []


_DEFINE_RE = re.compile(r'^define [^@]*@("[^"]+"|[\w.$]+)\(')
_CALL_RE = re.compile(r'(?:call|invoke) [^@]*@("[^"]+"|[\w.$]+)\(')


def _demangle(names: List[str]) -> List[str]:
    tool = shutil.which("c++filt") or shutil.which("llvm-cxxfilt") or shutil.which("llvm-cxxfilt-19")
    names = [n.strip('"') for n in names]
    if not tool:
        return names
    p = subprocess.run([tool], input="\n".join(names), stdout=subprocess.PIPE, text=True)
    out = p.stdout.split("\n")
    return out[:len(names)] if len(out) >= len(names) else names


def check_files(paths: Sequence[str], include_dirs: Sequence[str] = (),
                defines: Optional[Dict[str, str]] = None) -> List[CheckResult]:
    """check_file on each path."""
    clang = find_clang()
    return [check_file(p, include_dirs, clang, defines) for p in paths]
