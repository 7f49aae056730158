"""The `isa` fixture of the CPU forward and decode tests: every test that takes it runs on the runtime-selected kernels
("auto": AMX or AVX-512 where the CPU has it), on the AVX-512 kernels without AMX (FLASH_ATTN_CY_CPU_ISA=avx512;
skipped without AVX-512), on the AMX tile kernels (amx: skipped on a CPU without AMX-BF16 or whose OS refuses its tile
state; amx-emulated: the same kernels on the tiles' scalar model, on any CPU with AVX512-BF16), on the AVX2 kernels
(FLASH_ATTN_CY_CPU_ISA=avx2; skipped on a CPU without AVX2+FMA+F16C) and on the portable ones
(FLASH_ATTN_CY_CPU_ISA=portable). Import it into a test module
(`from _cpu_isa import isa`) to use it there."""
from __future__ import annotations

import pytest

ISAS = ["auto", "avx512", "amx", "amx-emulated", "avx2", "portable"]
# why a forced set may be absent, for the skip message
NEEDS = {"avx512": "AVX-512 F/BW/VL/DQ", "amx": "AMX-BF16 granted by the OS (and AVX512-BF16)",
         "amx-emulated": "AVX512-BF16", "avx2": "AVX2+FMA+F16C"}


def cpu_isa_in_use() -> str:
    """The kernel set the CPU backend uses now: the first word of its description ("amx", "amx-emulated", "avx512",
    "avx2", "portable"), without the "-bf16" of the avx512-bf16 path."""
    import flash_attn_cy

    desc = flash_attn_cy.backends()["cpu"]["description"]
    word = desc.split(" kernels")[0].split(", ", 1)[1].split()[0]
    return word if word.startswith("amx") else word.split("-")[0]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA", raising=False)
    if request.param != "auto" and cpu_isa_in_use() == request.param:
        pytest.skip(f"the {request.param} kernels are this CPU's best set: the 'auto' case runs them")
    if request.param != "auto":
        monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", request.param)
        if cpu_isa_in_use() != request.param:
            pytest.skip(f"this CPU cannot run the {request.param} kernels ({request.param} needs "
                        f"{NEEDS[request.param]})")
    return request.param
