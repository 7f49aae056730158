"""Forward + backward through PyTorch autograd (flash_attn_cy's autograd path vs SDPA's), when the build has a
backward. GFLOP/s use FlashAttention-2's convention: backward = 2.5x the forward's matrix-product FLOPs."""
from __future__ import annotations

import numpy as np

from ._common import best_time, forward_flops, implementations, randn, synchronize, visible_pairs

BATCH, HEADS = 1, 8


def _has_backward() -> bool:
    try:
        import flash_attn_cy
        import torch
    except ImportError:
        return False
    q = torch.randn(1, 4, 1, 8, requires_grad=True)
    try:
        out = flash_attn_cy.flash_attn_func(q, q, q)
    except Exception:
        return False
    return getattr(out, "requires_grad", False)


class ForwardBackward:
    params = [implementations(), ["fp32", "bf16"], [64, 128], [512, 2048], [True, False]]
    param_names = ["impl", "dtype", "headdim", "seqlen", "causal"]
    timeout = 300

    def setup(self, impl, dtype, headdim, seqlen, causal):
        import torch

        if impl == "mlx":
            raise NotImplementedError("not measured for MLX (its own autograd API)")
        if impl not in ("torch-sdpa-cpu", "torch-sdpa-mps") and not _has_backward():
            raise NotImplementedError("this flash_attn_cy build has no autograd backward")
        rng = np.random.default_rng(7)
        device = "mps" if impl in ("metal", "torch-sdpa-mps") else "cpu"
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        shape = (BATCH, seqlen, HEADS, headdim)
        tensors = [torch.from_numpy(randn(rng, shape, "fp32")).to(device, tdt) for _ in range(3)]
        if impl.startswith("torch-sdpa"):
            tensors = [t.transpose(1, 2).contiguous() for t in tensors]
        q, k, v = (t.requires_grad_() for t in tensors)
        grad = torch.ones_like(q)
        self.impl = impl
        if impl.startswith("torch-sdpa"):
            fwd = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
        else:
            import flash_attn_cy

            fwd = lambda: flash_attn_cy.flash_attn_func(q, k, v, causal=causal, backend=impl)  # noqa: E731

        def run():
            q.grad = k.grad = v.grad = None
            fwd().backward(grad)

        self.run = run
        self.flops = 3.5 * forward_flops(BATCH, HEADS, headdim, visible_pairs(seqlen, seqlen, causal))

    def time_forward_backward(self, impl, dtype, headdim, seqlen, causal):
        self.run()
        synchronize(self.impl)

    def track_gflops(self, impl, dtype, headdim, seqlen, causal):
        return self.flops / best_time(self.run, self.impl, repeat=1) / 1e9

    track_gflops.unit = "GFLOP/s"
