"""Variable-length batches: flash_attn_cy packs the tokens (flash_attn_varlen_func); the baselines must pad to the
longest sequence and mask, which is what users do without a varlen kernel. GFLOP/s counts only useful work."""
from __future__ import annotations

import numpy as np

from ._common import (forward_flops, implementations, is_baseline, randn, synchronize, to_impl, torch_dtype,
                      visible_pairs)

HEADS, HEADDIM, DTYPE = 8, 64, "bf16"
# Uneven lengths, as in a real serving batch: total tokens per scale factor.
LENGTH_PATTERN = (1.0, 0.25, 0.6, 0.05, 0.8, 0.4)


class Varlen:
    params = [implementations(), [512, 2048]]
    param_names = ["impl", "max_seqlen"]
    timeout = 300

    def setup(self, impl, max_seqlen):
        rng = np.random.default_rng(4)
        lengths = [max(1, int(f * max_seqlen)) for f in LENGTH_PATTERN]
        self.impl = impl
        self.flops = sum(forward_flops(1, HEADS, HEADDIM, visible_pairs(n, n, True)) for n in lengths)
        if not is_baseline(impl):
            import flash_attn_cy

            total = sum(lengths)
            q, k, v = (randn(rng, (total, HEADS, HEADDIM), DTYPE) for _ in range(3))
            cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            if impl == "metal":
                import torch

                q, k, v = to_impl([x[None] for x in (q, k, v)], impl, DTYPE)
                q, k, v = q[0], k[0], v[0]
                cu = torch.from_numpy(cu).to("mps")
            self.run = lambda: flash_attn_cy.flash_attn_varlen_func(
                q, k, v, cu, cu, max(lengths), max(lengths), causal=True, backend=impl)
        elif impl.startswith("torch-sdpa"):
            import torch
            import torch.nn.functional as F

            device = "mps" if impl.endswith("mps") else "cpu"
            b, s = len(lengths), max(lengths)
            q, k, v = (torch.randn(b, HEADS, s, HEADDIM).to(device, torch_dtype(DTYPE)) for _ in range(3))
            # keys beyond a sequence's length are padding; causal within the valid prefix (right padding)
            idx = torch.arange(s)
            valid = idx[None, :] < torch.tensor(lengths)[:, None]
            mask = (idx[None, :, None] >= idx[None, None, :]) & valid[:, None, :]
            mask = mask[:, None].to(device)

            def run():
                with torch.no_grad():
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

            self.run = run
        else:
            raise NotImplementedError(f"{impl}: no varlen comparison")

    def time_forward(self, impl, max_seqlen):
        self.run()
        synchronize(self.impl)

    def track_useful_gflops(self, impl, max_seqlen):
        from ._common import best_time

        return self.flops / best_time(self.run, self.impl, repeat=1) / 1e9

    track_useful_gflops.unit = "GFLOP/s"
