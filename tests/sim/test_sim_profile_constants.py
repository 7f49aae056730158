"""A profiled dispatch records the launch's function constants (`sim.profile()` around `sim.run`, and the sim
backend's launches through the profile hook, csrc/sim_profile_hook.h, which now hands them to the profile module
too instead of none)."""

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("simulating a kernel file needs clang++ for its trust check (not found)", allow_module_level=True)
from flash_attn_cy.sim import _profile  # noqa: E402
from _paths import SIM_CASES  # noqa: E402

FC = SIM_CASES / "lang" / "function_constants.metal"


def test_sim_run_dispatch_records_its_function_constants():
    x = np.arange(16, dtype=np.float32)
    with sim.profile() as p:
        res = sim.run(FC, "fc_scale", 1, 16, {0: x, 1: np.zeros(16, np.float32)}, schedules=1,
                      constants={"has_bias": False, "repeat_count": 3, "scale": 0.5, 10: (3, 9)})
    assert res.faults == []
    (d,) = p.dispatches
    assert d["constants"] == {"has_bias": False, "repeat_count": 3, "scale": 0.5, "window": [3, 9]}


def test_constant_values_decode_every_mtl_type():
    packed = [(0, "b", 53, b"\x01"), (1, "i", 29, np.int32(-7).tobytes()),
              (2, "u2", 34, np.array([1, 2], np.uint32).tobytes()), (3, "h", 16, np.float16(1.5).tobytes()),
              (4, "f4", 6, np.arange(4, dtype=np.float32).tobytes()), (5, "", 41, np.uint16(9).tobytes()),
              (6, "bf", 121, b"\x80\x3f")]
    assert _profile.constant_values(packed) == {"b": True, "i": -7, "u2": [1, 2], "h": 1.5,
                                                "f4": [0.0, 1.0, 2.0, 3.0], "5": 9, "bf": [0x3F80]}
