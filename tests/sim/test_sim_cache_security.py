"""The simulator's cache of compiled kernel modules is trusted only when it is the caller's own: a directory or file
that another user owns or that group/others can write is never loaded (a private cache is used instead, with one
warning), and a module must carry the key of its source and build flags before it is loaded. Each test plants a
module whose load-time constructor would leave a marker file, and checks that the marker never appears."""

import os
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
from flash_attn_cy.sim import _compile  # noqa: E402

if not hasattr(os, "geteuid"):
    pytest.skip("ownership checks need POSIX uids", allow_module_level=True)
try:
    CXX = _compile.find_cxx()
except sim.SimCompileError:
    pytest.skip("the simulator needs a C++ compiler at run time", allow_module_level=True)
if sim.find_clang() is None:
    pytest.skip("the simulator checks kernel files with clang++ (not found)", allow_module_level=True)

KERNEL = """
#include <metal_stdlib>
using namespace metal;
kernel void twice(device float* y [[buffer(0)]], uint gid [[thread_position_in_grid]]) { y[gid] = 2.0f * y[gid]; }
"""


def _run(source):
    res = sim.run(source, "twice", 1, 32, {0: np.arange(32, dtype=np.float32)}, schedules=1)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[0], 2 * np.arange(32, dtype=np.float32))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A unique kernel built once in a clean cache: (source, module file name, runtime folder)."""
    source = KERNEL + f"// {uuid.uuid4()}\n"
    clean = tmp_path_factory.mktemp("clean")
    mp = pytest.MonkeyPatch()
    mp.setenv("FLASH_ATTN_CY_SIM_CACHE", str(clean))
    try:
        _run(source)
    finally:
        mp.undo()
    (so,) = clean.glob("mod-*.so")
    (rt,) = clean.glob("rt-*")
    return source, so.name, rt


def _hostile_module(path: Path, marker: Path, key: str = "") -> None:
    """A shared library that, if ever loaded, creates `marker`; with `key`, it claims to be that module."""
    src = path.with_suffix(".c")
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void at_load(void) {\n'
                   f'    FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n'
                   f'const char fake_key[] = "fasim-module-key:{key}";\n')
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(path)], check=True)
    src.unlink()
    os.chmod(path, 0o700)


def _forget_loaded(monkeypatch):
    monkeypatch.setattr(_compile, "_loaded", {})
    monkeypatch.setattr(_compile, "_private_dir", None)
    from flash_attn_cy.sim import _run as run_mod
    monkeypatch.setattr(run_mod, "_modules", {})


def _plant(tmp_path, name, so_name, rt, marker, key, mode):
    d = tmp_path / name
    d.mkdir()
    shutil.copytree(rt, d / rt.name)
    _hostile_module(d / so_name, marker, key)
    os.chmod(d, mode)
    return d


def test_world_writable_cache_is_never_loaded(tmp_path, monkeypatch, built):
    source, so_name, rt = built
    key = so_name.split("-")[1]
    marker = tmp_path / "loaded-from-shared-dir"
    shared = _plant(tmp_path, "shared", so_name, rt, marker, key, 0o777)
    _forget_loaded(monkeypatch)
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_CACHE", str(shared))
    before = sorted(p.name for p in shared.iterdir())
    with pytest.warns(RuntimeWarning, match="group or others can write it") as rec:
        _run(source)
        _run(source + "// a second kernel: no second warning\n")
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert not marker.exists(), "a module from a world-writable cache directory was loaded"
    assert sorted(p.name for p in shared.iterdir()) == before, "the simulator wrote into the shared directory"
    private = _compile.cache_dir()
    assert private != shared and (os.stat(private).st_mode & 0o777) == 0o700


def test_module_with_a_wrong_key_is_never_loaded(tmp_path, monkeypatch, built):
    source, so_name, rt = built
    marker = tmp_path / "loaded-wrong-key"
    own = _plant(tmp_path, "own", so_name, rt, marker, "0" * 24, 0o700)
    _forget_loaded(monkeypatch)
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_CACHE", str(own))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own directory: no warning, the module is just rebuilt
        _run(source)
    assert not marker.exists(), "a module whose key does not match its name was loaded"
    assert _compile._module_matches(own / so_name, so_name.split("-")[1])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_module_owned_by_another_user_is_never_loaded(tmp_path, monkeypatch, built):
    source, so_name, rt = built
    key = so_name.split("-")[1]
    marker = tmp_path / "loaded-foreign-owner"
    own = _plant(tmp_path, "own", so_name, rt, marker, key, 0o700)
    os.chown(own / so_name, 12345, 12345)  # right name, right key, but not ours
    _forget_loaded(monkeypatch)
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_CACHE", str(own))
    _run(source)
    assert not marker.exists(), "a module owned by another user was loaded"
    assert os.stat(own / so_name).st_uid == os.geteuid()  # rebuilt in place


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_cache_directory_owned_by_another_user_is_never_used(tmp_path, monkeypatch, built):
    source, so_name, rt = built
    key = so_name.split("-")[1]
    marker = tmp_path / "loaded-foreign-dir"
    theirs = _plant(tmp_path, "theirs", so_name, rt, marker, key, 0o755)
    os.chown(theirs, 12345, 12345)
    _forget_loaded(monkeypatch)
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_CACHE", str(theirs))
    with pytest.warns(RuntimeWarning, match="owned by uid 12345"):
        _run(source)
    assert not marker.exists()


def test_temp_fallback_is_created_private_and_a_planted_one_is_refused(tmp_path, monkeypatch):
    """A read-only cache location falls back to $TMPDIR/flash_attn_cy-sim-<uid>: created 0700; if someone else
    planted that name world-writable first, it is refused for a private directory."""
    monkeypatch.setattr(_compile, "_private_dir", None)
    ro = tmp_path / "ro" / "sub"
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_CACHE", str(ro))
    real_access = os.access
    monkeypatch.setattr(_compile.os, "access", lambda p, m: False if Path(p) == ro else real_access(p, m))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(_compile.tempfile, "gettempdir", lambda: str(tmp))
    d = _compile.cache_dir()
    assert d == tmp / f"flash_attn_cy-sim-{os.getuid()}" and (os.stat(d).st_mode & 0o777) == 0o700
    os.chmod(d, 0o777)  # as if another user had created it for us
    with pytest.warns(RuntimeWarning, match="group or others can write it"):
        p = _compile.cache_dir()
    assert p != d and (os.stat(p).st_mode & 0o777) == 0o700 and os.stat(p).st_uid == os.geteuid()
