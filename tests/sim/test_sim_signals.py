"""Every synchronous signal a simulated kernel can raise (SIGILL, SIGFPE, SIGSEGV, SIGBUS, stack overflow) is a reported
fault naming the kernel, through flash_attn_cy.sim.run and the CLI, and the process then runs another kernel
correctly (it used to die: a trap instruction ended the interpreter with SIGILL)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from _paths import ROOT, SIM_CASES

sim = pytest.importorskip("flash_attn_cy.sim")
try:
    _CXX = sim._compile.find_cxx()
except sim.SimCompileError:
    pytest.skip("the simulator needs a C++ compiler at run time (none found)", allow_module_level=True)
if sim.find_clang() is None:
    pytest.skip("the simulator checks kernel files with clang++ (not found)", allow_module_level=True)

CASE = SIM_CASES / "signals.metal"
EXAMPLES = ROOT / "examples"
IS_GCC = "clang" not in sim._compile._compiler_id(_CXX).lower()

# kernel, buffers, bytes, words expected in the message
CASES = [
    ("sig_ill", {0: ("int32", 0)}, {}, ["SIGILL", "illegal instruction"]),
    ("sig_fpe", {0: ("int32", -2**31)}, {1: ("int32", -1)}, ["SIGFPE", "signals.metal:15"]),
    ("sig_segv", {0: ("float32", 0)}, {1: ("uint64", 1 << 34)}, ["SIGSEGV", "signals.metal:21"]),
    ("sig_bus", {0: ("int32", 0)}, {1: ("uint64", 0x2000000000000000)}, ["SIGBUS", "signals.metal:29"]),
    ("stack_overflow", {0: ("int32", 0)}, {}, ["stack overflow"]),
]
X86_LINUX = sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "AMD64")


def _skip_if_unsupported(kernel):
    if kernel == "sig_ill" and not IS_GCC:
        pytest.skip("only GCC turns a division by a known zero into a trap instruction")
    if kernel in ("sig_bus", "sig_fpe") and not X86_LINUX:
        pytest.skip("how these signals arise is specific to x86-64 Linux")


def _saxpy_still_works():
    x = np.arange(1001, dtype=np.float32)
    res = sim.run(EXAMPLES / "example_reduce.metal", "example_reduce", 2, 64, {0: x, 1: np.zeros(4, np.float32)},
                  {2: np.uint32(x.size)}, schedules=2)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[1], [x[:501].sum(), 500, x[501:].sum(), 1000])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_signal_is_a_fault_and_the_process_lives_on(case):
    kernel, bufs, byts, words = case
    _skip_if_unsupported(kernel)
    buffers = {k: np.full(32, v, dtype=dt) for k, (dt, v) in bufs.items()}
    b = {k: np.array(v, dtype=dt) for k, (dt, v) in byts.items()}
    for schedules in (1, 3):
        res = sim.run(CASE, kernel, 1, 32, buffers, b, schedules=schedules)
        assert [f.kind for f in res.faults] == ["error"], res.faults
        msg = res.faults[0].message
        assert f"kernel '{kernel}'" in msg and "thread (" in msg, msg
        for w in words:
            assert w in msg, msg
    _saxpy_still_works()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_signal_is_a_fault_through_the_cli(case, tmp_path):
    kernel, bufs, byts, words = case
    _skip_if_unsupported(kernel)
    args = [sys.executable, "-m", "flash_attn_cy.sim", "run", str(CASE), "--kernel", kernel, "--grid", "1",
            "--threadgroup", "32", "--schedules", "1"]
    for k, (dt, v) in bufs.items():
        np.save(tmp_path / f"b{k}.npy", np.full(32, v, dtype=dt))
        args += ["--buffer", f"{k}={tmp_path / f'b{k}.npy'}"]
    for k, (dt, v) in byts.items():
        args += ["--bytes", f"{k}={dt}:{v}"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    line = p.stdout.strip().splitlines()[0]
    assert line.startswith("error: ") and f"kernel '{kernel}'" in line, p.stdout
    for w in words:
        assert w in line, line
