"""Bitwise determinism of the CPU backend whatever the thread count (issue 17, item 11).

The forward (dense, local window, GQA, varlen, decode, KV cache with paging, long key ranges that fold in chunks) and
the backward with deterministic=True must give the same bits for 1, 2, 3, 4, 7 and 16 threads: work is split by
tile (decode: items group fixed key units), never in a way that changes the arithmetic. The thread caps (work, CPUs
available) are turned off here (FLASH_ATTN_CY_THREAD_CAPS=0) so that every count really runs. Idle pool workers are released after the idle time (FLASH_ATTN_CY_THREAD_IDLE_SECONDS, default 10 s).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import randn

fa = pytest.importorskip("flash_attn_cy")
from flash_attn_cy.interface import attention_backward, attention_forward  # noqa: E402

THREADS = (1, 2, 3, 4, 7, 16)


@pytest.fixture(autouse=True)
def _every_thread_asked_for(monkeypatch):
    """The pool caps a call's threads by its work and by the CPUs available (2 on a small CI machine); these tests
    must run every thread count of THREADS for real, so that the work split changes with it."""
    monkeypatch.setenv("FLASH_ATTN_CY_THREAD_CAPS", "0")


def _for_each_thread_count(fn):
    old = fa.get_num_threads()
    try:
        out = []
        for n in THREADS:
            fa.set_num_threads(n)
            out.append(fn())
        return out
    finally:
        fa.set_num_threads(old)


def _assert_bitwise_equal(results):
    first = results[0]
    for n, res in zip(THREADS[1:], results[1:]):
        for i, (a, b) in enumerate(zip(first, res)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape
            same = a.view(np.uint8) == b.view(np.uint8)
            assert same.all(), f"output {i}: {n} threads differ from 1 thread in {int((~same).sum())} bytes"


FORWARD_CASES = {
    # name: (q shape, k shape, kwargs)
    "dense_gqa": ((2, 200, 4, 64), (2, 300, 2, 64), dict(causal=False)),
    "causal": ((1, 700, 4, 64), (1, 700, 4, 64), dict(causal=True)),
    # local attention with enough query tiles that items group them differently per thread count
    "local_window": ((1, 2100, 2, 32), (1, 2100, 2, 32), dict(window_size=(100, 30))),
    # a last query tile of 2 rows (row-layout kernels when it stands alone), dropout so decode does not take it
    "dropout_short_tail": ((1, 2050, 1, 32), (1, 300, 1, 32), dict(dropout_p=0.2, seed=7)),
    # key range longer than a chunk: folds at fixed key positions
    "long_keys": ((1, 70, 2, 32), (1, 9000, 2, 32), dict(causal=False)),
    "decode": ((2, 1, 8, 64), (2, 8192, 2, 64), dict(causal=True)),
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_bits_do_not_depend_on_threads(rng, case, dtype):
    qs, ks, kw = FORWARD_CASES[case]
    q, k, v = randn(rng, qs, dtype), randn(rng, ks, dtype), randn(rng, ks, dtype)
    kw = dict(kw)
    seed = kw.pop("seed", 0)

    def call():  # attention_forward: out and LSE without asking for the probabilities (which change the path)
        out, lse, _ = attention_forward(q, k, v, softmax_scale=qs[-1] ** -0.5, rng=(seed, 0), backend="cpu", **kw)
        return out, lse

    _assert_bitwise_equal(_for_each_thread_count(call))


def test_varlen_forward_bits_do_not_depend_on_threads(rng):
    lens = [5, 900, 1, 2300, 64]
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    total = int(cu[-1])
    q, k, v = (randn(rng, (total, 4, 64), "fp32") for _ in range(3))

    def call():
        out, lse, _ = attention_forward(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lens),
                                        max_seqlen_k=max(lens), softmax_scale=0.125,
                                        window_size=(100, 30), backend="cpu")
        return out, lse

    _assert_bitwise_equal(_for_each_thread_count(call))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kvcache_paged_append_bits_do_not_depend_on_threads(rng, dtype):
    batch, page, nblocks, hkv, d = 3, 256, 40, 2, 64
    k_cache0 = randn(rng, (nblocks, page, hkv, d), dtype)
    v_cache0 = randn(rng, (nblocks, page, hkv, d), dtype)
    block_table = rng.permutation(nblocks)[: batch * 12].reshape(batch, 12).astype(np.int32)
    cache_seqlens = np.array([3000, 17, 1200], np.int32)
    q = randn(rng, (batch, 1, 8, d), dtype)  # one new token: the decode path (split over the cache)
    k_new, v_new = randn(rng, (batch, 1, hkv, d), dtype), randn(rng, (batch, 1, hkv, d), dtype)

    def call():
        kc, vc = k_cache0.copy(), v_cache0.copy()
        out = fa.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, cache_seqlens=cache_seqlens,
                                         block_table=block_table, causal=True, backend="cpu")
        return out, kc, vc

    _assert_bitwise_equal(_for_each_thread_count(call))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_deterministic_backward_bits_do_not_depend_on_threads(rng, dtype, causal):
    q = randn(rng, (2, 300, 4, 64), dtype)
    k = randn(rng, (2, 260, 2, 64), dtype)
    v = randn(rng, (2, 260, 2, 64), dtype)
    dout = randn(rng, (2, 300, 4, 64), dtype)
    scale = 64 ** -0.5
    out, lse, _ = attention_forward(q, k, v, softmax_scale=scale, causal=causal, backend="cpu")

    def call():
        return attention_backward(dout, q, k, v, out, lse, softmax_scale=scale, causal=causal,
                                  deterministic=True, backend="cpu")

    _assert_bitwise_equal(_for_each_thread_count(call))


_IDLE_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import flash_attn_cy as fa

    def tasks():
        return len(os.listdir("/proc/self/task"))

    base = tasks()
    fa.set_num_threads(4)
    q = np.ones((1, 512, 4, 64), np.float32)
    fa.flash_attn_func(q, q, q, backend="cpu")
    busy = tasks()
    deadline = time.monotonic() + float(sys.argv[1])
    while tasks() > base and time.monotonic() < deadline:
        time.sleep(0.05)
    idle = tasks()
    fa.flash_attn_func(q, q, q, backend="cpu")  # the pool starts again
    again = tasks()
    print(base, busy, idle, again)
""")


def _idle_run(env_seconds, wait):
    env = dict(os.environ)
    env["FLASH_ATTN_CY_THREAD_CAPS"] = "0"  # 4 threads even on a 2-CPU machine and for a small call
    if env_seconds is None:
        env.pop("FLASH_ATTN_CY_THREAD_IDLE_SECONDS", None)
    else:
        env["FLASH_ATTN_CY_THREAD_IDLE_SECONDS"] = str(env_seconds)
    r = subprocess.run([sys.executable, "-c", _IDLE_SCRIPT, str(wait)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc/self/task")
def test_idle_workers_are_released_and_restarted():
    base, busy, idle, again = _idle_run(0.3, wait=5.0)
    assert busy == base + 3, (base, busy)  # 4 threads: the caller and 3 workers
    assert idle == base, f"workers still alive after the idle time: {idle - base}"
    assert again == base + 3


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc/self/task")
def test_idle_workers_are_released_within_about_ten_seconds_by_default():
    base, busy, idle, again = _idle_run(None, wait=13.0)
    assert busy == base + 3 and idle == base and again == base + 3
