"""The `sim_math` fixture: a simulator test that takes it runs twice, with IEEE math (the simulator's default) and
under the model of Metal's default fast math (FLASH_ATTN_CY_SIM_FAST_MATH=1: transcendental functions at the MSL
specification's error bounds, denormals flushed, NaN/Inf and out-of-range arguments reported as `fast-math-hazard`
faults; csrc/sim/include/fasim_fast_math.h). Kernels that pass in both modes do not depend on IEEE behaviour that a
Mac would not give them. The IEEE runs also run under the hazard detector (_sim_hazards.py), so every such test checks
the kernels for races too, at the cost of one instrumented run. Use it in a module with
`pytestmark = pytest.mark.usefixtures("sim_math")` after `from _sim_math import sim_math`."""
from __future__ import annotations

import os

import pytest

from _sim_hazards import HAZARDS_ENV, enable_hazards

MODES = ["ieee", "fast_math"]


@pytest.fixture(params=MODES)
def sim_math(request, monkeypatch):
    if request.param == "fast_math":
        monkeypatch.setenv("FLASH_ATTN_CY_SIM_FAST_MATH", "1")
        if os.environ.get(HAZARDS_ENV) != "0":
            monkeypatch.delenv(HAZARDS_ENV, raising=False)
    else:
        monkeypatch.delenv("FLASH_ATTN_CY_SIM_FAST_MATH", raising=False)
        enable_hazards(monkeypatch)
    return request.param
