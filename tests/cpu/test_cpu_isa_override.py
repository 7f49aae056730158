"""FLASH_ATTN_CY_CPU_ISA: 'portable', 'avx2', 'avx512', 'amx' and 'amx-emulated' force those CPU kernels; any other value is pointed out at
import (it used to be ignored silently). Forcing a set the CPU cannot run: tests/cpu/test_cpu_isa_avx2.py."""
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


@pytest.mark.parametrize("value", [None, "", "portable", "avx2", "avx512", "amx", "amx-emulated"])
def test_known_values_import_quietly(monkeypatch, value):
    if value not in (None, "", "portable"):
        from _cpu_isa import cpu_isa_in_use

        monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", value)
        if cpu_isa_in_use() != value:
            pytest.skip(f"this CPU cannot run the {value} kernels (that warns: test_cpu_isa_avx2.py)")
    r = _import_with(value)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", ["AVX2", "Portable", "avx-512", "AMX", "amx_emulated"])
def test_unknown_value_is_pointed_out(value):
    r = _import_with(value)
    assert r.returncode != 0
    assert "RuntimeWarning" in r.stderr and f"FLASH_ATTN_CY_CPU_ISA={value!r}" in r.stderr and "portable" in r.stderr
