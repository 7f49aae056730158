"""Edges of the simulator's command line and Python entry point: a missing path, sizes past 32 bits, allocations
that cannot be made, out-of-bounds reads that only a second placement catches (whatever the number of schedules),
and the memory the simulator takes for its guarded copies."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
try:
    sim._compile.find_cxx()
except sim.SimCompileError:
    pytest.skip("the simulator needs a C++ compiler at run time", allow_module_level=True)
if sim.find_clang() is None:
    pytest.skip("the simulator checks kernel files with clang++ (not found)", allow_module_level=True)

from _paths import ROOT, SIM_CASES  # noqa: E402
CASE = SIM_CASES / "oob_reads.metal"
REDUCE = ROOT / "examples" / "example_reduce.metal"


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "flash_attn_cy.sim"] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_missing_path_is_an_error_not_source_text(tmp_path):
    missing = tmp_path / "kernel.metl"  # mistyped extension, no such file
    line = _one_line_error(_cli("run", missing, "--kernel", "k", "--grid", "1", "--threadgroup", "1"))
    assert "no such file" in line and "kernel.metl" in line
    with pytest.raises(FileNotFoundError, match="kernel.metl"):
        sim.run(str(missing), "k", 1, 1)
    # one-line source text is still source text
    res = sim.run("kernel void k(device float* y [[buffer(0)]]) { y[0] = 2.0f; }", "k", 1, 1,
                  {0: np.zeros(1, np.float32)}, schedules=1)
    assert res.faults == [] and res.buffers[0][0] == 2.0


@pytest.mark.parametrize("opt", ["--grid", "--threadgroup"])
def test_sizes_past_32_bits_are_refused_not_truncated(opt):
    args = {"--grid": "1", "--threadgroup": "32"}
    args[opt] = f"{2**32 + 1}"
    line = _one_line_error(_cli("run", REDUCE, "--kernel", "example_reduce", "--grid", args["--grid"],
                                "--threadgroup", args["--threadgroup"], "--buffer", "0=zeros:float32:4",
                                "--buffer", "1=zeros:float32:2", "--bytes", "2=uint32:4"))
    assert opt in line and "2**32 - 1" in line
    with pytest.raises(ValueError, match="grid"):
        sim.run(REDUCE, "example_reduce", 2**32 + 1, 32, {})
    with pytest.raises(ValueError, match="threadgroups in all"):
        sim.run(REDUCE, "example_reduce", (2**16, 2**16, 2), 32, {})
    with pytest.raises(ValueError, match="schedules"):
        sim.run(REDUCE, "example_reduce", 1, 32, {}, schedules=2**32 + 1)


def test_allocation_that_cannot_be_made_is_a_one_line_error():
    line = _one_line_error(_cli("run", REDUCE, "--kernel", "example_reduce", "--grid", "1", "--threadgroup", "32",
                                "--buffer", f"0=zeros:float32:{10**14}", "--buffer", "1=zeros:float32:2"))
    assert "--buffer" in line and "cannot allocate" in line and str(4 * 10**14) in line


@pytest.mark.parametrize("schedules", [1, 3])
@pytest.mark.parametrize("kernel,where", [("read_past_end", "past the end"), ("read_before_start", "before the start")])
def test_out_of_bounds_reads_are_found_whatever_the_schedules(kernel, where, schedules, tmp_path):
    x = np.arange(3, dtype=np.float32)
    res = sim.run(CASE, kernel, 1, 3, {0: x, 1: np.zeros(3, np.float32)}, schedules=schedules)
    assert [f.kind for f in res.faults] == ["out-of-bounds"], res.faults
    assert where in res.faults[0].message and "buffer(0)" in res.faults[0].message
    np.save(tmp_path / "x.npy", x)
    p = _cli("run", CASE, "--kernel", kernel, "--grid", "1", "--threadgroup", "3", "--buffer", f"0={tmp_path / 'x.npy'}",
             "--buffer", "1=zeros:float32:3", "--schedules", schedules)
    assert p.returncode == 1 and p.stdout.startswith("out-of-bounds: "), p.stdout + p.stderr
    # the clean kernel of the same shape stays clean, and the caller's arrays are not written
    res = sim.run(CASE, "copy3", 1, 3, {0: x, 1: np.zeros(3, np.float32)}, schedules=schedules)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[1], x + 1)
    np.testing.assert_array_equal(x, np.arange(3, dtype=np.float32))


CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from flash_attn_cy import sim
    mib = int(sys.argv[1]); writable = sys.argv[2] == "1"
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    n = mib << 18  # float32 elements
    y = np.zeros(4, np.float32)
    sim.run(sys.argv[3], "example_reduce", 2, 64, {0: np.ones(1024, np.float32), 1: y}, {2: np.uint32(1024)},
            schedules=1)  # compile and load outside the measurement
    x = np.ones(n, np.float32)
    x.flags.writeable = writable
    before = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak RSS (VmHWM), so that only this run counts, not e.g. the imports
    res = sim.run(sys.argv[3], "example_reduce", 2, 1024, {0: x, 1: y}, {2: np.uint32(1 << 20)}, schedules=2,
                  host_threads=1)
    with open("/proc/self/status") as f:
        peak = int(next(ln for ln in f if ln.startswith("VmHWM:")).split()[1]) * 1024
    assert res.faults == [], res.faults
    print(json.dumps({"before": before, "peak": peak, "sum": float(res.buffers[1][0])}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "writable"])
def test_guarded_copies_take_at_most_1_25x_the_buffers(writable, tmp_path):
    """Peak RSS over a run with a 256 MiB buffer: one guarded copy at a time (+ the results of a writable buffer,
    which the caller gets back), not the 2-3 copies there were (Python copy, guarded copy, kept results)."""
    mib = 256
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    p = subprocess.run([sys.executable, str(script), str(mib), "1" if writable else "0", str(REDUCE)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["sum"] == 1 << 19  # the kernel really read the first MiB of each half
    extra = r["peak"] - r["before"]
    size = mib << 20
    allowed = 1.25 * size + (size if writable else 0) + (48 << 20)
    assert extra < allowed, f"peak RSS grew by {extra / 2**20:.0f} MiB for a {mib} MiB buffer (allowed " \
                            f"{allowed / 2**20:.0f} MiB)"
