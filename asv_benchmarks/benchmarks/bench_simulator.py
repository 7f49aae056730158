"""The "sim" backend (the project's Metal kernels executed by the CPU Metal simulator) on tiny shapes.

Nothing here is skipped: a failure means the kernels or the simulator broke.

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

Simulator = benchmark_class("Simulator", __name__)
