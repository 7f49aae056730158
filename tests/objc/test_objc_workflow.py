"""The macOS GitHub Actions workflow (.github/workflows/macos.yml) is checked here as far as possible without
GitHub: it parses, targets Apple Silicon runners, builds with the Metal shim required, runs the suite and `verify`,
and every inline Python and shell script in it at least compiles."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from _paths import ROOT  # noqa: E402
WORKFLOW = ROOT / ".github" / "workflows" / "macos.yml"
yaml = pytest.importorskip("yaml")


def _steps():
    doc = yaml.safe_load(WORKFLOW.read_text())
    for job_name, job in doc["jobs"].items():
        for step in job["steps"]:
            yield job_name, job, step


def test_runners_are_apple_silicon() -> None:
    doc = yaml.safe_load(WORKFLOW.read_text())
    hosted = doc["jobs"]["hosted"]
    runners = hosted["strategy"]["matrix"]["runner"]
    assert runners and all(re.fullmatch(r"macos-(1[4-9]|[2-9]\d)", r) for r in runners), runners  # arm64 images
    assert doc["jobs"]["apple-gpu"]["runs-on"] == ["self-hosted", "macOS", "ARM64"]


def test_builds_tests_and_verifies() -> None:
    text = WORKFLOW.read_text()
    for job in ("hosted", "apple-gpu"):
        runs = "\n".join(str(s.get("run", "")) for j, _, s in _steps() if j == job)
        assert "-Dmetal=enabled" in runs, job          # a macOS build without the shim must fail, not pass quietly
        assert "-m pytest" in runs and "flash_attn_cy verify" in runs, job
    assert "Paravirtual" in text  # the hosted-runner limitation is stated where people will read it


def test_inline_scripts_compile(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    python_blocks = 0
    for job, _, step in _steps():
        run = step.get("run")
        if not run:
            continue
        for block in re.findall(r"<<'PY'\n(.*?)\nPY\b", run, flags=re.S):
            compile(block, f"{job}:{step.get('name')}", "exec")
            python_blocks += 1
        if bash:
            script = tmp_path / "step.sh"
            script.write_text(run)
            check = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
            assert check.returncode == 0, f"{job}:{step.get('name')}: {check.stderr}"
    assert python_blocks >= 4, python_blocks  # the extraction itself found the scripts
