"""Forward attention: time and achieved GFLOP/s, with PyTorch SDPA (and MLX) measured beside ours on the same inputs.

The grids are split so that a `--quick` pass stays within minutes on a 2-core machine: `Forward` crosses dtype x head
dim x causal at one sequence length, `SeqlenScaling` follows one configuration from 512 to 16k tokens, `CpuKernelSets`
times the CPU backend once per kernel set this CPU runs (AMX, AVX-512, AVX2, NEON).

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

Forward = benchmark_class("Forward", __name__)
SeqlenScaling = benchmark_class("SeqlenScaling", __name__)
GroupedQuery = benchmark_class("GroupedQuery", __name__)
SlidingWindow = benchmark_class("SlidingWindow", __name__)
CpuKernelSets = benchmark_class("CpuKernelSets", __name__)
