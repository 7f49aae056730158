"""CPU thread pool as seen from Python: concurrent callers get correct results (each equal to a single-threaded run),
and the thread-count setting is honoured and restorable."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import randn

fa = pytest.importorskip("flash_attn_cy")


def test_many_python_threads_share_the_pool(rng):
    cases = []
    for i in range(6):
        dt = ("fp32", "bf16", "fp16")[i % 3]
        q = randn(rng, (1 + i % 2, 70 + 13 * i, 4, 40 + 8 * i), dt)
        k = randn(rng, (1 + i % 2, 90 + 7 * i, 2, 40 + 8 * i), dt)
        v = randn(rng, (1 + i % 2, 90 + 7 * i, 2, 40 + 8 * i), dt)
        cases.append((q, k, v, bool(i % 2)))
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(1)
        expected = [fa.flash_attn_func(q, k, v, causal=c, backend="cpu") for q, k, v, c in cases]
        fa.set_num_threads(2)
        results: dict = {}
        errors: list = []

        def worker(t: int) -> None:
            try:
                for rep in range(4):
                    idx = (t + rep) % len(cases)
                    q, k, v, c = cases[idx]
                    results[(t, rep)] = (idx, fa.flash_attn_func(q, k, v, causal=c, backend="cpu"))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a caller hung"
        assert not errors, errors
        assert len(results) == 32
        for idx, out in results.values():
            # same tiles, same per-tile order whatever the thread count: bit-identical
            assert np.array_equal(out, expected[idx])
    finally:
        fa.set_num_threads(old)


def test_set_num_threads_takes_any_integer_and_names_itself_when_wrong():
    """NumPy integers (a config value, np.int64(os.cpu_count())) are integers; a huge request is capped by the pool
    instead of overflowing the C int on the way; bad values name the function."""
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(np.int64(1))
        assert fa.get_num_threads() == 1
        fa.set_num_threads(2**40)
        assert 1 <= fa.get_num_threads() <= 4096
        for bad, exc in ((-1, ValueError), (np.int32(-2), ValueError), (2.0, TypeError), (True, TypeError),
                         ("2", TypeError)):
            with pytest.raises(exc, match="set_num_threads"):
                fa.set_num_threads(bad)
    finally:
        fa.set_num_threads(old)


def test_set_num_threads_roundtrip():
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(3)
        assert fa.get_num_threads() == 3
        fa.set_num_threads(0)  # back to the hardware default
        assert fa.get_num_threads() >= 1
    finally:
        fa.set_num_threads(old)


def _attention_and_grads(q, k, v, dout):
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=True, backend="cpu", return_attn_probs=True)
    dq, dk, dv = fa.backward(dout, q, k, v, out, lse, causal=True, backend="cpu", deterministic=True)
    return out, dq, dk, dv


def _child_after_fork(conn, q, k, v, dout) -> None:
    try:
        conn.send([np.asarray(x) for x in _attention_and_grads(q, k, v, dout)])
    finally:
        conn.close()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_forked_child_gets_a_working_pool(rng):
    """A process forked after the pool started (DataLoader workers, multiprocessing) has none of the parent's worker
    threads: its calls must still finish (they used to wait forever for the missing workers) and be correct."""
    import multiprocessing

    q, k, v, dout = (randn(rng, (2, 300, 4, 64), "fp32") for _ in range(4))
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(2)
        expected = _attention_and_grads(q, k, v, dout)  # starts the pool's workers and fills the buffer pool
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_after_fork, args=(child_end, q, k, v, dout))
        child.start()
        child_end.close()
        got = parent_end.recv() if parent_end.poll(120) else None
        child.join(30)
        if child.exitcode is None:
            child.kill()
            child.join()
        assert got is not None, "the forked child's attention call did not finish"
        assert child.exitcode == 0
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(np.asarray(e), g)  # deterministic: bit-identical
    finally:
        fa.set_num_threads(old)
