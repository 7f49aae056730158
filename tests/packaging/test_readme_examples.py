"""The README's examples run as written (issue 16 item 12): every ```python block, as a script in an empty directory
with the installed package, and the simulator's shell example from the root of the checkout, which it must leave as
it was (its files go to a temporary directory). Blocks that need a Mac are skipped with the reason."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from _paths import ROOT  # noqa: E402
README = ROOT / "README.md"
MAC_ONLY = re.compile(r"\"mps\"|'mps'|backend=\"metal\"|mx\.metal")  # needs Apple's GPU


def _blocks(lang: str):
    if not README.is_file():
        return []
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the installed package, as a user has it
    return env


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs_as_written(tmp_path, index):
    code = PYTHON_BLOCKS[index]
    if MAC_ONLY.search(code) and sys.platform != "darwin":
        pytest.skip("needs a Mac (Metal / MPS)")
    if "import torch" in code:
        pytest.importorskip("torch", reason="the example uses PyTorch (bash .ci/install-torch)")
    if "transformers" in code:
        pytest.importorskip("transformers", reason='the example uses transformers (pip install ".[hf]")')
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def _checkout_state():
    """Every path in the checkout outside build outputs, with its modification time."""
    skip = {".git", "build", ".asv", "__pycache__", ".pytest_cache", ".hypothesis"}
    state = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            state[os.path.relpath(p, ROOT)] = os.stat(p).st_mtime_ns
    return state


def test_simulator_shell_example_writes_only_into_a_temporary_directory(tmp_path):
    if sys.version_info < (3, 11):
        pytest.skip("the example uses python -P (Python 3.11+)")
    (block,) = [b for b in _blocks("bash") if "flash_attn_cy.sim run" in b]
    assert "mktemp -d" in block
    # the README's `python` is the interpreter the package is installed in
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = _env()
    env.update(PATH=f"{shim}{os.pathsep}{env.get('PATH', '')}", TMPDIR=str(tmp_path))
    before = _checkout_state()
    r = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    after = _checkout_state()
    if r.returncode != 0 and "clang" in (r.stdout + r.stderr) and "sim check" in block:
        pytest.skip(f"the strict check needs clang-19: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: example_reduce: no faults" in r.stdout
    assert before == after, "the example changed the checkout: " + str(sorted(set(after) ^ set(before))[:10])
    (result,) = tmp_path.glob("*/results/buffer1.npy")  # mktemp -d made the directory under TMPDIR
    sums_maxes = np.load(result).reshape(4, 2)
    assert sums_maxes[:, 0].sum() == sum(range(1000)) and sums_maxes[:, 1].max() == 999


def test_transformers_example_names_an_extra_that_exists():
    text = README.read_text(encoding="utf-8")
    section = text.split('### transformers: `attn_implementation="flash_attn_cy"`', 1)[1].split("```python", 1)[0]
    m = re.search(r'pip install "\.\[(\w+)\]"', section)
    assert m, "the transformers example does not say which extra it needs"
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert m.group(1) in extras
    assert any(req.startswith("transformers") for req in extras[m.group(1)])
