"""Thread scaling of the CPU backend (issue 20, item 5), the parts that are behaviour rather than speed:

- a call uses no more threads than its work can keep busy (a minimum of work per thread, per path), nor more than
  the CPUs this process may run on, nor more than its work items; FLASH_ATTN_CY_THREAD_CAPS=0 turns the first two
  caps off (tests);
- a job of T threads hands work to T - 1 pool workers and wakes no other worker (seen in the kernel's context-switch
  counts of the worker threads);
- decode cuts the keys into units that depend on the problem only, so the bits do not change with the thread count
  or num_splits, which only group units into work items.

Timings are benchmarks (`python -m flash_attn_cy bench --threads 1,N`), never asserted here.
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
activity = fa._core._take_cpu_pool_activity


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@pytest.fixture
def threads16():
    old = fa.get_num_threads()
    fa.set_num_threads(16)
    activity()  # start from zero
    yield
    fa.set_num_threads(old)


def _decode(q, k, v, **kw):
    lens = np.full(q.shape[0], k.shape[1], np.int32)
    return fa.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, backend="cpu", **kw)


def test_small_calls_run_on_the_calling_thread(rng, threads16):
    q = randn(rng, (1, 64, 2, 64), "fp32")
    fa.flash_attn_func(q, q, q, backend="cpu")
    a = activity()
    assert a["max_threads"] == 1 and a["workers_posted"] == 0, a
    # decode against a short cache, and a one-token KV-cache append
    qd, kc = randn(rng, (1, 1, 8, 64), "fp32"), randn(rng, (1, 200, 2, 64), "fp32")
    knew = randn(rng, (1, 1, 2, 64), "fp32")
    fa.flash_attn_with_kvcache(qd, kc, kc.copy(), knew, knew, cache_seqlens=np.array([150], np.int32), backend="cpu")
    a = activity()
    assert a["max_threads"] == 1 and a["workers_posted"] == 0, a
    # a small backward
    q, k, v, do = (randn(rng, (1, 64, 2, 32), "fp32") for _ in range(4))
    out, lse, _ = fa.flash_attn_func(q, k, v, backend="cpu", return_attn_probs=True)
    fa.backward(do, q, k, v, out, lse, backend="cpu")
    a = activity()
    assert a["max_threads"] == 1 and a["workers_posted"] == 0, a


def test_large_calls_use_every_cpu_but_no_more(rng, threads16):
    q = randn(rng, (1, 1024, 8, 64), "fp32")
    fa.flash_attn_func(q, q, q, backend="cpu")
    a = activity()
    assert a["max_threads"] == min(16, _cpus()), a
    assert a["workers_posted"] == a["max_threads"] - 1, a
    qd, kc = randn(rng, (1, 1, 32, 64), "bf16"), randn(rng, (1, 8192, 8, 64), "bf16")
    _decode(qd, kc, kc)
    a = activity()
    assert a["max_threads"] == min(16, _cpus()), a


def test_a_job_of_n_items_posts_at_most_n_minus_1_workers(rng, threads16, monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_CY_THREAD_CAPS", "0")  # 16 threads asked for, whatever the CPUs
    # 3 KV heads x one query tile each: 3 work items
    q = randn(rng, (1, 40, 3, 32), "fp32")
    fa.flash_attn_func(q, q, q, backend="cpu")
    a = activity()
    assert a["calls"] == 1 and a["max_threads"] == 3 and a["workers_posted"] == 2, a
    # decode: 1024 keys are two units (items) for the keys, then a merge of 2 KV heads
    qd, kc = randn(rng, (1, 1, 4, 32), "fp32"), randn(rng, (1, 1024, 2, 32), "fp32")
    _decode(qd, kc, kc)
    a = activity()
    assert a["calls"] == 2 and a["max_threads"] == 2 and a["workers_posted"] == 2, a
    # taken back + ran = posted: every posted worker is accounted for
    assert 0 <= a["workers_taken_back"] <= a["workers_posted"]


def test_more_threads_than_cpus_are_not_started(rng, threads16):
    fa.set_num_threads(64)
    q = randn(rng, (2, 1024, 8, 64), "fp32")
    fa.flash_attn_func(q, q, q, backend="cpu")
    a = activity()
    assert a["max_threads"] <= _cpus(), a
    assert fa.get_num_threads() == 64  # the setting is kept; only its use is capped


_WAKE_SCRIPT = textwrap.dedent("""
    import os, time
    import numpy as np
    import flash_attn_cy as fa

    def switches():
        out = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            out[tid] = int(line.split()[1])
            except OSError:
                pass
        return out

    before_pool = set(switches())
    fa.set_num_threads(16)
    q = np.ones((1, 16 * 64, 1, 32), np.float32)  # 16 query tiles: 16 items, 15 workers started
    fa.flash_attn_func(q, q, q, backend="cpu")
    time.sleep(0.2)  # every worker is asleep now (they poll 200 us)
    start = {t: n for t, n in switches().items() if t not in before_pool}
    fa._core._take_cpu_pool_activity()
    small = np.ones((1, 2 * 64, 1, 32), np.float32)  # 2 items: the caller and worker 0
    for _ in range(20):
        fa.flash_attn_func(small, small, small, backend="cpu")
        time.sleep(0.005)  # worker 0 goes back to sleep: each call must wake it
    end = switches()
    a = fa._core._take_cpu_pool_activity()
    changed = sum(1 for t, n in start.items() if end.get(t, n) != n)
    print(len(start), changed, a["workers_posted"])
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc/self/task (Linux)")
def test_a_job_wakes_only_the_workers_it_uses(tmp_path):
    """15 workers asleep, then 20 jobs of 2 threads: only one worker may have run (a notify_all of a shared
    condition variable made all 15 wake up, take a mutex and go back to sleep on every job)."""
    env = dict(os.environ, FLASH_ATTN_CY_THREAD_CAPS="0")
    r = subprocess.run([sys.executable, "-c", _WAKE_SCRIPT], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    workers, changed, posted = (int(x) for x in r.stdout.split())
    assert workers == 15
    assert posted == 20
    assert changed <= 1, f"{changed} of 15 sleeping workers ran during 20 jobs that use one worker"


# ---- decode: units fixed by the problem --------------------------------------------------------------------------

DECODE_CASES = {
    # name: (batch, keys, q heads, kv heads, d, dtype, kwargs); keys not a multiple of the unit, local windows,
    # more keys than 256 units of 512 (units then span several chunks), GQA and MHA
    "gqa_ragged": (1, 5000, 8, 2, 64, "fp32", {}),
    "window": (2, 3000, 4, 4, 32, "bf16", dict(causal=True, window_size=(1700, 0))),
    "many_units": (1, 140_000, 4, 1, 16, "fp16", {}),
    "batch": (5, 700, 8, 2, 64, "bf16", {}),
}


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_decode_bits_do_not_depend_on_threads_or_num_splits(rng, case, monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_CY_THREAD_CAPS", "0")
    b, sk, hq, hk, d, dt, kw = DECODE_CASES[case]
    q, k, v = randn(rng, (b, 1, hq, d), dt), randn(rng, (b, sk, hk, d), dt), randn(rng, (b, sk, hk, d), dt)
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(1)
        want = np.asarray(_decode(q, k, v, **kw))
        for n in (2, 3, 7, 16):
            fa.set_num_threads(n)
            got = np.asarray(_decode(q, k, v, **kw))
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), f"{n} threads"
        for splits in (1, 3, 5):
            got = np.asarray(_decode(q, k, v, num_splits=splits, **kw))
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), f"num_splits={splits}"
    finally:
        fa.set_num_threads(old)
