"""Peak memory of one causal forward over seqlen: FlashAttention needs O(seqlen) extra memory, so the peak should
grow like the inputs (linearly), not like the seqlen x seqlen score matrix (1 GiB per head at 16k in fp32; inputs here are 8 MiB each at 16k).

asv's peakmem_ is the peak RSS of the benchmark process, imports and inputs included: compare the growth across
seqlen, not the absolute value."""
from __future__ import annotations

import numpy as np

from ._common import attention_call, implementations, randn, synchronize, to_impl

HEADS, HEADDIM, DTYPE = 2, 64, "fp32"


class PeakMemory:
    params = [implementations(), [1024, 4096, 16384]]
    param_names = ["impl", "seqlen"]
    timeout = 600

    def setup(self, impl, seqlen):
        if impl in ("metal", "torch-sdpa-mps", "mlx"):
            raise NotImplementedError("process RSS does not see GPU allocations")
        rng = np.random.default_rng(6)
        shape = (1, seqlen, HEADS, HEADDIM)
        q, k, v = to_impl([randn(rng, shape, DTYPE) for _ in range(3)], impl, DTYPE)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=True)

    def peakmem_forward(self, impl, seqlen):
        self.run()
        synchronize(self.impl)
