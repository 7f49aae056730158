"""`python -m flash_attn_cy bench --threads 1,N`: the thread-scaling table (issue 20, item 5) - ours and PyTorch's
parallel efficiency side by side, also timed in a child process with OMP_WAIT_POLICY=PASSIVE."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

flash_attn_cy = pytest.importorskip("flash_attn_cy")


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_efficiency_is_relative_to_the_smallest_count():
    from flash_attn_cy._bench_scaling import efficiency

    assert efficiency({1: 8.0, 4: 2.0, 16: 1.0}, 4) == 1.0
    assert efficiency({1: 8.0, 4: 2.0, 16: 1.0}, 16) == 0.5
    assert efficiency({2: 8.0, 8: 4.0}, 8) == 0.5  # (8 ms x 2) / (4 ms x 8)
    assert efficiency({1: 8.0, 4: 2.0}, 1) is None


def test_issue_cases_are_the_default():
    from flash_attn_cy._bench_scaling import SCALING_CASES

    labels = [s.label() for s in SCALING_CASES]
    assert "b1 h8 s2048 d64 bf16" in labels and "b4 h32 s512 d128 fp32" in labels
    assert "b1 h8 s2048 d64 bf16 causal fwd+bwd" in labels and "b1 h32/8 s1x8192 d128 bf16 decode" in labels


@pytest.mark.parametrize("torch_side", [False, True])
def test_bench_threads_list_prints_the_scaling_table(tmp_path, torch_side):
    if torch_side and not _has_torch():
        pytest.skip("PyTorch is not installed")
    out = tmp_path / "scaling.json"
    args = ["bench", "--threads", "1,2", "--seqlens", "64", "--headdims", "16", "--dtypes", "fp32", "--heads", "2",
            "--causal", "false", "--min-time", "0", "--min-reps", "1", "--json", str(out), "--quiet"]
    if not torch_side:
        args.append("--no-torch")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-m", "flash_attn_cy", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cpu ms @1" in r.stdout and "cpu ms @2" in r.stdout and "cpu eff@2" in r.stdout
    assert "b1 h2 s64 d16 fp32" in r.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["threads"] == [1, 2]
    (row,) = data["rows"]
    assert row["ms"]["cpu"]["1"] > 0 and row["ms"]["cpu"]["2"] > 0
    assert row["efficiency"]["default"]["cpu"]["2"] > 0
    if torch_side:
        assert row["ms"]["torch"]["2"] > 0
        assert row["ms_omp_passive"]["cpu"]["2"] > 0 and row["ms_omp_passive"]["torch"]["2"] > 0
        assert row["efficiency"]["omp_passive"]["torch"]["2"] > 0
    else:
        assert "torch" not in row["ms"] and row["ms_omp_passive"] is None


def test_one_thread_count_keeps_the_plain_table(tmp_path):
    args = ["bench", "--threads", "1", "--seqlens", "32", "--headdims", "8", "--dtypes", "fp32", "--heads", "2",
            "--causal", "false", "--min-time", "0", "--min-reps", "1", "--no-peak", "--no-torch", "--quiet"]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-m", "flash_attn_cy", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cpu ms" in r.stdout and "eff@" not in r.stdout
