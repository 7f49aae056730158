"""Forward attention: time, achieved GFLOP/s, over implementation x dtype x head dim x seqlen x causal.

Shapes follow the flash_attn layout (batch, seqlen, heads, head_dim); batch 1 and 4 heads keep one `asv run
--quick` pass within minutes on a laptop CPU while still being long enough to measure.
"""
from __future__ import annotations

import numpy as np

from ._common import attention_call, best_time, forward_flops, implementations, randn, synchronize, to_impl, \
    visible_pairs

BATCH, HEADS = 1, 4


class Forward:
    params = [implementations(), ["fp32", "fp16", "bf16"], [64, 128], [512, 2048, 4096], [False, True]]
    param_names = ["impl", "dtype", "headdim", "seqlen", "causal"]
    timeout = 300

    def setup(self, impl, dtype, headdim, seqlen, causal):
        rng = np.random.default_rng(0)
        shape = (BATCH, seqlen, HEADS, headdim)
        q, k, v = to_impl([randn(rng, shape, dtype) for _ in range(3)], impl, dtype)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=causal)
        self.flops = forward_flops(BATCH, HEADS, headdim, visible_pairs(seqlen, seqlen, causal))

    def time_forward(self, impl, dtype, headdim, seqlen, causal):
        self.run()
        synchronize(self.impl)

    def track_gflops(self, impl, dtype, headdim, seqlen, causal):
        return self.flops / best_time(self.run, self.impl, repeat=1) / 1e9

    track_gflops.unit = "GFLOP/s"


class LongSequence:
    """Causal forward at 8k and 16k tokens (2 heads keep the CPU runs short)."""

    params = [implementations(), ["fp16", "bf16"], [8192, 16384]]
    param_names = ["impl", "dtype", "seqlen"]
    timeout = 600
    HEADS, HEADDIM = 2, 64

    def setup(self, impl, dtype, seqlen):
        rng = np.random.default_rng(1)
        shape = (1, seqlen, self.HEADS, self.HEADDIM)
        q, k, v = to_impl([randn(rng, shape, dtype) for _ in range(3)], impl, dtype)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=True)
        self.flops = forward_flops(1, self.HEADS, self.HEADDIM, visible_pairs(seqlen, seqlen, True))

    def time_forward(self, impl, dtype, seqlen):
        self.run()
        synchronize(self.impl)

    def track_gflops(self, impl, dtype, seqlen):
        return self.flops / best_time(self.run, self.impl, repeat=1) / 1e9

    track_gflops.unit = "GFLOP/s"


class GroupedQuery:
    """GQA/MQA: 8 query heads sharing 8, 2 or 1 key/value heads."""

    params = [implementations(), [8, 2, 1]]
    param_names = ["impl", "kv_heads"]
    timeout = 300
    SEQLEN, HEADDIM, DTYPE = 2048, 128, "bf16"

    def setup(self, impl, kv_heads):
        rng = np.random.default_rng(2)
        q = randn(rng, (1, self.SEQLEN, 8, self.HEADDIM), self.DTYPE)
        k, v = (randn(rng, (1, self.SEQLEN, kv_heads, self.HEADDIM), self.DTYPE) for _ in range(2))
        q, k, v = to_impl([q, k, v], impl, self.DTYPE)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=True)
        self.flops = forward_flops(1, 8, self.HEADDIM, visible_pairs(self.SEQLEN, self.SEQLEN, True))

    def time_forward(self, impl, kv_heads):
        self.run()
        synchronize(self.impl)

    def track_gflops(self, impl, kv_heads):
        return self.flops / best_time(self.run, self.impl, repeat=1) / 1e9

    track_gflops.unit = "GFLOP/s"


class SlidingWindow:
    """Local attention: work (and time) should scale with the window, not with seqlen^2. Baselines: n/a."""

    params = [implementations(), [256, 1024, -1]]
    param_names = ["impl", "window_left"]
    timeout = 300
    SEQLEN, HEADDIM, DTYPE = 4096, 64, "fp16"

    def setup(self, impl, window_left):
        rng = np.random.default_rng(3)
        shape = (1, self.SEQLEN, HEADS, self.HEADDIM)
        q, k, v = to_impl([randn(rng, shape, self.DTYPE) for _ in range(3)], impl, self.DTYPE)
        window = (window_left, 0) if window_left >= 0 else (-1, -1)
        self.impl = impl
        self.run = attention_call(impl, q, k, v, causal=True, window=window)
        self.flops = forward_flops(1, HEADS, self.HEADDIM, visible_pairs(self.SEQLEN, self.SEQLEN, True, window))

    def time_forward(self, impl, window_left):
        self.run()
        synchronize(self.impl)

    def track_gflops(self, impl, window_left):
        return self.flops / best_time(self.run, self.impl, repeat=1) / 1e9

    track_gflops.unit = "GFLOP/s"
