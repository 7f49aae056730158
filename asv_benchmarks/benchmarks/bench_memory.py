"""Peak memory of one causal forward over seqlen: FlashAttention needs O(seqlen) extra memory, so the peak grows
like the inputs (linearly), not like the seqlen x seqlen score matrix.

asv's peakmem_ is the peak RSS of the benchmark process, interpreter, imports and inputs included, so compare the
growth across seqlen, not the absolute value. Here q, k, v and the output are 0.5 MiB each per 1k tokens (fp32, 2
heads of 64): from 4k to 16k tokens the peak should rise by ~25 MiB, where a materialised fp32 score matrix would add
2 GiB. (Few heads keep the 16k forward to about a second: compute grows with seqlen^2, memory should not.)
"""
from __future__ import annotations

from ._common import attention_call, implementations, inputs, synchronize

HEADS, HEADDIM, DTYPE = 2, 64, "fp32"


class PeakMemory:
    params = [implementations(), [1024, 4096, 16384]]
    param_names = ["impl", "seqlen"]
    timeout = 600

    def setup(self, impl, seqlen):
        if impl in ("metal", "torch-sdpa-mps", "mlx"):
            raise NotImplementedError("process RSS does not see GPU allocations")
        shape = (1, seqlen, HEADS, HEADDIM)
        q, k, v = inputs(impl, (shape, shape, shape), DTYPE, 6)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=True)

    def peakmem_forward(self, impl, seqlen):
        self.run()
        synchronize(self.impl)
