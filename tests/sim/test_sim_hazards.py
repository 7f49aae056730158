"""The simulator's hazard detector (csrc/sim/hazard.h) and its SIMD-group run-ahead schedules, on planted bugs
(tests/sim/sim_cases/hazards.metal): each race is reported on the first run (``schedules=1``) naming both threads, the
memory, the byte offset and both source lines; each bug's fixed twin runs clean; the SIMD-group ordering points are
the documented ones; and what differential detection alone needs the run-ahead schedules for."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _paths import SIM_CASES  # noqa: E402

sim = pytest.importorskip("flash_attn_cy.sim")
if sim._compile.shutil.which("c++") is None and sim._compile.shutil.which("g++") is None \
        and sim._compile.shutil.which("clang++") is None and not os.environ.get("CXX"):
    pytest.skip("the simulator needs a C++ compiler at run time (none found)", allow_module_level=True)

CASE = SIM_CASES / "hazards.metal"
# Inputs; in each 64-element row the first SIMD group's half holds the maximum by far, so that the broken softmax's
# results depend on the order of the SIMD groups (a maximum read from the wrong slot changes them).
X = np.random.default_rng(7).standard_normal(256).astype(np.float32)
X.reshape(-1, 64)[:, :32] += 12.0


def line_of(marker: str) -> int:
    """Line of `// @marker` in the case file."""
    for i, text in enumerate(CASE.read_text().splitlines(), 1):
        if f"// @{marker}" in text:
            return i
    raise AssertionError(marker)


def at(marker: str) -> str:
    """How a race report names a source line: ' at <path>/hazards.metal:<line>' (paths may be absolute)."""
    return rf" at \S*hazards\.metal:{line_of(marker)}\b"


def run(kernel, grid, threadgroup, fixed, schedules=1, extra=None, publisher=0, **kw):
    buffers = {0: X, 1: np.zeros(64 * grid, np.float32)}
    buffers.update(extra or {})
    consts = {2: np.uint32(fixed)}
    if kernel == "row_softmax":
        consts[3] = np.uint32(publisher)
    return sim.run(CASE, kernel, grid, threadgroup, buffers, consts, schedules=schedules, **kw)


def thread(t, sid, lane):
    return re.escape(f"thread ({t},0,0) [simdgroup {sid}, lane {lane}]")


# kernel, grid, threadgroup, extra buffers, expected (kind, regex over the message) - each must be among the faults
PLANTED = {
    "row_softmax": (2, 64, None, [
        # SIMD group 1 reads part[0] as a maximum while SIMD group 0 overwrites it with its sum (and vice versa)
        ("race", "threadgroup array 'part' \\(declared at \\S*hazards\\.metal:\\d+\\), byte offset 0: read by "
         + thread(63, 1, 31) + at("softmax-read") + " and write by " + thread(0, 0, 0) + at("softmax-write")
         + ", no threadgroup_barrier\\(mem_flags::mem_threadgroup\\) between them")]),
    "write_write": (1, 64, None, [
        ("race", "threadgroup array 'slot' .*, byte offset 0: write by " + thread(0, 0, 0) + at("ww-write")
         + " and write by " + thread(32, 1, 0) + at("ww-write"))]),
    "device_write_write": (2, 64, None, [
        ("race", "buffer\\(1\\), byte offset \\d+: write by threadgroup \\(0,0,0\\), thread \\((\\d+),0,0\\) .*"
         + at("dev-write") + " and write by threadgroup \\(1,0,0\\), thread \\(\\1,0,0\\) .*" + at("dev-write")
         + ": threadgroups of one dispatch are not ordered")]),
    "device_flag_barrier": (1, 64, None, [
        ("race", "threadgroup array 't' .*, byte offset 128: write by " + thread(32, 1, 0) + at("flag-write")
         + " and read by " + thread(0, 0, 0) + at("flag-read") + ", no threadgroup_barrier\\(mem_flags::mem_"
         "threadgroup\\) between them \\(the threadgroup_barrier at \\S*hazards\\.metal:" + str(line_of("flag-barrier"))
         + " between them lacks mem_flags::mem_threadgroup\\)")]),
    "threadgroup_flag_barrier": (1, 64, {3: np.zeros(64, np.float32)}, [
        ("race", "buffer\\(1\\), byte offset 128: write by " + thread(32, 1, 0) + at("dflag-write") + " and read by "
         + thread(0, 0, 0) + at("dflag-read") + ", no threadgroup_barrier\\(mem_flags::mem_device\\)")]),
    "simd_neighbour": (1, 32, None, [
        ("race (simdgroup)", "threadgroup array 't' .*, byte offset 4: read by " + thread(0, 0, 0) + at("simd-read")
         + " and write by " + thread(1, 0, 1) + at("simd-write") + ", both in simdgroup 0, with no SIMD-group "
         "function, simdgroup_barrier\\(mem_flags::mem_threadgroup\\)")]),
    "atomic_counter": (3, 64, {1: np.zeros(1, np.uint32), 3: np.zeros(3, np.uint32)}, [
        ("race (simdgroup)", "buffer\\(1\\), byte offset 0: read by " + thread(0, 0, 0) + at("plain-read")
         + " and atomic write by " + thread(1, 0, 1) + at("atomic-add"))]),
}


def check_reported(faults, expected, kernel):
    for kind, pattern in expected:
        msgs = [f.message for f in faults if f.kind == kind]
        assert any(re.search(pattern, m) for m in msgs), (kind, pattern, faults)
        assert all(m.startswith(f"kernel '{kernel}'") for m in msgs)


@pytest.mark.parametrize("kernel", sorted(PLANTED))
def test_planted_race_found_on_the_first_run(kernel):
    grid, tg, extra, expected = PLANTED[kernel]
    # One host thread: atomic_counter's word is raced twice (inside a SIMD group, as planted, and across threadgroups),
    # and with threadgroups on several host threads which race the word's shadow cell meets first depends on which
    # threadgroup ran first (both are reported races; the message checked here is the planted one).
    res = run(kernel, grid, tg, fixed=0, schedules=1, extra=extra, host_threads=1)
    check_reported(res.faults, expected, kernel)


@pytest.mark.parametrize("kernel", sorted(PLANTED))
def test_fixed_twin_runs_clean(kernel):
    grid, tg, extra, _ = PLANTED[kernel]
    res = run(kernel, grid, tg, fixed=1, schedules=4, extra=extra)  # detector, then run-ahead and interleaved orders
    assert res.faults == []


def test_found_with_many_schedules_too():
    grid, tg, extra, expected = PLANTED["row_softmax"]
    res = run("row_softmax", grid, tg, fixed=0, schedules=6, extra=extra)
    check_reported(res.faults, expected, "row_softmax")


def test_row_softmax_results_and_the_cross_simdgroup_pair():
    """The fixed softmax is right (so the kernels test what they claim), and the race report of the broken one
    also names the pair the issue describes: SIMD group 0 reads part[1], SIMD group 1 overwrites it."""
    res = run("row_softmax", 2, 64, fixed=1)
    rows = X[:128].reshape(2, 64).astype(np.float64)
    ref = np.exp(rows - rows.max(1, keepdims=True))
    np.testing.assert_allclose(res.buffers[1].reshape(2, 64), ref / ref.sum(1, keepdims=True), rtol=1e-5)
    # first run at the run-ahead pace: SIMD group 1 overwrites part[1] before SIMD group 0 reads it
    res = run("row_softmax", 1, 64, fixed=0, schedule_mode="run-ahead")
    check_reported(res.faults, [("race", "threadgroup array 'part' .*, byte offset 4: write by " + thread(32, 1, 0)
                                 + at("softmax-write") + " and read by " + thread(0, 0, 0) + at("softmax-read"))],
                   "row_softmax")


def test_simd_group_ordering_points():
    """simdgroup_barrier(mem_threadgroup) and SIMD-group functions order lanes of a SIMD group; a mem_none
    simdgroup_barrier is an execution barrier only (MSL 6.9.1), and the report says so."""
    assert run("simd_neighbour", 1, 32, fixed=1).faults == []
    assert run("simd_neighbour", 1, 32, fixed=2).faults == []
    res = run("simd_neighbour", 1, 32, fixed=3)
    assert [f.kind for f in res.faults] == ["race (simdgroup)"], res.faults
    assert "(a simdgroup_barrier between them lacks mem_flags::mem_threadgroup)" in res.faults[0].message


def test_atomics_never_race_with_each_other():
    res = run("atomic_counter", 3, 64, fixed=1, extra={1: np.zeros(1, np.uint32), 3: np.zeros(3, np.uint32)})
    assert res.faults == []
    assert res.buffers[1][0] == 3 * 64


def test_detection_off_reports_nothing_on_one_run():
    """The same bugs pass a single run without the detector: it is what finds them."""
    for kernel in ("row_softmax", "write_write", "device_flag_barrier", "simd_neighbour"):
        grid, tg, extra, _ = PLANTED[kernel]
        assert run(kernel, grid, tg, fixed=0, hazards=False).faults == [], kernel


def test_run_ahead_schedules_expose_what_interleaved_ones_cannot():
    """Differential detection (no detector): with the values published by lane 5, interleaved schedules move the SIMD
    groups forward together and never change the result of the broken softmax; a SIMD group running ahead to its
    next barrier (reverse run-ahead order, the second run of the default mixed mode) does."""
    for mode, schedules in (("interleaved", 6), ("run-ahead", 2), ("mixed", 2)):
        res = run("row_softmax", 2, 64, fixed=0, schedules=schedules, hazards=False, schedule_mode=mode,
                  publisher=5)
        kinds = [f.kind for f in res.faults]
        assert kinds == ([] if mode == "interleaved" else ["race"]), (mode, res.faults)
    assert "reverse run-ahead" in res.faults[0].message


def test_run_ahead_first_run_results_match():
    """A clean kernel gives the same results whatever the pace of its first run."""
    a = run("row_softmax", 2, 64, fixed=1, schedule_mode="interleaved").buffers[1]
    b = run("row_softmax", 2, 64, fixed=1, schedule_mode="run-ahead").buffers[1]
    np.testing.assert_array_equal(a, b)


def test_bad_schedule_mode_and_hazards_arguments():
    with pytest.raises(ValueError, match="schedule_mode"):
        run("row_softmax", 1, 64, fixed=1, schedule_mode="lockstep")
    with pytest.raises(TypeError, match="hazards"):
        run("row_softmax", 1, 64, fixed=1, hazards="yes")


def test_uninstrumented_module_refuses_hazard_runs():
    """A module built without the instrumentation contains no calls into the detector (detection off costs
    nothing), so a launch asking for hazards there is an error rather than a silent pass."""
    from flash_attn_cy.sim import _compile, translate

    code = translate(CASE.read_text(), str(CASE)).code
    lib = _compile.load_module(code, "hazards.metal", salt="test-uninstrumented")
    msg = __import__("ctypes").create_string_buffer(4096)
    c = __import__("ctypes")
    x = np.zeros(64, np.float32)
    n = lib.fasim_launch(b"write_write", (c.c_uint * 3)(1, 1, 1), (c.c_uint * 3)(64, 1, 1), 1, (c.c_int * 1)(1),
                         (c.c_void_p * 1)(x.ctypes.data), None, (c.c_size_t * 1)(x.nbytes), (c.c_int * 1)(1), 0,
                         None, None, None, 1, 0, 1, 0, 1, 2, msg, len(msg), None,
                         0, None, None, None, None, None, 0, None, None)  # no function constants, no [[threadgroup(n)]]
    assert n == 1 and msg.value.decode().startswith("error\t"), msg.value
    assert "hazard detection needs the kernel compiled with the access instrumentation" in msg.value.decode()


def test_cli_reports_race_on_first_run_and_no_hazards_turns_it_off(tmp_path):
    np.save(tmp_path / "x.npy", X)
    base = [sys.executable, "-m", "flash_attn_cy.sim", "run", str(CASE), "--kernel", "device_flag_barrier", "--grid",
            "1", "--threadgroup", "64", "--buffer", f"0={tmp_path / 'x.npy'}", "--buffer", "1=zeros:float32:64",
            "--bytes", "2=uint32:0", "--schedules", "1"]
    p = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"^race: kernel 'device_flag_barrier', threadgroup \(0,0,0\): threadgroup array 't'.*"
                     + at("flag-write") + ".*" + at("flag-read"), p.stdout, re.M), p.stdout
    p = subprocess.run(base + ["--no-hazards"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "ok: device_flag_barrier: no faults (1 schedule(s))" in p.stdout, p.stdout + p.stderr
    p = subprocess.run(base + ["--schedule-mode", "sideways"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--schedule-mode" in p.stderr


# ---- the sim backend: the package's kernels under the detector (FLASH_ATTN_CY_SIM_HAZARDS=1) -----------------------

def _backend_calls():
    """Forward (prefill and decode), backward and KV-cache append + attention of the package on backend="sim"."""
    import flash_attn_cy as fa

    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 9, 2, 64)).astype(np.float16)
    k = rng.standard_normal((1, 13, 1, 64)).astype(np.float16)
    v = rng.standard_normal((1, 13, 1, 64)).astype(np.float16)
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=True, backend="sim", return_attn_probs=True)
    dec = fa.flash_attn_func(q[:, :1], k, v, backend="sim")
    dq, dk, dv = fa.backward(np.ones_like(out), q, k, v, out, lse, causal=True, backend="sim")
    kc, vc = np.zeros((1, 16, 1, 64), np.float16), np.zeros((1, 16, 1, 64), np.float16)
    kv = fa.flash_attn_with_kvcache(q[:, :2], kc, vc, k=k[:, :3], v=v[:, :3], cache_seqlens=np.array([5], np.int32),
                                    backend="sim")
    return [out, lse, dec, dq, dk, dv, kv, kc, vc]


def test_backend_kernels_clean_and_bitwise_equal_under_the_detector(monkeypatch):
    """Every kernel kind runs clean under the detector (a race would raise), with bitwise the results of the
    uninstrumented kernels."""
    from _sim_hazards import HAZARDS_ENV, hazard_module_built
    from flash_attn_cy import _core

    if not _core.backend_available("sim")[0]:
        pytest.skip("the sim backend is not available in this build")
    if not hazard_module_built():
        pytest.skip("no instrumented kernel module in this build (compiler without -fsanitize=thread)")
    monkeypatch.delenv(HAZARDS_ENV, raising=False)
    plain = _backend_calls()
    monkeypatch.setenv(HAZARDS_ENV, "1")
    checked = _backend_calls()
    for a, b in zip(plain, checked):
        np.testing.assert_array_equal(a, b)
