"""Version from one place and the build configuration `info` reports (what a wheel says about how it was built).

The version is written only in VERSION: meson reads it, pyproject declares it dynamic, `__version__` comes from the
build info meson writes, and the installed distribution's metadata carries it. `info` prints the build
configuration: compiler, extra C++ flags, the CPU kernel sets compiled, the Metal kernel library and Metal language
version, which is the same in the offline compile (objc/meson.build), the shim's run-time compiles and CI.
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path

import flash_attn_cy

from _paths import ROOT  # noqa: E402
VERSION = (ROOT / "VERSION").read_text().strip()


def test_version_written_once() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", VERSION), VERSION
    assert flash_attn_cy.__version__ == VERSION == flash_attn_cy.build_info()["version"]
    assert importlib.metadata.version("flash_attn_cy") == VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and not re.search(r"(?m)^version\s*=", pyproject)
    assert "version: files('VERSION')" in (ROOT / "meson.build").read_text()
    assert VERSION not in (ROOT / "flash_attn_cy" / "__init__.py").read_text()
    assert f"## {VERSION}" in (ROOT / "CHANGELOG.md").read_text()
    license_text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause" in license_text and "Copyright (c) 2026, flash_attn_cy developers" in license_text


def test_info_prints_build_configuration() -> None:
    r = subprocess.run([sys.executable, "-m", "flash_attn_cy", "info"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"flash_attn_cy {VERSION} ")
    info = flash_attn_cy.build_info()
    for key in ("c++ compiler", "extra c++ args", "cpu kernels compiled", "metal kernel library",
                "metal language version"):
        assert f"  {key}: {info[key]}" in r.stdout, key
    if sys.platform != "darwin":
        assert info["metal kernel library"].startswith("none") and info["metal language version"] == "n/a"


def test_cpu_kernels_compiled_matches_dispatch() -> None:
    compiled = flash_attn_cy.build_info()["cpu kernels compiled"]
    assert "portable" in compiled
    chosen = flash_attn_cy.backends()["cpu"]["description"]
    for isa in ("avx512", "avx2", "neon"):  # the dispatcher can only pick what the build compiled
        if f", {isa}" in chosen:
            assert isa in compiled, (isa, compiled)
    if platform.machine() not in ("x86_64", "AMD64"):
        assert "avx512" not in compiled and "avx2" not in compiled
    if platform.machine() not in ("aarch64", "arm64"):
        assert "neon" not in compiled


def test_metal_language_version_is_one_fact() -> None:
    meson = (ROOT / "objc" / "meson.build").read_text()
    major, minor = re.search(r"metal_std = '(\d+)\.(\d+)'", meson).groups()
    assert "'-std=metal' + metal_std" in meson
    shim = (ROOT / "objc" / "fa_metal_context.mm").read_text()
    pinned = set(re.findall(r"languageVersion = MTLLanguageVersion(\d+)_(\d+)", shim))
    assert pinned == {(major, minor)}, pinned                      # one compile_options(), the same version
    assert "[MTLCompileOptions new]" in shim.split("MTLCompileOptions *compile_options()")[1].split("\n}\n")[0]
    assert shim.count("[MTLCompileOptions new]") == 1              # no run-time compile with the default version
    ci = (ROOT / ".github" / "workflows" / "macos.yml").read_text()
    assert set(re.findall(r"-std=metal(\d+\.\d+)", ci)) == {f"{major}.{minor}"}
