"""Backward: gradients of q, k, v given the forward's output (and, for ours, its log-sum-exp).

Ours is timed through the NumPy API (flash_attn_cy.backward), the kernel without autograd bookkeeping; SDPA through
torch autograd on a retained graph (its forward is not re-run); MLX through mx.vjp of mx.fast.scaled_dot_product_attention,
which has no retained graph, so its time includes one forward (flagged, not subtracted). GFLOP/s use
FlashAttention-2's convention: backward = 2.5x the forward's matrix-product FLOPs (five products instead of two).
"""
from __future__ import annotations

import functools

import numpy as np

from ._common import (best_time, convert, forward_flops, implementations, is_baseline, random_arrays,
                      require_torch_baseline, synchronize, visible_pairs, warm_up)

BATCH, SEQLEN, HEADS = 1, 1024, 4
_autograd_started = set()


@functools.lru_cache(maxsize=1)
def _forward_state(impl: str, dtype: str, headdim: int, causal: bool) -> tuple:
    """Inputs, output and log-sum-exp of one forward (memoised: setup() runs before every timing sample)."""
    import flash_attn_cy

    shape = (BATCH, SEQLEN, HEADS, headdim)
    q, k, v = random_arrays([shape] * 3, dtype, 7)
    q, k, v = convert(impl, (q, k, v), dtype)
    out, lse, _ = flash_attn_cy.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend=impl)
    dout = random_arrays([shape], dtype, 8)[0]
    (dout,) = convert(impl, (dout,), dtype)
    return q, k, v, out, lse, dout


@functools.lru_cache(maxsize=1)
def _sdpa_graph(impl: str, dtype: str, headdim: int, causal: bool) -> tuple:
    import torch

    shape = (BATCH, SEQLEN, HEADS, headdim)
    q, k, v, dout = convert(impl, random_arrays([shape] * 4, dtype, 7), dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return q, k, v, out, dout


def _mlx_vjp(dtype: str, headdim: int, causal: bool):
    """A callable computing MLX's gradients of q, k, v (forward included: MLX's vjp re-runs the function)."""
    import mlx.core as mx

    shape = (BATCH, SEQLEN, HEADS, headdim)
    q, k, v, dout = convert("mlx", random_arrays([shape] * 4, dtype, 7), dtype)
    scale = headdim ** -0.5

    def attention(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal" if causal else None)

    def run():
        _, grads = mx.vjp(attention, [q, k, v], [dout])
        mx.eval(grads)
        return grads

    return run


class Backward:
    # non-causal is the backward's heavier case (twice the tiles), causal the common one in training
    params = [implementations(), ["fp32", "bf16"], [64, 128], [True, False]]
    param_names = ["impl", "dtype", "headdim", "causal"]
    timeout = 300
    repeat = (2, 10, 4.0)

    def setup(self, impl, dtype, headdim, causal):
        self.impl = impl
        self.flops = 2.5 * forward_flops(BATCH, HEADS, headdim, visible_pairs(SEQLEN, SEQLEN, causal))
        if not is_baseline(impl):
            import flash_attn_cy

            warm_up(impl, dtype, headdim)
            q, k, v, out, lse, dout = _forward_state(impl, dtype, headdim, causal)
            self.run = lambda: flash_attn_cy.backward(dout, q, k, v, out, lse, causal=causal, backend=impl)
        elif impl.startswith("torch-sdpa"):
            require_torch_baseline(impl)
            warm_up(impl, dtype, headdim)
            q, k, v, out, dout = _sdpa_graph(impl, dtype, headdim, causal)

            def run():
                q.grad = k.grad = v.grad = None
                out.backward(dout, retain_graph=True)

            if impl not in _autograd_started:
                run()  # autograd's first backward starts its engine threads: not part of the measurement
                _autograd_started.add(impl)
            self.run = run
        elif impl == "mlx":
            require_torch_baseline(impl)
            self.run = _mlx_vjp(dtype, headdim, causal)
            self.run()  # first call builds MLX's graph and kernels: not part of the measurement
        else:
            raise NotImplementedError(f"{impl}: no backward comparison")

    def time_backward(self, impl, dtype, headdim, causal):
        self.run()
        synchronize(self.impl)

    def track_gflops(self, impl, dtype, headdim, causal):
        return self.flops / best_time(self.run, self.impl) / 1e9

    track_gflops.unit = "GFLOP/s"
