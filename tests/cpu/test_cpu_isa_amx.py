"""The AMX kernels (csrc/cpu/tile_kernels_amx.cpp: bf16 and fp16 forward; csrc/cpu/backward/bwd_kernels_amx.cpp: the
bf16 backward's products) and how they are chosen. Their arithmetic is checked against the float64 reference by the
`isa` fixture's "amx" / "amx-emulated" cases (tests/cpu/test_cpu_forward*.py) and by tests/backward/test_backward.py;
here: the scalar model of the tiles (FLASH_ATTN_CY_CPU_ISA=amx-emulated, amx_tiles.h) against the hardware on a CPU
with AMX, and the selection, hiding and fallback on any x86-64 CPU. The model sums each TDPBF16PS in the order of the
SDM's pseudo-code; whether the hardware sums in that very order has not been checked on an AMX machine, so the two
are held to the difference a reordered fp32 sum can make (a rounding step of the output dtype), not to equal bits. A CPU without AMX-BF16 (or whose
OS refuses the tile state) cannot run the hardware path: those tests say so when they skip."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from _cpu_isa import cpu_isa_in_use

fa = pytest.importorskip("flash_attn_cy")


def _runs(monkeypatch, isa: str) -> bool:
    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", isa)
    ok = cpu_isa_in_use() == isa
    monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA")
    return ok


def _fresh(env_extra: dict, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("FLASH_ATTN_CY_CPU_ISA", None)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.abspath(__file__)))


def _forward_backward(dtype: str, causal: bool, d: int, seed: int = 0):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    q, k, v = [torch.randn(1, 150, 2, d, generator=g).to(tdt).requires_grad_() for _ in range(3)]
    out = fa.flash_attn_func(q, k, v, causal=causal)
    if dtype != "bf16":  # the AMX backward serves bf16; fp16's runs the AVX-512 kernels either way
        return [out.detach()]
    out.backward(torch.randn(out.shape, generator=g).to(tdt))
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [40, 64, 128])
def test_emulated_tiles_match_the_hardware(monkeypatch, dtype, causal, d):
    if not _runs(monkeypatch, "amx"):
        pytest.skip("this CPU cannot run the AMX kernels (it needs AMX-BF16, AVX512-BF16 and the OS's tile state)")
    results = {}
    for isa in ("amx", "amx-emulated"):
        monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", isa)
        results[isa] = _forward_backward(dtype, causal, d)
    step = {"bf16": 2.0 ** -7, "fp16": 2.0 ** -10}[dtype]  # relative rounding step of the output dtype
    for hw, emu in zip(results["amx"], results["amx-emulated"]):
        hw, emu = hw.float().numpy(), emu.float().numpy()
        assert np.abs(hw - emu).max() <= 2 * step * np.abs(emu).max()


def test_amx_is_the_best_set_where_it_runs(monkeypatch):
    if not _runs(monkeypatch, "amx"):
        pytest.skip("this CPU cannot run the AMX kernels (it needs AMX-BF16, AVX512-BF16 and the OS's tile state)")
    assert cpu_isa_in_use() == "amx"


def test_hiding_amx_leaves_the_avx512_kernels():
    r = _fresh({"FLASH_ATTN_CY_CPU_HIDE": "amx"},
               "import flash_attn_cy as fa; print(fa.backends()['cpu']['description'])")
    assert r.returncode == 0, r.stderr
    assert ", amx" not in r.stdout, r.stdout


def test_forcing_amx_without_it_warns_and_keeps_the_best_set(monkeypatch):
    if _runs(monkeypatch, "amx"):
        pytest.skip("this CPU runs the AMX kernels")
    r = _fresh({"FLASH_ATTN_CY_CPU_ISA": "amx"},
               "import warnings; warnings.simplefilter('error'); import flash_attn_cy")
    assert r.returncode != 0
    assert "cannot run the amx kernels" in r.stderr, r.stderr


def test_emulated_tiles_are_named(monkeypatch):
    if not _runs(monkeypatch, "amx-emulated"):
        pytest.skip("the AMX tiles' model runs on CPUs with AVX512-BF16 only")
    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", "amx-emulated")
    desc = fa.backends()["cpu"]["description"]
    assert "amx-emulated" in desc and "forced by FLASH_ATTN_CY_CPU_ISA" in desc
