"""The set-up scripts behind the README's two commands.

`.ci/install-torch` (the README's first command and .ci/run): on Linux PyTorch's CPU index first, and where that
index cannot be reached a quick fall-back (seconds, not pip's long time-outs) to the default index. Exercised with real
pip against local indexes that serve a tiny stand-in package, so nothing is downloaded and the venv is not touched.

`.ci/apt-deps` (.ci/run's root step): says what it installs as root before it does, and FLASH_ATTN_CY_SKIP_APT=1
skips it. Exercised with stand-ins for id, apt-get and the compiler, so nothing is installed."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import zipfile

import pytest

from _paths import ROOT  # noqa: E402
SCRIPT = ROOT / ".ci" / "install-torch"
WHEEL = "fa_cy_probe-1.0-py3-none-any.whl"

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the CPU index is tried on Linux only")


def _index(root: pathlib.Path) -> str:
    """A PEP 503 index in a directory serving one tiny pure-Python wheel; returns its file:// URL."""
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / WHEEL, "w") as z:
        z.writestr("fa_cy_probe/__init__.py", "SOURCE = %r\n" % str(root))
        z.writestr("fa_cy_probe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fa-cy-probe\nVersion: 1.0\n")
        z.writestr("fa_cy_probe-1.0.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fa_cy_probe-1.0.dist-info/RECORD", "")
    page = root / "simple" / "fa-cy-probe"
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<html><body><a href="../../{WHEEL}">{WHEEL}</a></body></html>\n')
    return (root / "simple").as_uri() + "/"


def _run(tmp_path, cpu_index: str, default_index: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull,  # this machine's pip config (mirrors, find-links) must not interfere
               PIP_INDEX_URL=default_index, PIP_DEFAULT_TIMEOUT="180",  # the long time-out the script must not wait
               PYTHON=sys.executable, FLASH_ATTN_CY_TORCH_INDEX=cpu_index,
               FLASH_ATTN_CY_TORCH_REQUIREMENT="fa-cy-probe==1.0")
    target = tmp_path / "target"
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(SCRIPT), "--target", str(target), "--no-cache-dir"], env=env,
                       capture_output=True, text=True, timeout=300)
    return r, time.perf_counter() - t0, target


@linux_only
@pytest.mark.parametrize("cpu_index", [
    "https://127.0.0.1:9/simple/",     # nothing listens: refused at once
    "https://10.255.255.1/simple/",    # unroutable (a dropped connection): bounded by --timeout 5
    "https://download.pytorch.org.invalid/whl/cpu/",  # no such host
])
def test_unreachable_cpu_index_falls_back_to_the_default_index_in_seconds(tmp_path, cpu_index):
    default = _index(tmp_path / "default")
    r, seconds, target = _run(tmp_path, cpu_index, default)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "from PyTorch's CPU index" in r.stdout
    assert "installing fa-cy-probe==1.0 from the default package index" in r.stdout
    assert "default" in (target / "fa_cy_probe" / "__init__.py").read_text()  # really from the default index
    # no retries (pip's default 5, with back-off, take ~10 s even when each attempt fails at once) and no long
    # time-out (PIP_DEFAULT_TIMEOUT=180 above): the whole run is two pip start-ups
    assert "Retrying" not in r.stderr, r.stderr
    assert seconds < 60, f"fall-back took {seconds:.0f}s"


@linux_only
def test_reachable_cpu_index_is_used_without_falling_back(tmp_path):
    cpu = _index(tmp_path / "cpu")
    r, _, target = _run(tmp_path, cpu, "https://127.0.0.1:9/simple/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "default package index" not in r.stdout
    assert "cpu" in (target / "fa_cy_probe" / "__init__.py").read_text()


def test_readme_and_ci_use_the_script():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    block = setup.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2, commands  # exactly two set-up commands
    assert commands[0].startswith("bash .ci/install-torch") and commands[1] == "bash .ci/run"
    assert "pip install torch==" not in block  # never the plain (CUDA on Linux) default-index install
    assert ".ci/install-torch" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _apt_deps(tmp_path, have_qemu=True, **env_extra):
    """Runs .ci/apt-deps as root on a machine without clang-19 or libobjc (and without qemu-x86_64, qemu-aarch64 and
    the AArch64 cross compiler unless have_qemu), with apt-get logging its calls."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "apt.log"
    for name, body in {"id": 'echo 0',  # root
                       "apt-get": f'echo "apt-get $*" >> {log}',
                       "gcc": 'echo libobjc.so',  # the compiler finds no libobjc.so
                       **({"qemu-x86_64": "exit 0", "qemu-aarch64": "exit 0", "aarch64-linux-gnu-g++": "exit 0"}
                          if have_qemu else {})}.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    env = {"PATH": str(stubs), "HOME": str(tmp_path), **env_extra}  # no clang-19 on this PATH
    bash = subprocess.run(["sh", "-c", "command -v bash"], capture_output=True, text=True).stdout.strip()
    r = subprocess.run([bash, str(ROOT / ".ci" / "apt-deps")], env=env, capture_output=True, text=True, timeout=60)
    return r, (log.read_text().splitlines() if log.exists() else [])


def test_apt_step_says_what_it_installs_as_root_before_doing_it(tmp_path):
    r, calls = _apt_deps(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installing as root, system-wide, with apt-get: clang-19 libobjc-12-dev" in r.stdout
    assert "FLASH_ATTN_CY_SKIP_APT=1" in r.stdout  # and how to avoid it
    assert calls == ["apt-get update -qq", "apt-get install -y -qq clang-19 libobjc-12-dev"]


def test_apt_step_adds_qemu_user_on_x86_64_when_missing(tmp_path):
    r, calls = _apt_deps(tmp_path, have_qemu=False, HOSTTYPE="x86_64")
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls == ["apt-get update -qq",
                     "apt-get install -y -qq clang-19 libobjc-12-dev qemu-user g++-aarch64-linux-gnu"]
    (tmp_path / "arm").mkdir()
    r, calls = _apt_deps(tmp_path / "arm", have_qemu=False, HOSTTYPE="aarch64")  # both are x86-64 hosts' tests
    assert calls == ["apt-get update -qq", "apt-get install -y -qq clang-19 libobjc-12-dev"]


def test_apt_step_is_skipped_with_flash_attn_cy_skip_apt(tmp_path):
    r, calls = _apt_deps(tmp_path, FLASH_ATTN_CY_SKIP_APT="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert calls == []
    assert "FLASH_ATTN_CY_SKIP_APT=1: not installing clang-19 libobjc-12-dev" in r.stdout


def test_ci_run_uses_the_apt_step():
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'bash "$ROOT/.ci/apt-deps"' in run and "apt-get install" not in run
