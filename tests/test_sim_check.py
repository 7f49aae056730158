"""The strict check (clang with MSL address spaces) accepts the project's kernels and rejects planted errors."""

import subprocess
import sys
from pathlib import Path

import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("the strict MSL check needs clang++ (not found: install clang or set FLASH_ATTN_CY_CLANG)",
                allow_module_level=True)

ROOT = Path(__file__).parent.parent
KERNELS = sorted((ROOT / "kernels").glob("*.metal"))
CASES = ROOT / "tests" / "sim_cases"


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
    ("kernel void k(device float* y [[buffer(0)]], threadgroup float* t [[threadgroup(0)]]) { y[0] = t[0]; }",
     "threadgroup(n)"),
])
def test_poisoned_constructs(tmp_path, snippet, needle):
    f = tmp_path / "k.metal"
    f.write_text("#include <metal_stdlib>\nusing namespace metal;\n" + snippet + "\n")
    r = sim.check_file(str(f))
    assert not r.ok
    assert needle in r.message
