"""Peak memory of one causal forward over seqlen: FlashAttention needs O(seqlen) extra memory.

asv's peakmem_ is the peak RSS of the benchmark process, interpreter, imports and inputs included, so compare the
growth across seqlen, not the absolute value: q, k, v and the output are 0.5 MiB each per 1k tokens (fp32, 2 heads of
64), so from 4k to 16k tokens the peak should rise by ~25 MiB, where a materialised fp32 score matrix would add 2 GiB.

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

PeakMemory = benchmark_class("PeakMemory", __name__)
