"""Ctrl-C during a long call (issue 17, item 2).

A child process starts a long call, the test sends it SIGINT, and the child reports when KeyboardInterrupt reached
Python (CLOCK_MONOTONIC is shared between processes). The interrupted call must leave no worker running: the next
call in the same process gives the right bits. The latency is printed (pytest -s) and must stay under 0.5 s (the
token is polled every 20 ms; the rest is noise of a busy machine). Calls from other Python threads still work.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

fa = pytest.importorskip("flash_attn_cy")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

MAX_LATENCY = 0.5

_PRELUDE = textwrap.dedent("""
    import sys, time, threading
    import numpy as np
    import flash_attn_cy as fa
    from flash_attn_cy.interface import attention_backward, attention_forward

    def interrupted(call):
        print("start", flush=True)
        try:
            call()
        except KeyboardInterrupt:
            print("interrupted", repr(time.monotonic()), flush=True)
            return
        print("finished", flush=True)
""")


def _interrupt(body: str, *, delay: float = 0.5, timeout: float = 120.0) -> tuple[float, list[str]]:
    """Runs _PRELUDE + body in a child; SIGINT `delay` s after it prints "start". Returns (latency, later lines).
    A child that prints "expect <seconds>" before "start" (the measured duration of the call it will interrupt) gets
    a deadline of delay + 10 x that + 30 s instead of `timeout`: it scales with the machine's load, and a call that
    ignored SIGINT ends ("finished": a clear failure) long before it."""
    p = subprocess.Popen([sys.executable, "-c", _PRELUDE + textwrap.dedent(body)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        if line.startswith("expect "):
            timeout = delay + 10 * float(line.split()[1]) + 30
            line = p.stdout.readline().strip()
        assert line == "start", (line, p.stderr.read() if p.poll() is not None else "")
        time.sleep(delay)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    lines = out.split("\n")
    assert p.returncode == 0, err
    assert lines[0].startswith("interrupted"), (lines, err)
    latency = float(lines[0].split()[1]) - t0
    print(f"\nSIGINT -> KeyboardInterrupt: {latency * 1000:.0f} ms")
    return latency, [s for s in lines[1:] if s]


def test_cpu_forward_16k_is_interruptible():
    latency, rest = _interrupt("""
        q = np.random.default_rng(0).standard_normal((1, 16384, 8, 64)).astype(np.float32)
        small = q[:, :300].copy()
        ref = fa.flash_attn_func(small, small, small, causal=True, backend="cpu")
        interrupted(lambda: fa.flash_attn_func(q, q, q, causal=True, backend="cpu"))
        out = fa.flash_attn_func(small, small, small, causal=True, backend="cpu")
        print("next call bitwise equal:", bool((out == ref).all()), flush=True)
    """)
    assert rest == ["next call bitwise equal: True"]
    assert latency < MAX_LATENCY


def test_cpu_backward_16k_is_interruptible():
    latency, rest = _interrupt("""
        q = np.random.default_rng(0).standard_normal((1, 16384, 8, 64)).astype(np.float32)
        o, lse, _ = attention_forward(q, q, q, softmax_scale=0.125, causal=True, backend="cpu")
        small = q[:, :300].copy()
        so, slse, _ = attention_forward(small, small, small, softmax_scale=0.125, causal=True, backend="cpu")
        back = lambda: attention_backward(small, small, small, small, so, slse, softmax_scale=0.125, causal=True,
                                          deterministic=True, backend="cpu")
        ref = back()
        interrupted(lambda: attention_backward(q, q, q, q, o, lse, softmax_scale=0.125, causal=True,
                                               backend="cpu"))
        print("next call bitwise equal:", all(bool((a == b).all()) for a, b in zip(back(), ref)), flush=True)
    """)
    assert rest == ["next call bitwise equal: True"]
    assert latency < MAX_LATENCY


def test_kvcache_interrupted_during_attention_leaves_the_cache_fully_written():
    # The append is not a cancellation point (fa_abi.h): once flash_attn_with_kvcache has started, every new row is
    # in the cache even when Ctrl-C stops the attention that follows.
    latency, rest = _interrupt("""
        rng = np.random.default_rng(1)
        k_cache = rng.standard_normal((1, 16400, 8, 64)).astype(np.float32)
        v_cache = rng.standard_normal((1, 16400, 8, 64)).astype(np.float32)
        before = k_cache.copy()
        q = rng.standard_normal((1, 8192, 8, 64)).astype(np.float32)  # attention of several seconds
        k_new = rng.standard_normal((1, 16, 8, 64)).astype(np.float32)
        v_new = rng.standard_normal((1, 16, 8, 64)).astype(np.float32)
        cache_seqlens = np.array([14000], np.int32)
        interrupted(lambda: fa.flash_attn_with_kvcache(q, k_cache, v_cache, k_new[:, :16], v_new[:, :16],
                                                       cache_seqlens=cache_seqlens, backend="cpu"))
        print("rows written:", bool((k_cache[0, 14000:14016] == k_new[0]).all() and
                                    (v_cache[0, 14000:14016] == v_new[0]).all()), flush=True)
        print("rest untouched:", bool((k_cache[0, :14000] == before[0, :14000]).all() and
                                      (k_cache[0, 14016:] == before[0, 14016:]).all()), flush=True)
    """)
    assert rest == ["rows written: True", "rest untouched: True"]
    assert latency < MAX_LATENCY


def _sim_available() -> bool:
    return "sim" in fa.available_backends()


@pytest.mark.skipif(not _sim_available(), reason="sim backend not built")
def test_sim_backend_forward_is_interruptible():
    # The interrupted call is sized from a measured one (its work grows as n^2): about 4 s uninterrupted at this
    # machine's current speed (at least 512 tokens, at most 2048), so SIGINT 0.5 s in always lands mid-call without
    # minutes of simulation; the deadline follows the measurement (_interrupt's "expect"), not a fixed clock.
    latency, rest = _interrupt("""
        rng = np.random.default_rng(0)
        q = rng.standard_normal((1, 2048, 4, 64)).astype(np.float32)
        small = q[:, :40].copy()
        ref = fa.flash_attn_func(small, small, small, causal=True, backend="sim")
        cal = q[:, :256].copy()
        t0 = time.monotonic()
        fa.flash_attn_func(cal, cal, cal, causal=False, backend="sim")
        per_256 = time.monotonic() - t0
        n = int(min(2048, max(512, 256 * (4.0 / max(per_256, 1e-3)) ** 0.5)) // 64 * 64)
        big = q[:, :n].copy()
        print("expect", per_256 * (n / 256) ** 2, flush=True)
        interrupted(lambda: fa.flash_attn_func(big, big, big, causal=False, backend="sim"))
        out = fa.flash_attn_func(small, small, small, causal=True, backend="sim")
        print("next call bitwise equal:", bool((out == ref).all()), flush=True)
    """)
    assert rest == ["next call bitwise equal: True"]
    assert latency < MAX_LATENCY


SPIN_METAL = """
#include <metal_stdlib>
using namespace metal;

kernel void spin(volatile device uint *out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
    while (out[tid] != 7u) {  // never true: out starts at 0 and grows by 2 (volatile: the loop really runs)
        out[tid] = out[tid] + 2u;
    }
}

kernel void spin_with_barrier(volatile device uint *out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
    while (out[tid] != 7u) {  // endless too, but every thread reaches a barrier in every round
        out[tid] = out[tid] + 2u;
        threadgroup_barrier(mem_flags::mem_device);
    }
}

kernel void fill(device uint *out [[buffer(0)]], uint tid [[thread_position_in_grid]]) {
    out[tid] = tid * 3u;
}
"""


@pytest.fixture(scope="module")
def spin_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spin") / "spin.metal"
    path.write_text(SPIN_METAL)
    return str(path)


@pytest.mark.parametrize("kernel", ["spin", "spin_with_barrier"])
def test_sim_run_of_an_endless_kernel_is_interruptible(spin_file, kernel):
    latency, rest = _interrupt(f"""
        from flash_attn_cy import sim
        buf = {{0: np.zeros(64, np.uint32)}}
        sim.run({spin_file!r}, "fill", 2, 32, buf, schedules=1)  # compiles the module before the clock starts
        interrupted(lambda: sim.run({spin_file!r}, {kernel!r}, 2, 32, buf, schedules=1))
        res = sim.run({spin_file!r}, "fill", 2, 32, buf, schedules=3)
        print("next run:", not res.faults and bool((res.buffers[0] == np.arange(64) * 3).all()), flush=True)
    """)
    assert rest == ["next run: True"]
    assert latency < MAX_LATENCY


def test_sim_cli_exits_130_promptly_on_sigint(spin_file):
    base = [sys.executable, "-m", "flash_attn_cy.sim", "run", spin_file, "--grid", "2", "--threadgroup", "32",
            "--buffer", "0=zeros:uint32:64", "--schedules", "1"]
    warm = subprocess.run(base + ["--kernel", "fill"], capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr  # the module is now cached: the next run starts the kernel quickly
    p = subprocess.Popen(base + ["--kernel", "spin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4.0)
        assert p.poll() is None
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    print(f"\nSIGINT -> exit {p.returncode}: {elapsed * 1000:.0f} ms (including interpreter exit)")
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert elapsed < 2 * MAX_LATENCY  # the process exit (interpreter shutdown) adds to the interrupt itself


def test_calls_from_other_threads_still_work(rng):
    # Only the main thread polls for signals; a worker thread's call runs to the end and gives the right bits.
    q = rng.standard_normal((2, 700, 4, 64)).astype(np.float32)
    ref = fa.flash_attn_func(q, q, q, causal=True, backend="cpu")
    results = []
    import threading

    t = threading.Thread(target=lambda: results.append(fa.flash_attn_func(q, q, q, causal=True, backend="cpu")))
    t.start()
    t.join()
    assert len(results) == 1 and (results[0] == ref).all()


def test_signal_handler_exception_other_than_keyboardinterrupt_propagates():
    # Whatever the Python handler raises is what the interrupted call raises (here from SIGALRM).
    body = """
        import signal
        class Alarm(Exception):
            pass
        def handler(sig, frame):
            raise Alarm()
        signal.signal(signal.SIGALRM, handler)
        q = np.random.default_rng(0).standard_normal((1, 16384, 8, 64)).astype(np.float32)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        t0 = time.monotonic()
        try:
            fa.flash_attn_func(q, q, q, causal=True, backend="cpu")
            print("finished")
        except Alarm:
            print("alarm after", round(time.monotonic() - t0, 2))
    """
    r = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("alarm after"), r.stdout
    assert float(r.stdout.split()[2]) < 0.5 + MAX_LATENCY
