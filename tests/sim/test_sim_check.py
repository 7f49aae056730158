"""The strict check (clang with MSL address spaces) accepts the project's kernels and rejects planted errors."""

import subprocess
import sys

import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("the strict MSL check needs clang++ (not found: install clang or set FLASH_ATTN_CY_CLANG)",
                allow_module_level=True)

from _paths import ROOT, SIM_CASES  # noqa: E402
KERNELS = sorted((ROOT / "kernels").glob("*.metal")) + sorted((ROOT / "examples").glob("*.metal"))
CASES = SIM_CASES


def test_project_kernels_pass_the_strict_check():
    assert KERNELS, "no kernels/*.metal found"
    p = subprocess.run([sys.executable, "-m", "flash_attn_cy.sim", "check"] + [str(k) for k in KERNELS],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_simulator_cases_pass_the_strict_check():
    clean = [p for p in CASES.glob("*.metal") if not p.name.startswith("strict_")]
    bad = [r for r in sim.check_files([str(p) for p in clean]) if not r.ok]
    assert not bad, "\n".join(r.message for r in bad)


@pytest.mark.parametrize("name,needle", [
    ("strict_mixed_address_space.metal", "address_space(1)"),
    ("strict_double.metal", "double"),
    ("strict_recursion.metal", "recursion"),
])
def test_planted_strict_errors_fail(name, needle):
    p = subprocess.run([sys.executable, "-m", "flash_attn_cy.sim", "check", str(CASES / name)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert needle in p.stdout and "error" in p.stdout


@pytest.mark.parametrize("snippet,needle", [
    ("kernel void k(device float* y [[buffer(0)]]) { float* p = new float[4]; y[0] = p[0]; }", "new"),
    ("#include <vector>\nkernel void k(device float* y [[buffer(0)]]) { y[0] = 1; }", "<vector>"),
    ("kernel void k(device float* y [[buffer(0)]]) { float x = std::max(1.0f, 2.0f); y[0] = x; }", "standard"),
    ("kernel void k(device float* y [[buffer(0)]], float4 p [[stage_in]]) { y[0] = p.x; }", "stage_in"),
])
def test_poisoned_constructs(tmp_path, snippet, needle):
    f = tmp_path / "k.metal"
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\n" + snippet + "\n")
    r = sim.check_file(str(f))
    assert not r.ok
    assert needle in r.message


@pytest.mark.parametrize("body,exec_too", [
    # MSL's simdgroup_load/store take a pointer to the matrix's own element type: no half -> float on the way.
    ("device const half* a [[buffer(0)]], device float* d [[buffer(1)]]) {\n"
     "  simdgroup_float8x8 m; simdgroup_load(m, a); simdgroup_store(m, d); }", True),
    ("device const float* a [[buffer(0)]], device half* d [[buffer(1)]]) {\n"
     "  simdgroup_float8x8 m; simdgroup_load(m, a); simdgroup_store(m, d); }", True),
    # ... from device or threadgroup memory only (address spaces exist in the strict check alone).
    ("constant float* a [[buffer(0)]], device float* d [[buffer(1)]]) {\n"
     "  simdgroup_float8x8 m; simdgroup_load(m, a); simdgroup_store(m, d); }", False),
])
def test_simdgroup_load_store_signatures_are_msls(tmp_path, body, exec_too):
    f = tmp_path / "k.metal"
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\nkernel void k(" + body + "\n")
    r = sim.check_file(str(f))
    assert not r.ok and "simdgroup_" in r.message, r.message
    # The execution header is as strict: the simulator would otherwise run what Apple's compiler rejects.
    if exec_too:
        with pytest.raises(sim.SimCompileError):
            sim.run(str(f), "k", 1, 32, {})
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\nkernel void k(device const float* a [[buffer(0)]], "
                 "device float* d [[buffer(1)]]) {\n  threadgroup float t[64];\n  simdgroup_float8x8 m;\n"
                 "  simdgroup_load(m, a, 8, ulong2(0, 0), true); simdgroup_store(m, t); simdgroup_load(m, t);\n"
                 "  simdgroup_store(m, d, 8); }\n")
    assert sim.check_file(str(f)).ok


@pytest.mark.parametrize("body", [
    # The MSL specification declares simdgroup_multiply_accumulate's operands as non-const thread references: a
    # const matrix or a temporary is not a documented operand, so neither check nor simulator accepts one.
    "thread const simdgroup_float8x8& a) { simdgroup_float8x8 d; simdgroup_multiply_accumulate(d, a, d, d); }",
    "simdgroup_float8x8 a) { simdgroup_float8x8 d;\n"
    "  simdgroup_multiply(d, a, make_filled_simdgroup_matrix<float, 8, 8>(1.0f)); }",
])
def test_simdgroup_product_operands_are_msls(tmp_path, body):
    f = tmp_path / "k.metal"
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\ninline void helper(" + body + "\n"
                 "kernel void k(device float* y [[buffer(0)]]) { y[0] = 0; }\n")
    r = sim.check_file(str(f))
    assert not r.ok and "simdgroup_multiply" in r.message, r.message
    with pytest.raises(sim.SimCompileError):
        sim.run(str(f), "k", 1, 32, {0: __import__("numpy").zeros(1, "float32")})
