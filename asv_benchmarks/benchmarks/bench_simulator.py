"""The "sim" backend (the project's Metal kernels executed by the CPU Metal simulator) on tiny shapes.

The simulator is a correctness tool, orders of magnitude slower than the CPU backend, so it is kept out of the
other grids; these timings track the simulator's own speed (what the kernel tests pay) and make sure every kernel
family still runs end to end under asv. Nothing here is skipped: a failure means the kernels or the simulator broke.
"""
from __future__ import annotations

import numpy as np

from ._common import random_arrays

SEQLEN, HEADS, HEADDIM, DTYPE = 128, 2, 64, "fp16"
CACHE_LEN = 1024


class Simulator:
    params = [["forward", "forward_causal", "backward", "varlen", "decode"]]
    param_names = ["kernel"]
    timeout = 300
    repeat = (1, 5, 4.0)

    def setup(self, kernel):
        import flash_attn_cy

        if not flash_attn_cy.backends()["sim"]["available"]:
            raise RuntimeError(f"the sim backend is unavailable: {flash_attn_cy.backends()['sim']['reason']}")
        shape = (1, SEQLEN, HEADS, HEADDIM)
        q, k, v = random_arrays([shape] * 3, DTYPE, 9)
        if kernel in ("forward", "forward_causal"):
            causal = kernel == "forward_causal"
            self.run = lambda: flash_attn_cy.flash_attn_func(q, k, v, causal=causal, backend="sim")
        elif kernel == "backward":
            out, lse, _ = flash_attn_cy.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="sim")
            self.run = lambda: flash_attn_cy.backward(out, q, k, v, out, lse, causal=True, backend="sim")
        elif kernel == "varlen":
            cu = np.array([0, SEQLEN // 4, SEQLEN], dtype=np.int32)
            self.run = lambda: flash_attn_cy.flash_attn_varlen_func(
                q[0], k[0], v[0], cu, cu, SEQLEN * 3 // 4, SEQLEN * 3 // 4, causal=True, backend="sim")
        else:
            qd, kc, vc = random_arrays([(1, 1, HEADS, HEADDIM), (1, CACHE_LEN, HEADS, HEADDIM),
                                        (1, CACHE_LEN, HEADS, HEADDIM)], DTYPE, 10)
            lens = np.array([CACHE_LEN], dtype=np.int32)
            self.run = lambda: flash_attn_cy.flash_attn_with_kvcache(qd, kc, vc, cache_seqlens=lens, causal=True,
                                                                     backend="sim")

    def time_kernel(self, kernel):
        self.run()
