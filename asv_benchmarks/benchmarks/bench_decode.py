"""Decode: one new query token against a long K/V cache (flash_attn_with_kvcache), the memory-bound case.

track_bandwidth reports GB/s of K/V cache read; at these sizes a good decode kernel approaches the memory bandwidth.
kv_heads 8 is GQA (4 query heads per K/V head, as Llama-3-8B), 32 plain multi-head attention (4x the bytes per token).
"""
from __future__ import annotations

import numpy as np

from ._common import best_time, implementations, is_baseline, numpy_dtype, randn, synchronize, to_impl

Q_HEADS, HEADDIM = 32, 128


class Decode:
    params = [implementations(), ["fp16", "bf16", "fp32"], [4096, 16384, 65536], [8, 32]]
    param_names = ["impl", "dtype", "cache_len", "kv_heads"]
    timeout = 300

    def setup(self, impl, dtype, cache_len, kv_heads):
        rng = np.random.default_rng(5)
        q = randn(rng, (1, 1, Q_HEADS, HEADDIM), dtype)
        k_cache = randn(rng, (1, cache_len, kv_heads, HEADDIM), dtype)
        v_cache = randn(rng, (1, cache_len, kv_heads, HEADDIM), dtype)
        self.bytes = 2 * k_cache.size * numpy_dtype(dtype).itemsize
        self.impl = impl
        q, k_cache, v_cache = to_impl([q, k_cache, v_cache], impl, dtype)
        if not is_baseline(impl):
            import flash_attn_cy

            lens = np.array([cache_len], dtype=np.int32)
            if impl == "metal":
                import torch

                lens = torch.from_numpy(lens).to("mps")
            self.run = lambda: flash_attn_cy.flash_attn_with_kvcache(
                q, k_cache, v_cache, cache_seqlens=lens, causal=True, backend=impl)
        else:
            from ._common import attention_call

            # the new token is the last position: causal == attend to the whole cache
            self.run = attention_call(impl, q, k_cache, v_cache, causal=False)

    def time_decode(self, impl, dtype, cache_len, kv_heads):
        self.run()
        synchronize(self.impl)

    def track_bandwidth(self, impl, dtype, cache_len, kv_heads):
        return self.bytes / best_time(self.run, self.impl, repeat=1) / 1e9

    track_bandwidth.unit = "GB/s"
