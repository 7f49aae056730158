"""Decode: one new query token against a long K/V cache (flash_attn_with_kvcache), the memory-bound case.

track_bandwidth reports GB/s of K/V cache read; a good decode kernel approaches the machine's memory bandwidth.
kv_heads 8 is GQA (4 query heads per K/V head, as Llama-3-8B), 32 plain multi-head attention (4x the bytes per token).
"""
from __future__ import annotations

import numpy as np

from ._common import attention_call, best_time, implementations, inputs, is_baseline, numpy_dtype, synchronize, \
    warm_up

Q_HEADS, HEADDIM = 32, 128


class Decode:
    params = [implementations(), ["fp16", "bf16", "fp32"], [4096, 16384, 65536], [8, 32]]
    param_names = ["impl", "dtype", "cache_len", "kv_heads"]
    timeout = 300
    repeat = (2, 10, 4.0)

    def setup(self, impl, dtype, cache_len, kv_heads):
        warm_up(impl, dtype, HEADDIM)
        q, k_cache, v_cache = inputs(impl, ((1, 1, Q_HEADS, HEADDIM), (1, cache_len, kv_heads, HEADDIM),
                                            (1, cache_len, kv_heads, HEADDIM)), dtype, 5)
        self.bytes = 2 * cache_len * kv_heads * HEADDIM * numpy_dtype(dtype).itemsize
        self.impl = impl
        if is_baseline(impl):
            # the new token is the last position: causal == attend to the whole cache
            self.run = attention_call(impl, q, k_cache, v_cache, causal=False)
            return
        import flash_attn_cy

        lens = np.array([cache_len], dtype=np.int32)
        if not isinstance(q, np.ndarray):  # Metal on MPS tensors: the lengths live on the device too
            import torch

            lens = torch.from_numpy(lens).to(q.device)
        self.run = lambda: flash_attn_cy.flash_attn_with_kvcache(
            q, k_cache, v_cache, cache_seqlens=lens, causal=True, backend=impl)

    def time_decode(self, impl, dtype, cache_len, kv_heads):
        self.run()
        synchronize(self.impl)

    def track_bandwidth(self, impl, dtype, cache_len, kv_heads):
        return self.bytes / best_time(self.run, self.impl) / 1e9

    track_bandwidth.unit = "GB/s"
