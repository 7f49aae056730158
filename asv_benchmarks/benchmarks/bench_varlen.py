"""Variable-length batches: flash_attn_cy packs the tokens (flash_attn_varlen_func); the baselines must pad to the
longest sequence and mask, which is what users do without a varlen kernel. GFLOP/s counts only useful work."""
from __future__ import annotations

import functools

import numpy as np

from ._common import (best_time, convert, forward_flops, implementations, is_baseline, random_arrays,
                      require_torch_baseline, synchronize, torch_dtype, visible_pairs, warm_up)

HEADS, HEADDIM, DTYPE = 8, 64, "bf16"
# Uneven lengths, as in a real serving batch: fractions of max_seqlen.
LENGTH_PATTERN = (1.0, 0.25, 0.6, 0.05, 0.8, 0.4)


def lengths_for(max_seqlen: int) -> list:
    return [max(1, int(f * max_seqlen)) for f in LENGTH_PATTERN]


@functools.lru_cache(maxsize=1)
def _packed(impl: str, max_seqlen: int) -> tuple:
    lengths = lengths_for(max_seqlen)
    total = sum(lengths)
    q, k, v = random_arrays([(1, total, HEADS, HEADDIM)] * 3, DTYPE, 4)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    q, k, v = (x[0] for x in convert(impl, (q, k, v), DTYPE))
    if not isinstance(q, np.ndarray):  # Metal on MPS tensors
        import torch

        cu = torch.from_numpy(cu).to(q.device)
    return q, k, v, cu


@functools.lru_cache(maxsize=1)
def _padded(impl: str, max_seqlen: int) -> tuple:
    import torch

    lengths = lengths_for(max_seqlen)
    device = "mps" if impl.endswith("mps") else "cpu"
    b, s = len(lengths), max(lengths)
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(b, HEADS, s, HEADDIM, generator=gen).to(device, torch_dtype(DTYPE)) for _ in range(3))
    # keys beyond a sequence's length are padding; causal within the valid prefix (right padding)
    idx = torch.arange(s)
    valid = idx[None, :] < torch.tensor(lengths)[:, None]
    mask = (idx[None, :, None] >= idx[None, None, :]) & valid[:, None, :]
    return q, k, v, mask[:, None].to(device)


class Varlen:
    params = [implementations(), [512, 2048]]
    param_names = ["impl", "max_seqlen"]
    timeout = 300
    repeat = (2, 10, 4.0)

    def setup(self, impl, max_seqlen):
        lengths = lengths_for(max_seqlen)
        self.impl = impl
        self.flops = sum(forward_flops(1, HEADS, HEADDIM, visible_pairs(n, n, True)) for n in lengths)
        if not is_baseline(impl):
            import flash_attn_cy

            warm_up(impl, DTYPE, HEADDIM)
            q, k, v, cu = _packed(impl, max_seqlen)
            m = max(lengths)
            self.run = lambda: flash_attn_cy.flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True,
                                                                    backend=impl)
        elif impl.startswith("torch-sdpa"):
            require_torch_baseline(impl)
            import torch
            import torch.nn.functional as F

            warm_up(impl, DTYPE, HEADDIM)
            q, k, v, mask = _padded(impl, max_seqlen)

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
        return self.flops / best_time(self.run, self.impl) / 1e9

    track_useful_gflops.unit = "GFLOP/s"
