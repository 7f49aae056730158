"""Stress: 16 Python threads run a mix of calls at once (forward, backward, KV-cache decode steps, every dtype, with
and without masks) for a fixed number of rounds, and every result must be bitwise identical to the same call run
alone, single-threaded. Catches shared scratch state, races in the thread pool and any dependence of the numbers on
what else is running. About 5-10 s on 2 cores."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import flash_attn_cy as fa

ml_dtypes = pytest.importorskip("ml_dtypes")

THREADS = 16
ROUNDS = 5
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64]


def _jobs():
    """(name, fn) pairs: fn() -> tuple of arrays, fully determined by its closure (fresh caches every call)."""
    rng = np.random.default_rng(17)
    jobs = []
    for i, dt in enumerate(DTYPES):
        q = rng.standard_normal((2, 37 + 8 * i, 4, 32)).astype(dt)
        k = rng.standard_normal((2, 53, 2, 32)).astype(dt)
        v = rng.standard_normal((2, 53, 2, 32)).astype(dt)
        causal = bool(i % 2)

        def fwd(q=q, k=k, v=v, causal=causal):
            out, lse, _ = fa.flash_attn_func(q, k, v, causal=causal, window_size=(-1, -1) if causal else (20, 5),
                                             return_attn_probs=True, backend="cpu")
            return out, lse

        def bwd(q=q, k=k, v=v, causal=causal):
            out, lse, _ = fa.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend="cpu")
            dout = np.ones_like(out)
            return fa.backward(dout, q, k, v, out, lse, causal=causal, deterministic=True, backend="cpu")

        kc0 = rng.standard_normal((2, 96, 2, 32)).astype(dt)
        new = rng.standard_normal((6, 3, 2, 1, 2, 32)).astype(dt)  # 6 steps of (q, k, v) rows
        qd = rng.standard_normal((6, 2, 1, 4, 32)).astype(dt)

        def decode(kc0=kc0, new=new, qd=qd):
            kc, vc = kc0.copy(), kc0[:, ::-1].copy()
            seqlens = np.array([10, 40], np.int32)
            outs = []
            for t in range(new.shape[0]):
                outs.append(fa.flash_attn_with_kvcache(qd[t], kc, vc, new[t, 1], new[t, 2], cache_seqlens=seqlens,
                                                       causal=True, num_splits=1 + t % 3, backend="cpu"))
                seqlens = seqlens + 1
            return (*outs, kc, vc)

        jobs += [(f"forward-{np.dtype(dt).name}", fwd), (f"backward-{np.dtype(dt).name}", bwd),
                 (f"decode-{np.dtype(dt).name}", decode)]
    return jobs


def test_sixteen_threads_bitwise_equal_to_single_threaded_runs():
    jobs = _jobs()
    want = {name: fn() for name, fn in jobs}  # each call alone, one Python thread
    mismatches, errors = [], []
    start = threading.Barrier(THREADS)

    def work(t):
        try:
            start.wait()
            for r in range(ROUNDS):
                for j in range(len(jobs)):
                    name, fn = jobs[(j + 5 * t + r) % len(jobs)]  # every thread a different order
                    got = fn()
                    if len(got) != len(want[name]) or not all(
                            np.array_equal(np.asarray(g).view(np.uint8), np.asarray(w).view(np.uint8))
                            for g, w in zip(got, want[name])):
                        mismatches.append((t, r, name))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not errors, errors
    assert not mismatches, mismatches[:10]
