"""The `sim_hazards` fixture: the sim backend runs its launches under the simulator's hazard detector
(FLASH_ATTN_CY_SIM_HAZARDS=1; csrc/sim/hazard.h): every load and store of the Metal kernels is checked against
shadow state of threadgroup memory and of the written buffers, so a race in a kernel fails the test on its first run,
naming both threads and source lines. The `sim_math` fixture (_sim_math.py) turns it on for its IEEE runs; modules
without that fixture use this one (`pytestmark = pytest.mark.usefixtures("sim_hazards")`)."""
from __future__ import annotations

import os

import pytest

HAZARDS_ENV = "FLASH_ATTN_CY_SIM_HAZARDS"


def hazard_module_built() -> bool:
    """The instrumented kernel module the backend loads (beside the core library: flash_attn_cy/sim/_sim_hazard.so;
    not built where the compiler lacks -fsanitize=thread)."""
    from flash_attn_cy import _core

    return os.path.isfile(os.path.join(os.path.dirname(_core.__file__), "sim", "_sim_hazard.so"))


def enable_hazards(monkeypatch) -> None:
    """On, unless the module is missing or the caller set FLASH_ATTN_CY_SIM_HAZARDS=0 for the whole run."""
    if hazard_module_built() and os.environ.get(HAZARDS_ENV) != "0":
        monkeypatch.setenv(HAZARDS_ENV, "1")


@pytest.fixture
def sim_hazards(monkeypatch):
    enable_hazards(monkeypatch)
