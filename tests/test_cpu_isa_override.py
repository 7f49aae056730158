"""FLASH_ATTN_CY_CPU_ISA: 'portable' forces the portable CPU kernels; any other value is pointed out at import
(it used to be ignored silently, so FLASH_ATTN_CY_CPU_ISA=avx2 looked like it did something)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "import warnings; warnings.simplefilter('error'); import flash_attn_cy"


def _import_with(value):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if value is None:
        env.pop("FLASH_ATTN_CY_CPU_ISA", None)
    else:
        env["FLASH_ATTN_CY_CPU_ISA"] = value
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value", [None, "", "portable"])
def test_known_values_import_quietly(value):
    r = _import_with(value)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", ["avx2", "Portable", "avx512"])
def test_unknown_value_is_pointed_out(value):
    r = _import_with(value)
    assert r.returncode != 0
    assert "RuntimeWarning" in r.stderr and f"FLASH_ATTN_CY_CPU_ISA={value!r}" in r.stderr and "portable" in r.stderr
