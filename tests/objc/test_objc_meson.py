"""objc/meson.build exercised on Linux: `meson setup` + `ninja` of its Metal-library and embedded-source targets in a
scratch project, with a fake `xcrun` standing in for Apple's `metal`/`metallib` (it records its arguments and writes
placeholder files). Checks both macOS configurations: Metal toolchain present (a metallib is built and installed,
no source embedded) and absent (kernel sources embedded for run-time compilation).

Only the lines that cannot work off macOS are replaced in the copy: `add_languages('objcpp')` and the
`appleframeworks` dependency. Compiling the .mm files is covered by test_objc_syntax/test_objc_execute.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from _paths import ROOT  # noqa: E402

FAKE_XCRUN = r"""#!/bin/sh
# fake xcrun: -sdk macosx {metal --version | -f metallib | metal -c IN -o OUT ... -MF DEP | metallib AIRS -o OUT}
echo "$*" >> "$FAKE_XCRUN_LOG"
[ "$1" = "-sdk" ] && shift 2
if [ "$1" = "-f" ]; then [ -n "$FAKE_NO_METAL" ] && exit 1; echo "/fake/$2"; exit 0; fi
tool="$1"; shift
[ -n "$FAKE_NO_METAL" ] && { echo "error: cannot execute tool '$tool' due to missing Metal Toolchain" >&2; exit 1; }
if [ "$tool" = metal ] && [ "$1" = "--version" ]; then echo "fake metal 32023"; exit 0; fi
out=""; dep=""; ins=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift 2;;
    -MF) dep="$2"; shift 2;;
    -I) shift 2;;
    -c|-MMD|-std=*|-mmacosx-version-min=*) shift;;
    *) ins="$ins $1"; shift;;
  esac
done
if [ "$tool" = metal ]; then echo "AIR$ins" > "$out"; [ -n "$dep" ] && echo "$out:$ins" > "$dep"; exit 0; fi
if [ "$tool" = metallib ]; then cat $ins > "$out"; exit 0; fi
exit 2
"""

HARNESS = """
project('objc_meson_check', 'c', 'cpp', meson_version: '>=1.2.0')
py = import('python').find_installation(pure: false)
fa_sources = []
fa_deps = []
subdir('kernels')
subdir('objc')
summary({'sources': fa_sources.length(), 'deps': fa_deps.length()})
"""


def _meson() -> list | None:
    if shutil.which("meson"):
        return ["meson"]
    try:
        import mesonbuild  # noqa: F401
    except ImportError:
        return None
    import sys
    return [sys.executable, "-m", "mesonbuild.mesonmain"]


@pytest.fixture()
def scratch(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "objc").mkdir(parents=True)
    text = (ROOT / "objc" / "meson.build").read_text()
    assert "add_languages('objcpp', native: false, required: true)" in text
    assert "dependency('appleframeworks', modules: ['Metal', 'Foundation'])" in text
    text = text.replace("add_languages('objcpp', native: false, required: true)", "")
    text = text.replace("dependency('appleframeworks', modules: ['Metal', 'Foundation'])", "declare_dependency()")
    (src / "objc" / "meson.build").write_text(text)
    for name in ("embed_kernels.py", "fa_metal_binding.cpp", "fa_metal_context.mm", "fa_metal_execute.mm"):
        shutil.copy(ROOT / "objc" / name, src / "objc" / name)
    k = src / "kernels"
    k.mkdir()
    (k / "common.h").write_text("#pragma once\nconstant int kX = 1;\n")
    (k / "one.metal").write_text('#include "common.h"\nkernel void one() {}\n')
    (k / "two.metal").write_text('#include "common.h"\nkernel void two() {}\n')
    (k / "meson.build").write_text("metal_kernel_sources = files('one.metal', 'two.metal')\n")
    (src / "meson.build").write_text(HARNESS)
    shutil.copy(ROOT / "meson.options", src / "meson.options")  # -Dmetallib
    bindir = tmp_path / "bin"
    bindir.mkdir()
    xcrun = bindir / "xcrun"
    xcrun.write_text(FAKE_XCRUN)
    xcrun.chmod(xcrun.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def _setup(root: Path, no_metal: bool, options: tuple = ()) -> tuple:
    meson = _meson()
    if meson is None or shutil.which("ninja") is None:
        pytest.skip("meson/ninja not installed")
    env = dict(os.environ, PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
               FAKE_XCRUN_LOG=str(root / "xcrun.log"))
    if no_metal:
        env["FAKE_NO_METAL"] = "1"
    build = root / "build"
    setup = subprocess.run(meson + ["setup", str(build), str(root / "src"), *options], capture_output=True, text=True,
                           env=env, timeout=120)
    return build, env, setup


def _configure_and_build(root: Path, no_metal: bool) -> tuple:
    build, env, setup = _setup(root, no_metal)
    assert setup.returncode == 0, setup.stdout[-4000:] + setup.stderr[-4000:]
    targets = ["objc/fa_metal_kernels_embedded.cpp"] + ([] if no_metal else ["objc/fa_kernels.metallib"])
    ninja = subprocess.run(["ninja", "-C", str(build), *targets], capture_output=True, text=True, env=env, timeout=120)
    assert ninja.returncode == 0, ninja.stdout[-4000:] + ninja.stderr[-4000:]
    log = (root / "xcrun.log").read_text() if (root / "xcrun.log").exists() else ""
    return build, setup.stdout, log


def test_with_metal_toolchain(scratch: Path) -> None:
    build, out, log = _configure_and_build(scratch, no_metal=False)
    assert "kernels compiled into fa_kernels.metallib" in out
    assert re.search(r"sources\s*:\s*4\b", out) and re.search(r"deps\s*:\s*2\b", out), out[-2000:]
    metallib = build / "objc" / "fa_kernels.metallib"
    body = metallib.read_text()
    assert "one.metal" in body and "two.metal" in body  # both kernels went through `metal -c` into the library
    assert "-sdk macosx metal " in log and "-MMD -MF" in log and "-sdk macosx metallib" in log
    # Every kernel file is compiled as MSL 3.1 (bfloat) for macOS 14, never with the compiler's default version.
    compiles = [line for line in log.splitlines() if " metal " in line and " -c " in line]
    assert len(compiles) == 2, log
    assert all("-std=metal3.1" in line and "-mmacosx-version-min=14.0" in line for line in compiles), log
    embedded = (build / "objc" / "fa_metal_kernels_embedded.cpp").read_text()
    assert "fa_embedded_kernel_file_count = 0;" in embedded
    assert f'fa_metallib_build_path = "{metallib}"' in embedded
    intro = subprocess.run(_meson() + ["introspect", "--installed", str(build)], capture_output=True, text=True)
    assert "flash_attn_cy/fa_kernels.metallib" in intro.stdout  # installed inside the package


def test_without_metal_toolchain(scratch: Path) -> None:
    build, out, log = _configure_and_build(scratch, no_metal=True)
    assert "kernel sources are embedded" in out
    assert re.search(r"sources\s*:\s*4\b", out) and re.search(r"deps\s*:\s*2\b", out), out[-2000:]
    assert not [line for line in log.splitlines() if " metal " in line and " -c " in line], log
    embedded = (build / "objc" / "fa_metal_kernels_embedded.cpp").read_text()
    assert "fa_embedded_kernel_file_count = 2;" in embedded
    assert "kernel void one()" in embedded and "kernel void two()" in embedded
    assert 'fa_metallib_build_path = ""' in embedded
    assert not (build / "objc" / "fa_kernels.metallib").exists()


def test_metallib_required_fails_without_toolchain(scratch: Path) -> None:
    # Wheels build with -Dmetallib=enabled: a runner whose Xcode lacks the Metal toolchain must fail the build instead
    # of quietly shipping embedded source.
    _, _, setup = _setup(scratch, no_metal=True, options=("-Dmetallib=enabled",))
    assert setup.returncode != 0
    assert "-Dmetallib=enabled" in setup.stdout and "xcodebuild -downloadComponent MetalToolchain" in setup.stdout


def test_metallib_required_with_toolchain_builds(scratch: Path) -> None:
    build, _, setup = _setup(scratch, no_metal=False, options=("-Dmetallib=enabled",))
    assert setup.returncode == 0, setup.stdout[-4000:]
    assert "kernels compiled into fa_kernels.metallib" in setup.stdout
