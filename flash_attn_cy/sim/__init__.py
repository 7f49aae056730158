"""The Metal simulator: runs MSL compute kernels on the CPU with race, bounds, uninitialised-read and divergence
checks. See kernels/README.md for the supported MSL subset and what is checked.

    >>> from flash_attn_cy import sim
    >>> res = sim.run("examples/example_reduce.metal", "example_reduce", grid=4, threadgroup=128,
    ...               buffers={0: x, 1: np.zeros(4, np.float32)}, bytes={2: np.uint32(512)})
    >>> res.faults, res.buffers[1]

Work counters (flash_attn_cy.sim.profile, `python -m flash_attn_cy.sim profile`): see flash_attn_cy/sim/_profile.py.

    >>> with sim.profile() as p:
    ...     flash_attn_cy.flash_attn_func(q, k, v, backend="sim")
    >>> p.dispatches[0]["device_bytes_read"], p.roofline("M4 Max").bound
"""

from ._compile import SimCompileError
from ._profile import Profile, Roofline, attention_flops, profile
from ._run import Fault, SimResult, run
from .check import CheckResult, check_file, check_files, find_clang
from .translate import TranslateError, translate, translate_file

__all__ = [
    "Fault", "SimResult", "run", "SimCompileError", "TranslateError", "translate", "translate_file",
    "CheckResult", "check_file", "check_files", "find_clang", "profile", "Profile", "Roofline", "attention_flops",
]
