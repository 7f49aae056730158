"""Forward attention: time and achieved GFLOP/s, with PyTorch SDPA (and MLX) measured beside ours on the same inputs.

Shapes follow the flash_attn layout (batch, seqlen, heads, head_dim). The grids are split so that a `--quick` pass
stays within minutes on a 2-core machine: `Forward` crosses dtype x head dim x causal at one sequence length,
`SeqlenScaling` follows one configuration from 512 to 16k tokens.
"""
from __future__ import annotations

from ._common import (attention_call, best_time, forward_flops, implementations, inputs, our_implementations,
                      synchronize, visible_pairs, warm_up)


class _ForwardBase:
    """setup() leaves self.run (one forward) and self.flops; the benchmark methods are shared."""

    timeout = 300
    # Full (non --quick) runs: 2 to 10 samples, stopping after ~4 s per round (asv's default allows 20 s).
    repeat = (2, 10, 4.0)

    def _prepare(self, impl, dtype, shape_q, shape_kv, causal, window=(-1, -1), seed=0):
        warm_up(impl, dtype, shape_q[-1])
        q, k, v = inputs(impl, (shape_q, shape_kv, shape_kv), dtype, seed)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=causal, window=window)
        batch, seqlen_q, heads, headdim = shape_q
        self.flops = forward_flops(batch, heads, headdim, visible_pairs(seqlen_q, shape_kv[1], causal, window))

    def _time(self):
        self.run()
        synchronize(self.impl)

    def _gflops(self):
        return self.flops / best_time(self.run, self.impl) / 1e9


class Forward(_ForwardBase):
    """dtype x head dim x causal at 2048 tokens, batch 1, 4 heads."""

    params = [implementations(), ["fp32", "fp16", "bf16"], [64, 128], [False, True]]
    param_names = ["impl", "dtype", "headdim", "causal"]
    BATCH, SEQLEN, HEADS = 1, 2048, 4

    def setup(self, impl, dtype, headdim, causal):
        shape = (self.BATCH, self.SEQLEN, self.HEADS, headdim)
        self._prepare(impl, dtype, shape, shape, causal)

    def time_forward(self, impl, dtype, headdim, causal):
        self._time()

    def track_gflops(self, impl, dtype, headdim, causal):
        return self._gflops()

    track_gflops.unit = "GFLOP/s"


class SeqlenScaling(_ForwardBase):
    """Causal bf16 forward from 512 to 16k tokens (head dim 64, 2 heads keep the 16k CPU runs to seconds)."""

    params = [implementations(), [512, 2048, 8192, 16384]]
    param_names = ["impl", "seqlen"]
    timeout = 600
    HEADS, HEADDIM, DTYPE = 2, 64, "bf16"

    def setup(self, impl, seqlen):
        shape = (1, seqlen, self.HEADS, self.HEADDIM)
        self._prepare(impl, self.DTYPE, shape, shape, True, seed=1)

    def time_forward(self, impl, seqlen):
        self._time()

    def track_gflops(self, impl, seqlen):
        return self._gflops()

    track_gflops.unit = "GFLOP/s"


class GroupedQuery(_ForwardBase):
    """GQA/MQA: 8 query heads sharing 8, 2 or 1 key/value heads (causal bf16, 2048 tokens, head dim 128)."""

    params = [implementations(), [8, 2, 1]]
    param_names = ["impl", "kv_heads"]
    SEQLEN, HEADDIM, DTYPE, Q_HEADS = 2048, 128, "bf16", 8

    def setup(self, impl, kv_heads):
        self._prepare(impl, self.DTYPE, (1, self.SEQLEN, self.Q_HEADS, self.HEADDIM),
                      (1, self.SEQLEN, kv_heads, self.HEADDIM), True, seed=2)

    def time_forward(self, impl, kv_heads):
        self._time()

    def track_gflops(self, impl, kv_heads):
        return self._gflops()

    track_gflops.unit = "GFLOP/s"


class SlidingWindow(_ForwardBase):
    """Local attention: time should scale with the window, not with seqlen^2. Ours only (no baseline has
    windows); SDPA's full causal attention at this shape is SeqlenScaling-like and in Forward."""

    params = [our_implementations(), [256, 1024, -1]]
    param_names = ["impl", "window_left"]
    SEQLEN, HEADDIM, DTYPE, HEADS = 4096, 64, "fp16", 4

    def setup(self, impl, window_left):
        window = (window_left, 0) if window_left >= 0 else (-1, -1)
        shape = (1, self.SEQLEN, self.HEADS, self.HEADDIM)
        self._prepare(impl, self.DTYPE, shape, shape, True, window=window, seed=3)

    def time_forward(self, impl, window_left):
        self._time()

    def track_gflops(self, impl, window_left):
        return self._gflops()

    track_gflops.unit = "GFLOP/s"
