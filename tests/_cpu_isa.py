"""The `isa` fixture of the CPU forward and decode tests: every test that takes it runs twice, on the runtime-selected kernels
(AVX-512 where the CPU has it) and on the portable ones (FLASH_ATTN_CY_CPU_ISA=portable). Import it into a test
module (`from _cpu_isa import isa`) to use it there."""
from __future__ import annotations

import pytest

ISAS = ["auto", "portable"]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    if request.param == "portable":
        monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", "portable")
    else:
        monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA", raising=False)
    return request.param
