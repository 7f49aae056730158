"""Check an INSTALLED flash_attn_cy (a wheel, or an sdist build) from outside the source tree.

    python wheel_check.py [--project DIR] [--expect-portable]

Run by cibuildwheel after each wheel build (pyproject.toml: [tool.cibuildwheel] test-command), by the wheels
workflow on the sdist and under qemu, and by tests/packaging/test_wheel_install.py on a wheel built here. Everything
runs in this one process (no subprocess), so that under `qemu-x86_64 -cpu <older CPU>` every instruction executed is
emulated for that CPU.

Checks: the package imports from site-packages (not a source tree); `__version__` equals the VERSION file (with
--project); `info` runs and reports the version and build configuration; no -march flag went into the build;
`verify --quick` on the CPU backend passes (no GPU results are claimed anywhere: a CI runner's paravirtual GPU
cannot run the kernels). On macOS: the build has the Metal shim; with a metallib (required by --require-metallib,
as for wheels) Metal loads the installed fa_kernels.metallib and it lists every kernel of the sources (with
--project: the functions Apple's run-time compiler finds in each kernel file); with embedded source, every kernel
file compiles with Apple's run-time compiler. With --expect-portable: the CPU backend chose its portable kernels
(an x86-64 CPU without AVX-512, e.g. qemu's Westmere), not forced by FLASH_ATTN_CY_CPU_ISA.
Exit status 0 when every check passes; the first failure raises.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import sys
from pathlib import Path


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"wheel check FAILED: {what}")
    print(f"ok: {what}")


def _kernel_files(project: Path) -> list:
    """The kernel files the build compiles into the metallib (kernels/meson.build's list, in its order)."""
    text = (project / "kernels" / "meson.build").read_text()
    return [project / "kernels" / name for name in re.findall(r"'([A-Za-z0-9_]+\.metal)'", text)]


def _compile_sources(project: Path) -> set:
    """Function names of every kernel file, compiled by Apple's run-time compiler (MSL 3.1, as the shim does)."""
    from flash_attn_cy import _flash_attn_metal as fam
    spec = importlib.util.spec_from_file_location("embed_kernels", project / "objc" / "embed_kernels.py")
    embed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embed)
    names = set()
    for src in _kernel_files(project):
        names |= set(fam.compile_shaders(embed.flatten(src, [project / "kernels"])))
    return names


def _check_metal(fa, project, require_metallib: bool) -> None:
    from flash_attn_cy import _metallib
    info = fa.build_info()
    _check(info["metal shim built"] == "yes", "the macOS build contains the Objective-C++ Metal shim")
    if not info["metal kernel library"].startswith("fa_kernels.metallib"):
        _check(not require_metallib,
               f"kernels precompiled by Apple's metal (build info: {info['metal kernel library']!r})")
        if project is not None:  # what the shim will compile at first use must compile
            _check(bool(_compile_sources(project)), "Apple's run-time compiler accepts every kernel file")
        return
    shipped = Path(fa.__file__).parent / "fa_kernels.metallib"
    _check(shipped.is_file(), f"{shipped} is in the installed package")
    path, names = _metallib.library_functions()
    _check(Path(path).resolve() == shipped.resolve() and bool(names),
           f"Metal loads {path} ({len(names)} functions)")
    if project is None:
        return
    expected = _compile_sources(project)
    missing, extra = sorted(expected - set(names)), sorted(set(names) - expected)
    _check(not missing and not extra,
           f"the metallib lists every kernel of the sources ({len(expected)}; missing {missing}, extra {extra})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, help="the source tree the wheel was built from")
    parser.add_argument("--require-metallib", action="store_true",
                        help="macOS: the kernels must be precompiled into fa_kernels.metallib (wheels)")
    parser.add_argument("--expect-portable", action="store_true",
                        help="the CPU backend must choose its portable kernels on this CPU")
    args = parser.parse_args(argv)
    project = args.project.resolve() if args.project else None

    import flash_attn_cy as fa
    from flash_attn_cy import cli
    where = Path(fa.__file__).resolve().parent
    _check(project is None or project not in where.parents, f"flash_attn_cy imported from an installation ({where})")
    if project is not None:
        version = (project / "VERSION").read_text().strip()
        _check(fa.__version__ == version, f"__version__ {fa.__version__} == VERSION {version}")

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["info"])
    text = out.getvalue()
    print(text)
    _check(rc == 0 and f"flash_attn_cy {fa.__version__}" in text and "cpu kernels compiled" in text
           and "metal language version" in text, "`info` prints the version and the build configuration")
    _check("-march" not in fa.build_info()["extra c++ args"], "no -march flag in the build")

    cpu = fa.backends()["cpu"]["description"]
    if args.expect_portable:
        _check("FLASH_ATTN_CY_CPU_ISA" not in os.environ, "the CPU kernel choice is not forced by the environment")
        _check("portable" in cpu, f"the CPU backend chose its portable kernels ({cpu})")
    if sys.platform.startswith("linux") and os.uname().machine == "x86_64":
        _check("avx512" in fa.build_info()["cpu kernels compiled"],
               "the x86-64 build keeps the run-time-dispatched AVX-512 kernels")

    if sys.platform == "darwin":
        _check_metal(fa, project, args.require_metallib)
        ok, why = fa._core.backend_available("metal")
        print(f"note: metal backend {'available' if ok else 'unavailable'} here{'' if ok else ': ' + why}; "
              "no GPU results are claimed by this check")

    _check(cli.main(["verify", "--quick", "--backend", "cpu"]) == 0, "`verify --quick --backend cpu` passes")
    print("wheel check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
