"""Unit tests of the Metal shim's portable C++ (objc/fa_metal_binding.cpp): buffer storage decisions, page
arithmetic for newBufferWithBytesNoCopy, copy-back, device-buffer offsets and the plan-to-encoder walk.

The driver (tests/objc/test_objc_binding_driver.cpp) is compiled with the host C++ compiler, with AddressSanitizer and
UndefinedBehaviorSanitizer when the compiler supports them, and run; every check it makes is a plain assertion.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _paths import OBJC_TESTS, ROOT  # noqa: E402


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++", "clang++-19"):
        if name and shutil.which(name):
            return name
    return None


def _build(tmp_path: Path, cxx: str, sanitize: bool) -> subprocess.CompletedProcess:
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
           f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}", f"-I{ROOT / 'objc'}",
           str(OBJC_TESTS / "test_objc_binding_driver.cpp"), str(ROOT / "objc" / "fa_metal_binding.cpp"),
           "-o", str(tmp_path / "binding_driver")]
    if sanitize:
        cmd[1:1] = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_binding_driver(tmp_path: Path) -> None:
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (g++/clang++) found to build the shim's portable unit tests")
    built = _build(tmp_path, cxx, sanitize=True)
    if built.returncode != 0 and "sanitize" in built.stderr:
        built = _build(tmp_path, cxx, sanitize=False)  # toolchains without the sanitizer runtimes
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(tmp_path / "binding_driver")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout and "FAIL" not in run.stdout, run.stdout


def test_real_plans_through_the_binding(tmp_path: Path) -> None:
    """The shim's binding/encoding over csrc/plan's real plans (tests/objc/test_objc_plan_driver.cpp)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    plan_dir = ROOT / "csrc" / "plan"
    sources = sorted(str(p) for p in plan_dir.glob("*.cpp") if p.name != "fa_plan_json.cpp")
    if not any(s.endswith("fa_plan_forward.cpp") for s in sources):
        pytest.skip("csrc/plan has no forward plan yet")
    defines = [] if (plan_dir / "fa_plan_backward.cpp").exists() else ["-DFA_NO_PLAN_BACKWARD"]
    exe = tmp_path / "plan_driver"
    cmd = [cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", *defines, f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'kernels'}",
           f"-I{ROOT / 'objc'}", f"-I{plan_dir}", str(OBJC_TESTS / "test_objc_plan_driver.cpp"),
           str(ROOT / "objc" / "fa_metal_binding.cpp"), *sources, "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr
    assert "FAIL" not in run.stdout and "passed" in run.stdout, run.stdout[-5000:]
