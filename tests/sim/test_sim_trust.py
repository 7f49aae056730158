"""The simulator's trust boundary: a .metal file is compiled and run as native code, so `sim run` and `sim check`
accept only the MSL subset (flash_attn_cy/sim/trust.py). Planted hostile kernels are refused with their file:line
and nothing of theirs runs; the project's own kernels pass."""

import subprocess
import sys

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("the trust check needs clang++ (not found)", allow_module_level=True)
from flash_attn_cy.sim import trust  # noqa: E402

from _paths import ROOT, SIM_CASES  # noqa: E402
HOSTILE = SIM_CASES / "hostile"

# file (= kernel name), what the refusal must say (file:line and why)
PLANTED = [
    ("calls_system", ["calls_system.metal:8", "system(char const*)", "neither an MSL built-in"]),
    ("extern_c", ["extern_c.metal:4", "'extern'"]),
    ("static_init", ["static_init.metal:5", "dynamic initialisation"]),
    ("inline_asm", ["inline_asm.metal:6", "asm"]),
    ("include_cstdlib", ["include_cstdlib.metal:2", "#include <cstdlib>"]),
    ("undeclared_libc", ["undeclared_libc.metal:5", "getpid"]),
    ("macro_hidden", ["macro_hidden.metal:6", "__GN"]),
    ("constructor_attr", ["constructor_attr.metal:4", "loaded"]),
    ("line_marker", ["line_marker.metal:4", "#line"]),
    ("absolute_include", ["absolute_include.metal:2", "absolute path"]),
    ("pragma_operator", ["pragma_operator.metal:5", "_Pragma"]),
]


@pytest.mark.parametrize("name,needles", PLANTED, ids=[p[0] for p in PLANTED])
def test_hostile_kernel_is_refused_by_run(name, needles, tmp_path, monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_CACHE", str(tmp_path / "cache"))
    with pytest.raises((trust.KernelRefused, sim.SimCompileError)) as e:
        sim.run(HOSTILE / f"{name}.metal", name, 1, 32, {0: np.zeros(32, np.int32)}, schedules=1)
    for n in needles:
        assert n in str(e.value), str(e.value)
    # nothing was built, so nothing of the file ever ran
    assert not list((tmp_path / "cache").glob("mod-*.so"))


@pytest.mark.parametrize("name,needles", PLANTED[:4], ids=[p[0] for p in PLANTED[:4]])
def test_hostile_kernel_is_refused_by_the_cli(name, needles):
    for cmd in (["run", str(HOSTILE / f"{name}.metal"), "--kernel", name, "--grid", "1", "--threadgroup", "32",
                 "--buffer", "0=zeros:int32:32"], ["check", str(HOSTILE / f"{name}.metal")]):
        p = subprocess.run([sys.executable, "-m", "flash_attn_cy.sim"] + cmd, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == (2 if cmd[0] == "run" else 1), p.stdout + p.stderr
        assert f"{name}.metal:" in p.stdout + p.stderr


def test_sim_check_runs_the_trust_rules(tmp_path):
    """A file the strict (address-space) check accepts but the trust rules do not."""
    for name in ("extern_c", "static_init", "inline_asm", "constructor_attr", "line_marker"):
        r = sim.check_file(str(HOSTILE / f"{name}.metal"))
        assert not r.ok and f"{name}.metal:" in r.message, (name, r.message)


def test_project_kernels_pass_the_trust_rules():
    for path in sorted((ROOT / "kernels").glob("*.metal")):
        source = path.read_text()
        tr = sim.translate(source, str(path))
        trust.check_translation(tr, source, str(path), [])
        trust.check_compiled(tr.code, str(path), sim.find_clang())


@pytest.mark.parametrize("snippet", [
    # preprocessor features MSL code uses (and that function constants / MLX-style headers bring) stay allowed
    "#define TILE(n) (n * 2)\n#if defined(__METAL_VERSION__) && __METAL_VERSION__ >= 300\n#define OK 1\n#endif\n"
    "#pragma clang diagnostic ignored \"-Wunused\"\n"
    "#define METAL_FUNC inline __attribute__((__always_inline__))\nMETAL_FUNC float twice(float x) { return x * 2; }\n"
    "#define CAT(a, b) a##b\nconstant float CAT(sc, ale) = 0.5f;\n",
    # _Pragma, the operator form (llama.cpp's FOR_UNROLL, MLX's MLX_MTL_PRAGMA_UNROLL), and a function constant
    '#define UNROLL _Pragma("clang loop unroll(full)")\nconstant float scale = 0.5f;\n'
    "constant bool fc_on [[function_constant(0)]];\n"
    "METAL_FUNC float twice(float x) { UNROLL for (int i = 0; i < 1; i++) x *= 2; return fc_on ? x : 0.0f; }\n"
    "#define TILE(n) (n * 2)\n",
])
def test_msl_preprocessor_features_are_not_refused(tmp_path, snippet):
    f = tmp_path / "ok.metal"
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\n" + snippet +
                 "kernel void ok(device float* y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {\n"
                 "    float acc = 0.0f;\n#pragma unroll\n    for (int i = 0; i < 4; i++) acc += 0.25f;\n"
                 "    y[tid] = twice(float(TILE(tid))) * scale + exp(0.0f) * acc;\n}\n")
    res = sim.run(f, "ok", 1, 32, {0: np.zeros(32, np.float32)}, schedules=1,
                  constants={"fc_on": True} if "fc_on" in snippet else None)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[0], np.arange(32, dtype=np.float32) * 2 + 1)


def test_help_says_simulating_runs_native_code():
    p = subprocess.run([sys.executable, "-m", "flash_attn_cy.sim", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert "native" in p.stdout and "trust" in p.stdout, p.stdout
    readme = (ROOT / "kernels" / "README.md").read_text()
    assert "native program" in readme


def test_without_clang_run_refuses_unless_unchecked(monkeypatch, tmp_path):
    from flash_attn_cy.sim import _run
    monkeypatch.setattr(_run, "find_clang", lambda: None)
    src = "kernel void k(device int* y [[buffer(0)]]) { y[0] = 7; }  // " + str(tmp_path)
    with pytest.raises(sim.SimCompileError, match="clang"):
        sim.run(src, "k", 1, 1, {0: np.zeros(1, np.int32)}, schedules=1)
    # the explicit opt-out compiles files as they are (here one the checks would refuse)
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_UNCHECKED", "1")
    res = sim.run(HOSTILE / "extern_c.metal", "extern_c", 1, 32, {0: np.zeros(32, np.int32)}, schedules=1)
    import os
    assert res.faults == [] and (res.buffers[0] == os.getpid()).all()
    # and a module built unchecked never serves a checked run later in the process
    monkeypatch.delenv("FLASH_ATTN_CY_SIM_UNCHECKED")
    monkeypatch.setattr(_run, "find_clang", sim.find_clang)
    with pytest.raises(trust.KernelRefused, match="extern_c.metal:4"):
        sim.run(HOSTILE / "extern_c.metal", "extern_c", 1, 32, {0: np.zeros(32, np.int32)}, schedules=1)
