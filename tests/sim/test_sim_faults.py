"""Planted bugs must each be reported by the Metal simulator, through the Python API and through the CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest
from _paths import ROOT, SIM_CASES

sim = pytest.importorskip("flash_attn_cy.sim")
if sim._compile.shutil.which("c++") is None and sim._compile.shutil.which("g++") is None \
        and sim._compile.shutil.which("clang++") is None and not os.environ.get("CXX"):
    pytest.skip("the simulator needs a C++ compiler at run time (none found)", allow_module_level=True)

CASES = SIM_CASES
EXAMPLES = ROOT / "examples"

# (file, kernel, grid, threadgroup, buffers {index: (dtype, count)}, bytes {index: (dtype, value)}, expected kind)
PLANTED = [
    ("missing_barrier.metal", "missing_barrier", 2, 64, {0: ("float32", 128), 1: ("float32", 128)}, {}, "race"),
    ("off_by_one_tile.metal", "off_by_one_tile", 2, 32, {0: ("float32", 64), 1: ("float32", 2)}, {},
     "out-of-bounds"),
    ("uninitialized_read.metal", "uninitialized_read", 1, 64, {0: ("float32", 64)}, {}, "uninitialized-read"),
    ("divergent_barrier.metal", "divergent_barrier", 1, 64, {0: ("float32", 64)}, {}, "divergent-barrier"),
    ("early_return_barrier.metal", "early_return_barrier", 1, 64, {0: ("float32", 40)}, {1: ("uint32", 40)},
     "divergent-barrier"),
]


def _inputs(bufs, byts):
    rng = np.random.default_rng(1)
    buffers = {k: rng.standard_normal(n).astype(dt) for k, (dt, n) in bufs.items()}
    return buffers, {k: np.array(v, dtype=dt) for k, (dt, v) in byts.items()}


@pytest.mark.parametrize("case", PLANTED, ids=[c[1] for c in PLANTED])
def test_planted_bug_python(case):
    fname, kernel, grid, tg, bufs, byts, kind = case
    buffers, b = _inputs(bufs, byts)
    res = sim.run(CASES / fname, kernel, grid, tg, buffers, b, schedules=3)
    kinds = [f.kind for f in res.faults]
    assert kind in kinds, res.faults
    msg = next(f.message for f in res.faults if f.kind == kind)
    assert kernel in msg
    if kind in ("out-of-bounds", "divergent-barrier"):
        assert "threadgroup (" in msg and "thread (" in msg


@pytest.mark.parametrize("case", PLANTED, ids=[c[1] for c in PLANTED])
def test_planted_bug_cli(case, tmp_path):
    fname, kernel, grid, tg, bufs, byts, kind = case
    args = [sys.executable, "-m", "flash_attn_cy.sim", "run", str(CASES / fname), "--kernel", kernel,
            "--grid", str(grid), "--threadgroup", str(tg), "--schedules", "3", "--out", str(tmp_path)]
    for k, (dt, n) in bufs.items():
        args += ["--buffer", f"{k}=zeros:{dt}:{n}"]
    for k, (dt, v) in byts.items():
        args += ["--bytes", f"{k}={dt}:{v}"]
    if kernel == "missing_barrier":  # needs data that differs between neighbours
        x = np.arange(128, dtype=np.float32)
        np.save(tmp_path / "x.npy", x)
        args[args.index("0=zeros:float32:128")] = f"0={tmp_path / 'x.npy'}"
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert any(ln.startswith(kind + ":") for ln in lines), p.stdout
    for k in bufs:
        assert (tmp_path / f"buffer{k}.npy").is_file()


def test_example_reduce_runs_clean():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    groups = 3
    res = sim.run(EXAMPLES / "example_reduce.metal", "example_reduce", groups, 96,
                  {0: x, 1: np.zeros(2 * groups, np.float32)}, {2: np.uint32(x.size)}, schedules=3)
    assert res.faults == []
    chunk = -(-x.size // groups)
    out = res.buffers[1]
    for g in range(groups):
        part = x[g * chunk:(g + 1) * chunk].astype(np.float64)
        np.testing.assert_allclose(out[2 * g], part.sum(), rtol=1e-5, atol=1e-4)
        assert out[2 * g + 1] == np.float32(part.max())


def test_example_reduce_cli_clean(tmp_path):
    x = np.arange(300, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    p = subprocess.run([sys.executable, "-m", "flash_attn_cy.sim", "run", str(EXAMPLES / "example_reduce.metal"),
                        "--kernel", "example_reduce", "--grid", "2", "--threadgroup", "64", "--buffer",
                        f"0={tmp_path / 'x.npy'}", "--buffer", "1=zeros:float32:4", "--bytes", "2=uint32:300",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    out = np.load(tmp_path / "buffer1.npy")
    np.testing.assert_array_equal(out, [x[:150].sum(), 149, x[150:].sum(), 299])


def test_wild_pointer_and_division_by_zero_are_faults_not_crashes():
    res = sim.run(CASES / "wild_pointer.metal", "wild_write", 1, 32, {0: np.zeros(32, np.float32)}, schedules=1)
    assert [f.kind for f in res.faults] == ["error"] or "out-of-bounds" in [f.kind for f in res.faults]
    assert "wild_write" in res.faults[0].message
    res = sim.run(CASES / "wild_pointer.metal", "divide_by_zero", 1, 32, {0: np.zeros(32, np.int32)},
                  {1: np.int32(0)}, schedules=1)
    assert res.faults and res.faults[0].kind == "error" and "division" in res.faults[0].message
    res = sim.run(CASES / "wild_pointer.metal", "divide_by_zero", 1, 32, {0: np.zeros(32, np.int32)},
                  {1: np.int32(3)}, schedules=1)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[0], np.arange(32) // 3)


def test_simd_function_in_divergent_branch_is_reported():
    res = sim.run(CASES / "wild_pointer.metal", "simd_divergent", 1, 64, {0: np.zeros(64, np.float32)},
                  schedules=1)
    assert [f.kind for f in res.faults] == ["divergent-barrier"]
    assert "simd_sum" in res.faults[0].message


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="threadgroup"):
        sim.run(EXAMPLES / "example_reduce.metal", "example_reduce", 1, 2048, {})
    with pytest.raises(ValueError, match="grid"):
        sim.run(EXAMPLES / "example_reduce.metal", "example_reduce", 0, 32, {})
    with pytest.raises(ValueError, match="no kernel named 'nope'"):
        sim.run(EXAMPLES / "example_reduce.metal", "nope", 1, 32, {})
    with pytest.raises(TypeError, match="explicit dtype"):
        sim.run(EXAMPLES / "example_reduce.metal", "example_reduce", 1, 32, {0: np.zeros(4, np.float32)}, {2: 5})
    res = sim.run(EXAMPLES / "example_reduce.metal", "example_reduce", 1, 32, {0: np.zeros(4, np.float32)})
    assert res.faults and res.faults[0].kind == "error" and "buffer(1)" in res.faults[0].message


def test_infinite_loop_is_interrupted_by_the_watchdog(monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_TIMEOUT", "1")
    res = sim.run(CASES / "wild_pointer.metal", "spin_forever", 2, 32, {0: np.zeros(32, np.float32)}, schedules=1)
    errors = [f for f in res.faults if f.kind == "error"]  # (the two threadgroups also race on y: hazard detector)
    assert errors, res.faults
    assert "still running" in errors[0].message and "spin_forever" in errors[0].message


def test_race_between_threadgroups_through_device_memory():
    res = sim.run(CASES / "wild_pointer.metal", "cross_group_race", 8, 32, {0: np.zeros(1, np.float32)},
                  schedules=2, host_threads=1)
    assert res.faults and {f.kind for f in res.faults} == {"race"}, res.faults  # write/write and read/write pairs
    assert "buffer(0), byte offset 0" in res.faults[0].message and "threadgroup (" in res.faults[0].message


@pytest.mark.parametrize("first", [0, 4, 1, 2])
def test_misaligned_vector_load_is_a_fault(first):
    """A pointer cast to half4 at an address that is not a multiple of 8 bytes is reported (the GPU would not, and
    x86 would just do the unaligned read): the check the vector decode kernel's aligned K/V path relies on."""
    x = np.arange(4 * 32 + 8, dtype=np.float16)
    res = sim.run(CASES / "misaligned_vector_load.metal", "misaligned_vector_load", 1, 32,
                  {0: x, 1: np.zeros(32, np.float32)}, {2: np.uint32(first)}, schedules=1)
    if first % 4 == 0:
        assert res.faults == []
        want = x[first:first + 128].astype(np.float32).reshape(32, 4).sum(axis=1)
        np.testing.assert_array_equal(res.buffers[1], want)
    else:
        assert [f.kind for f in res.faults] == ["error"], res.faults
        msg = res.faults[0].message
        assert "misaligned pointer" in msg and "aligned to 8 bytes" in msg and "misaligned_vector_load.metal:8" in msg


def _saxpy_in_child(conn) -> None:
    try:
        # a kernel this process has not loaded yet (as the parent's compiling thread would be doing), so that
        # the compile lock is taken
        res = sim.run(SAXPY + "// in the child\n", "saxpy", 1, 32, {0: np.ones(32, np.float32)},
                      {1: np.float32(2.0)}, schedules=1)
        conn.send(res.buffers[0].tolist())
    finally:
        conn.close()


SAXPY = """
#include <metal_stdlib>
using namespace metal;
kernel void saxpy(device float* y [[buffer(0)]], constant float& a [[buffer(1)]],
                  uint gid [[thread_position_in_grid]]) {
    y[gid] = a * y[gid] + 1.0f;
}
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_process_forked_while_a_kernel_compiles_can_still_run_kernels():
    """The run-time compile lock is held for seconds while a thread compiles a kernel; a process forked meanwhile
    (multiprocessing, DataLoader workers) used to inherit it locked and wait forever in its first sim.run."""
    import multiprocessing
    import threading

    from flash_attn_cy.sim import _compile

    sim.run(SAXPY, "saxpy", 1, 32, {0: np.ones(32, np.float32)}, {1: np.float32(2.0)}, schedules=1)  # compiled
    holding, release = threading.Event(), threading.Event()

    def compile_in_progress():
        with _compile._lock:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=compile_in_progress)
    holder.start()
    child = None
    try:
        assert holding.wait(30)
        ctx = multiprocessing.get_context("fork")
        parent_end, child_end = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_saxpy_in_child, args=(child_end,))
        child.start()
        child_end.close()
        got = parent_end.recv() if parent_end.poll(180) else None  # one kernel compile at most
        assert got == [3.0] * 32, "the forked child's sim.run did not finish"
    finally:
        release.set()
        holder.join()
        if child is not None:
            child.join(30)
            if child.exitcode is None:
                child.kill()
                child.join()
