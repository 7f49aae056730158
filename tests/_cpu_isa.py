"""The `isa` fixture of the CPU forward and decode tests: every test that takes it runs on the runtime-selected kernels
("auto": AVX-512 where the CPU has it), on the AVX2 kernels (FLASH_ATTN_CY_CPU_ISA=avx2; skipped on a CPU without
AVX2+FMA+F16C) and on the portable ones (FLASH_ATTN_CY_CPU_ISA=portable). Import it into a test module
(`from _cpu_isa import isa`) to use it there."""
from __future__ import annotations

import pytest

ISAS = ["auto", "avx2", "portable"]


def cpu_isa_in_use() -> str:
    """The kernel set the CPU backend uses now: the first word of its description ("avx512", "avx2", "portable"),
    without the "-bf16" of the avx512-bf16 path."""
    import flash_attn_cy

    desc = flash_attn_cy.backends()["cpu"]["description"]
    return desc.split(" kernels")[0].split(", ", 1)[1].split()[0].split("-")[0]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    if request.param == "auto":
        monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", request.param)
        if cpu_isa_in_use() != request.param:
            pytest.skip(f"this CPU cannot run the {request.param} kernels (AVX2 needs AVX2+FMA+F16C)")
    return request.param
