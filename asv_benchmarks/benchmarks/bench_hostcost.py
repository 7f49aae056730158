"""Host cost per call: flash_attn_cy's front end against PyTorch SDPA's at tiny shapes (1 thread, CPU backend), the
cost every layer pays once per generated token. track_ratio_to_sdpa is ours / SDPA, timed side by side in one
process: at most 1 means no more host time per call than SDPA (`python -m flash_attn_cy bench --host-cost` prints the
same cases as a table).

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

HostCost = benchmark_class("HostCost", __name__)
