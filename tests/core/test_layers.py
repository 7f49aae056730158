"""Layers depend only downward (issue 18 item 6): every #include in csrc/, objc/ and kernels/ (and every
`cdef extern from` header of the Cython layer) goes to a lower layer or stays inside its own component.

From the top:

    cython    flash_attn_cy/*.pyx                         the Python extension
    abi       csrc/fa_abi.cpp, fa_check*, csrc/plan/       the C ABI (checks, dispatch) and the dispatch plan
    cpu | sim | metal | no-metal                          the backends, side by side: none includes another
              csrc/cpu/ (with csrc/cpu/backward/); csrc/sim/ and its executor csrc/sim_backend.cpp; objc/ (the
              macOS shim); csrc/metal_unavailable.cpp (the Metal entry points of builds without the shim, which
              must not reach into objc/: both implement csrc/fa_backends.h and csrc/fa_metal_shim.h)
    kernels   kernels/                                    MSL kernels and the headers they share with the C++ code
    base      the declarations the layers meet through, and header-only utilities: fa_abi.h (the ABI's types),
              fa_backends.h and fa_metal_shim.h (what each backend provides), plan/fa_plan.h (the plan descriptor the
              executors read), sim/fa_cancel.h (the cancellation token; it sits beside the simulator runtime, which
              flash_attn_cy.sim also compiles alone), fa_alloc.h, fa_host_memory.h

A file may include its own component's files and any lower layer's; anything else is an upward or sideways include.
A file the table does not place fails the test too, so a new file is given a layer on purpose.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import pytest

from _paths import ROOT  # noqa: E402

RANK = {"cython": 4, "abi": 3, "cpu": 2, "sim": 2, "metal": 2, "no-metal": 2, "kernels": 1, "base": 0}

BASE_FILES = {
    "csrc/fa_abi.h", "csrc/fa_backends.h", "csrc/fa_metal_shim.h", "csrc/plan/fa_plan.h", "csrc/sim/fa_cancel.h",
    "csrc/fa_alloc.h", "csrc/fa_host_memory.h", "csrc/plan/fa_buffers.h",
}
# (path prefix, component); the first match wins, after BASE_FILES.
PLACES = [
    ("flash_attn_cy/", "cython"),
    ("csrc/fa_abi.cpp", "abi"), ("csrc/fa_check", "abi"), ("csrc/plan/", "abi"),
    ("csrc/cpu/", "cpu"),
    ("csrc/sim/", "sim"), ("csrc/sim_backend.cpp", "sim"), ("csrc/sim_profile_hook.", "sim"),
    ("objc/", "metal"), ("csrc/metal_unavailable.cpp", "no-metal"),
    ("kernels/", "kernels"),
]
# Upward includes that remain, each with its reason. The test fails when one disappears, so the list stays exact.
# Empty since the C ABI builds each call's plan and hands it to the executors (csrc/fa_backends.h): csrc/sim_backend.cpp
# and objc/fa_metal_execute.mm read plan/fa_plan.h only, never the builders of plan/fa_plan_build.h.
KNOWN_UPWARD: Dict[Tuple[str, str], str] = {}

SOURCE_SUFFIXES = {".h", ".hpp", ".c", ".cc", ".cpp", ".m", ".mm", ".metal"}
# Where the build looks for quoted includes after the including file's folder (meson: fa_include, objc's '.').
SEARCH_DIRS = ("csrc", "kernels", "objc")

_INCLUDE = re.compile(r'^\s*#\s*(?:include|import)\s*([<"])([^">]+)[">]', re.M)
_CYTHON_EXTERN = re.compile(r'^\s*cdef\s+extern\s+from\s+"([^"]+)"', re.M)


def component(rel: str) -> Optional[str]:
    if rel in BASE_FILES:
        return "base"
    for prefix, comp in PLACES:
        if rel == prefix or rel.startswith(prefix):
            return comp
    return None


def _sources(root: Path) -> Iterable[Path]:
    for top in ("csrc", "objc", "kernels"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and (path.suffix in SOURCE_SUFFIXES or path.name == "metal_stdlib"):
                yield path
    yield from sorted((root / "flash_attn_cy").glob("*.pyx"))
    yield from sorted((root / "flash_attn_cy").glob("*.pxd"))
    yield from sorted((root / "flash_attn_cy").glob("*.pxi"))


def includes(path: Path) -> List[Tuple[str, bool]]:
    """(header, quoted) for every #include/#import, or every `cdef extern from` header of a Cython file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix in (".pyx", ".pxd", ".pxi"):
        return [(h, True) for h in _CYTHON_EXTERN.findall(text)]
    return [(name, quote == '"') for quote, name in _INCLUDE.findall(text)]


def resolve(root: Path, path: Path, header: str, quoted: bool) -> Optional[str]:
    """The including build's resolution: the file's own folder (quoted only), then the search dirs. None: a system
    header (or a generated one, which the tree does not hold)."""
    candidates = ([path.parent / header] if quoted else []) + [root / d / header for d in SEARCH_DIRS]
    for cand in candidates:
        if cand.is_file():
            return Path(os.path.normpath(cand)).relative_to(root).as_posix()
    return None


def violations(root: Path, known: Dict[Tuple[str, str], str]) -> Tuple[List[str], List[str], set]:
    """(bad includes, files the table does not place, known exceptions that were seen)."""
    bad, unplaced, seen = [], [], set()
    for path in _sources(root):
        rel = path.relative_to(root).as_posix()
        comp = component(rel)
        if comp is None:
            unplaced.append(rel)
            continue
        for header, quoted in includes(path):
            target = resolve(root, path, header, quoted)
            if target is None:
                continue
            tcomp = component(target)
            if tcomp is None:
                unplaced.append(target)
                continue
            if tcomp == comp or RANK[tcomp] < RANK[comp]:
                continue
            if (rel, target) in known:
                seen.add((rel, target))
                continue
            way = "sideways" if RANK[tcomp] == RANK[comp] else "upward"
            bad.append(f"{rel} ({comp}) includes {target} ({tcomp}): {way}")
    return bad, sorted(set(unplaced)), seen


def test_includes_go_only_downward():
    bad, unplaced, seen = violations(ROOT, KNOWN_UPWARD)
    assert not unplaced, "files tests/core/test_layers.py does not place in a layer: " + ", ".join(unplaced)
    assert not bad, "includes against the layer order:\n" + "\n".join(bad)
    stale = sorted(set(KNOWN_UPWARD) - seen)
    assert not stale, f"no longer included, remove from KNOWN_UPWARD: {stale}"


def test_executors_name_no_plan_builder():
    # The include check cannot see a builder declared by hand: the executors name none of the functions
    # plan/fa_plan_build.h declares (the C ABI builds each call's plan and hands it down, csrc/fa_backends.h).
    header = (ROOT / "csrc" / "plan" / "fa_plan_build.h").read_text()
    builders = set(re.findall(r"^\s*int\s+(fa_plan_\w+)\s*\(", header, re.M))
    assert {"fa_plan_build", "fa_plan_build_for_device", "fa_plan_probe_kernel_name"} <= builders, builders
    executors = [ROOT / "csrc" / "sim_backend.cpp", ROOT / "csrc" / "metal_unavailable.cpp",
                 *sorted((ROOT / "objc").glob("*.mm")), *sorted((ROOT / "objc").glob("*.cpp")),
                 *sorted((ROOT / "objc").glob("*.h"))]
    found = [f"{path.relative_to(ROOT)}: {name}" for path in executors
             for name in sorted(builders) if re.search(rf"\b{name}\b", path.read_text())]
    assert not found, found


def test_cython_layer_reaches_c_only_through_the_abi_headers():
    headers = {h for pyx in (ROOT / "flash_attn_cy").glob("*.pyx") for h, _ in includes(pyx)}
    project = {h for h in headers if resolve(ROOT, ROOT / "flash_attn_cy" / "x.pyx", h, True)}
    assert project and all(component(resolve(ROOT, ROOT / "flash_attn_cy" / "x.pyx", h, True)) == "base"
                           for h in project), project


def test_csrc_meson_files_build_only_their_own_folder():
    # csrc/plan/meson.build used to compile ../sim_backend.cpp: a component's build file names its own sources.
    for build in sorted((ROOT / "csrc").rglob("meson.build")) + [ROOT / "objc" / "meson.build"]:
        text = re.sub(r"#.*", "", build.read_text())
        assert "'../" not in text and '"../' not in text, build.relative_to(ROOT)


def test_backward_lives_under_cpu():
    assert not (ROOT / "csrc" / "bwd").exists()
    assert (ROOT / "csrc" / "cpu" / "backward" / "cpu_backward.cpp").is_file() or any(
        (ROOT / "csrc" / "cpu" / "backward").glob("*.cpp"))


def _tree(tmp_path: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files,expected", [
    ({"csrc/cpu/a.cpp": '#include "fa_abi.h"\n#include "fa_mask.h"\n#include "cpu/b.h"\n', "csrc/cpu/b.h": "",
      "csrc/fa_abi.h": "", "kernels/fa_mask.h": ""}, []),
    ({"csrc/cpu/a.cpp": '#include "sim/sim_api.h"\n', "csrc/sim/sim_api.h": ""}, ["sideways"]),
    ({"csrc/fa_abi.h": '#include "plan/fa_plan_internal.h"\n', "csrc/plan/fa_plan_internal.h": ""}, ["upward"]),
    ({"kernels/k.h": '#include "../csrc/cpu/x.h"\n', "csrc/cpu/x.h": ""}, ["upward"]),
    ({"csrc/metal_unavailable.cpp": '#include "../objc/s.h"\n', "objc/s.h": ""}, ["sideways"]),
    ({"csrc/cpu/x.cpp": '#include "../metal_unavailable.cpp"\n', "csrc/metal_unavailable.cpp": ""}, ["sideways"]),
    ({"csrc/new_thing.cpp": ""}, ["unplaced"]),
    # an executor that would build its own plan again
    ({"csrc/sim_backend.cpp": '#include "plan/fa_plan_build.h"\n', "csrc/plan/fa_plan_build.h": ""}, ["upward"]),
    ({"objc/fa_metal_execute.mm": '#include "plan/fa_plan_build.h"\n', "csrc/plan/fa_plan_build.h": ""}, ["upward"]),
])
def test_the_check_itself(tmp_path, files, expected):
    root = _tree(tmp_path, files)
    bad, unplaced, _ = violations(root, {})
    found = [b.rsplit(": ", 1)[1] for b in bad] + ["unplaced"] * len(unplaced)
    assert found == expected, (bad, unplaced)


def test_no_native_source_over_700_lines():
    # issue 18: small files with one job; generated code (build outputs) aside. Python files are checked with the
    # Python layout (flash_attn_cy), not here.
    big = []
    for top in ("csrc", "objc", "kernels", "tests"):
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and (path.suffix in SOURCE_SUFFIXES or path.name == "metal_stdlib"):
                n = len(path.read_text(encoding="utf-8", errors="replace").splitlines())
                if n > 700:
                    big.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not big, big
