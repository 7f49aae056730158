"""The wheel workflow (.github/workflows/wheels.yml) and the cibuildwheel configuration (pyproject.toml), checked as far
as possible without GitHub: the workflow parses, builds macOS arm64 wheels on an Xcode 26 runner after downloading the
Metal toolchain, manylinux x86_64 and aarch64 wheels on native runners, the sdist, and tests them; every inline script
compiles; and `cibuildwheel --print-build-identifiers` selects, for each platform, exactly the CPython versions the
project supports (skips with a message when cibuildwheel is not installed: `pip install cibuildwheel`, in the [test]
extra).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _paths import ROOT  # noqa: E402
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
yaml = pytest.importorskip("yaml")
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _doc() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _runs(job: dict) -> list:
    return [str(s.get("run", "")) for s in job["steps"]]


def _step_index(job: dict, needle: str) -> int:
    hits = [i for i, run in enumerate(_runs(job)) if needle in run]
    assert hits, f"no step runs {needle!r}"
    return hits[0]


def test_jobs_and_runners() -> None:
    jobs = _doc()["jobs"]
    assert set(jobs) >= {"linux", "macos", "sdist"}
    include = jobs["linux"]["strategy"]["matrix"]["include"]
    assert {(m["arch"], m["runner"].endswith("-arm")) for m in include} == {("x86_64", False), ("aarch64", True)}
    # Xcode 26 (macos-26 images and later): the Metal toolchain is a separate download there
    assert re.fullmatch(r"macos-(2[6-9]|[3-9]\d)", jobs["macos"]["runs-on"]), jobs["macos"]["runs-on"]
    assert set(jobs["sdist"]["strategy"]["matrix"]["runner"]) >= {"ubuntu-24.04"}
    assert any(r.startswith("macos-") for r in jobs["sdist"]["strategy"]["matrix"]["runner"])


def test_macos_builds_get_the_metal_toolchain_and_require_the_metallib() -> None:
    job = _doc()["jobs"]["macos"]
    toolchain = _step_index(job, "bash .ci/macos_metal_toolchain.sh")
    build = _step_index(job, "cibuildwheel --platform macos --archs arm64")
    check = _step_index(job, "fa_kernels.metallib")
    assert toolchain < build < check
    # the test workflow's builds too: hosted runners and the self-hosted Apple GPU
    macos = yaml.safe_load((ROOT / ".github" / "workflows" / "macos.yml").read_text())
    for name in ("hosted", "apple-gpu"):
        j = macos["jobs"][name]
        pip = _step_index(j, "-Csetup-args=-Dmetallib=enabled")
        assert _step_index(j, "bash .ci/macos_metal_toolchain.sh") < pip and "-Dmetal=enabled" in _runs(j)[pip]
    mac = _pyproject()["tool"]["cibuildwheel"]["macos"]
    assert {"-Dmetal=enabled", "-Dmetallib=enabled"} <= set(mac["config-settings"]["setup-args"])
    assert "--require-metallib" in mac["test-command"]
    # the wheel targets the macOS the metallib is compiled for (objc/meson.build: -mmacosx-version-min)
    target = re.search(r"-mmacosx-version-min=([\d.]+)", (ROOT / "objc" / "meson.build").read_text()).group(1)
    assert mac["environment"]["MACOSX_DEPLOYMENT_TARGET"] == target


def test_every_wheel_is_tested_without_gpu_claims() -> None:
    cfg = _pyproject()["tool"]["cibuildwheel"]
    for cmd in (cfg["test-command"], cfg["macos"]["test-command"]):
        assert cmd.startswith("python {project}/.ci/wheel_check.py --project {project}"), cmd
    check = (ROOT / ".ci" / "wheel_check.py").read_text()
    assert '"verify", "--quick", "--backend", "cpu"' in check and 'cli.main(["info"])' in check
    assert "library_functions()" in check  # macOS: the metallib loads and lists every kernel
    linux = _doc()["jobs"]["linux"]
    qemu = _runs(linux)[_step_index(linux, "qemu-x86_64 -cpu Westmere")]
    assert "--expect-portable" in qemu and "cibuildwheel" not in qemu


def test_sdist_built_and_installed_from_source() -> None:
    runs = "\n".join(_runs(_doc()["jobs"]["sdist"]))
    assert "python -m build --sdist" in runs and "pip install dist/flash_attn_cy-*.tar.gz" in runs
    assert ".ci/wheel_check.py" in runs


def test_inline_scripts_compile(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    blocks = 0
    for name, job in _doc()["jobs"].items():
        for step in job["steps"]:
            run = step.get("run")
            if not run:
                continue
            for block in re.findall(r"<<'PY'\n(.*?)\n\s*PY\b", run, flags=re.S):
                compile(block, f"{name}:{step.get('name')}", "exec")
                blocks += 1
            if bash:
                script = tmp_path / "step.sh"
                script.write_text(run)
                check = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
                assert check.returncode == 0, f"{name}:{step.get('name')}: {check.stderr}"
    assert blocks >= 2, blocks


def _cibuildwheel() -> list:
    if importlib.util.find_spec("cibuildwheel") is None:
        pytest.skip("cibuildwheel is not installed (pip install cibuildwheel, in the [test] extra)")
    return [sys.executable, "-m", "cibuildwheel"]


def _identifiers(platform: str, arch: str, everything: bool = False) -> list:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    if everything:  # what this cibuildwheel would build with no selection of ours
        env.update(CIBW_BUILD="*", CIBW_SKIP="")
    r = subprocess.run([*_cibuildwheel(), "--print-build-identifiers", "--platform", platform, "--archs", arch],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("platform,arch,tag", [("linux", "x86_64", "manylinux_x86_64"),
                                               ("linux", "aarch64", "manylinux_aarch64"),
                                               ("macos", "arm64", "macosx_arm64")])
def test_build_identifiers(platform: str, arch: str, tag: str) -> None:
    ids = _identifiers(platform, arch)
    assert ids and all(i.endswith(tag) and re.fullmatch(r"cp3\d+-\w+", i) for i in ids), ids
    lowest = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", _pyproject()["project"]["requires-python"]).groups())
    offered = {i.split("-")[0] for i in _identifiers(platform, arch, everything=True)
               if re.fullmatch(rf"cp3\d+-{tag}", i) and (3, int(i[3:].split("-")[0])) >= lowest}
    assert set(i.split("-")[0] for i in ids) == offered  # every supported CPython, no free-threaded, no musllinux
    assert f"cp3{lowest[1]}" in offered


def test_pinned_cibuildwheel_is_the_one_checked() -> None:
    _cibuildwheel()
    pinned = _doc()["env"]["CIBUILDWHEEL_VERSION"]
    assert importlib.metadata.version("cibuildwheel") == pinned  # the identifiers above are the workflow's
    extra = " ".join(_pyproject()["project"]["optional-dependencies"]["test"])
    assert f"cibuildwheel=={pinned}" in extra


FAKE_XCRUN = """#!/bin/sh
# fake xcrun: metal works once $FAKE/downloaded exists, or when TOOLCHAINS names the downloaded toolchain
echo "xcrun $*" >> "$FAKE/log"
case "$*" in
  *"-f metallib"*) echo /fake/metallib; exit 0;;
esac
if [ -e "$FAKE/downloaded" ] && { [ -z "$FAKE_NEEDS_TOOLCHAINS" ] || [ "$TOOLCHAINS" = "$FAKE_ID" ]; }; then
  echo "Apple metal version 32023.883"; exit 0
fi
echo "error: cannot execute tool 'metal' due to missing Metal Toolchain" >&2; exit 1
"""
FAKE_XCODEBUILD = """#!/bin/sh
echo "xcodebuild $*" >> "$FAKE/log"
case "$1" in
  -version) echo "Xcode 26.1"; exit 0;;
  -downloadComponent) [ -n "$FAKE_DOWNLOAD_FAILS" ] && exit 70; touch "$FAKE/downloaded"; exit 0;;
  -showComponent) printf '{"identifier": "MetalToolchain", "toolchain": "%s"}\\n' "$FAKE_ID"; exit 0;;
esac
exit 64
"""


@pytest.mark.parametrize("case", ["present", "downloaded", "needs_toolchains", "unavailable"])
def test_metal_toolchain_script(tmp_path: Path, case: str) -> None:
    bash = shutil.which("bash")
    if bash is None or shutil.which("python3") is None:
        pytest.skip("needs bash and python3")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("xcrun", FAKE_XCRUN), ("xcodebuild", FAKE_XCODEBUILD)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    ident = "com.apple.dt.toolchain.Metal.32023.883"
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLCHAINS", "GITHUB_ENV")}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", FAKE=str(tmp_path), FAKE_ID=ident,
               GITHUB_ENV=str(tmp_path / "github_env"))
    if case == "present":
        (tmp_path / "downloaded").touch()
    if case == "needs_toolchains":
        env["FAKE_NEEDS_TOOLCHAINS"] = "1"
    if case == "unavailable":
        env["FAKE_DOWNLOAD_FAILS"] = "1"
    r = subprocess.run([bash, str(ROOT / ".ci" / "macos_metal_toolchain.sh")], capture_output=True, text=True,
                       env=env, timeout=60)
    log = (tmp_path / "log").read_text()
    if case == "unavailable":
        assert r.returncode != 0  # the job stops before any build could embed kernel source instead
        return
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("-downloadComponent MetalToolchain" in log) == (case != "present")
    exported = (tmp_path / "github_env").read_text() if (tmp_path / "github_env").exists() else ""
    assert (f"TOOLCHAINS={ident}" in exported) == (case == "needs_toolchains")
