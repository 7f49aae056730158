"""As strict as Apple's compiler (issue 19 section 2b): what the MSL specification forbids and the simulator used to
accept is now a compile error in `sim check` and `sim run` alike, with the specification's rule in the message.
One planted bug per case, each next to the legal form that must keep compiling."""

from pathlib import Path

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")
if sim.find_clang() is None:
    pytest.skip("the strict MSL check needs clang++ (not found)", allow_module_level=True)

HEAD = "#include <metal_stdlib>\nusing namespace metal;\n"
KERNEL = ("kernel void k(device float* y [[buffer(0)]], device bfloat* b [[buffer(1)]], "
          "device atomic_uint* a [[buffer(2)]], device atomic_float* f [[buffer(3)]], "
          "device atomic_bool* t [[buffer(4)]], uint i [[thread_position_in_grid]]) {\n%s\n}\n")

# (planted statement, what the error must say); MSL specification 3.1 sections
PLANTED = [
    # §2.1: "neither float nor half can be implicitly converted to bfloat"
    ("bfloat z = 2.0f; b[i] = z;", "bfloat"),
    ("bfloat z = i > 3 ? b[i] : 0.0f; b[i] = z;", "bfloat"),
    ("b[i] = y[i] * 2.0f;", "bfloat"),
    ("bfloat z = b[i]; z += 1.0f; b[i] = z;", "bfloat"),
    ("half h = b[i]; y[i] = h;", "half"),
    # §2.1 / §6.5: no math function takes bfloat; the float result does not convert back implicitly
    ("b[i] = exp(b[i]);", "bfloat"),
    ("bfloat2 v = bfloat2(b[i]); v = sqrt(v); b[i] = v.x;", "sqrt"),
    # §2.4: simdgroup_matrix elements are float, half or bfloat
    ("simdgroup_matrix<int, 8, 8> m; (void)m;", "simdgroup_matrix elements are float, half or bfloat"),
    # §6.15.1: atomic functions take memory_order_relaxed only
    ("atomic_fetch_add_explicit(a, 1u, memory_order_seq_cst);", "memory_order_relaxed only"),
    ("y[i] = atomic_load_explicit(f, memory_order_acquire);", "memory_order_relaxed only"),
    ("float e = 0; atomic_compare_exchange_weak_explicit(f, &e, 1.0f, memory_order_relaxed, memory_order_acq_rel);",
     "memory_order_relaxed only"),
    # §6.15.4: the operations each atomic type has
    ("atomic_fetch_max_explicit(f, 1.0f, memory_order_relaxed);", "atomic_int and atomic_uint only"),
    ("atomic_fetch_or_explicit(t, true, memory_order_relaxed);", "atomic_int and atomic_uint only"),
    ("atomic_fetch_add_explicit(t, true, memory_order_relaxed);", "atomic_fetch_add/sub_explicit exist for"),
    # §6.9.1: a barrier takes mem_flags (no integers, no default)
    ("threadgroup_barrier(2);", "threadgroup_barrier"),
    ("threadgroup_barrier();", "threadgroup_barrier"),
]

# The legal forms next to them: explicit bfloat conversions, bfloat -> float, mixed-precision products, relaxed
# atomics on the types that have them, barriers with flags.
LEGAL = """
    bfloat z = bfloat(2.0f);
    bfloat w = static_cast<bfloat>(y[i]);
    bfloat s = i > 3 ? b[i] : bfloat(0.0f);
    float f32 = b[i] + z;
    half h = half(float(b[i]));
    z += 1;
    b[i] = bfloat(f32 * 0.5f) + w + s;
    y[i] = float(h) + float(z) + exp(b[i]) * 0.0f;
    simdgroup_matrix<half, 8, 8> hm = make_filled_simdgroup_matrix<half, 8, 8>(half(1.0f));
    simdgroup_matrix<float, 8, 8> acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_multiply_accumulate(acc, hm, hm, acc);
    y[i] += acc.thread_elements()[0] - 8.0f;
    atomic_fetch_add_explicit(a, 1u, memory_order_relaxed);
    atomic_fetch_max_explicit(a, 0u, memory_order_relaxed);  // no change: the count stays 32
    atomic_fetch_add_explicit(f, 0.5f, memory_order_relaxed);
    float e = atomic_load_explicit(f, memory_order_relaxed);
    atomic_compare_exchange_weak_explicit(f, &e, e, memory_order_relaxed, memory_order_relaxed);
    atomic_store_explicit(t, true, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup);
    simdgroup_barrier(mem_flags::mem_none);
"""


@pytest.mark.parametrize("stmt,needle", PLANTED, ids=[p[0][:40] for p in PLANTED])
def test_planted_violation_fails_the_strict_check(tmp_path, stmt, needle):
    f = tmp_path / "planted.metal"
    f.write_text(HEAD + KERNEL % stmt)
    r = sim.check_file(str(f))
    assert not r.ok, f"accepted: {stmt}"
    assert needle in r.message and "planted.metal:" in r.message, r.message


def test_legal_forms_pass_and_run(tmp_path):
    f = tmp_path / "legal.metal"
    f.write_text(HEAD + KERNEL % LEGAL)
    r = sim.check_file(str(f))
    assert r.ok, r.message
    import ml_dtypes
    y = np.arange(32, dtype=np.float32)
    b = np.full(32, 1.5, ml_dtypes.bfloat16)
    res = sim.run(f, "k", 1, 32, {0: y, 1: b, 2: np.zeros(1, np.uint32), 3: np.zeros(1, np.float32),
                                  4: np.zeros(1, np.uint8)}, schedules=1)
    assert res.faults == []
    i = np.arange(32)
    w = y.astype(ml_dtypes.bfloat16).astype(np.float64)
    s = np.where(i > 3, 1.5, 0.0)
    want_b = ((1.5 + 2.0) * 0.5 + w + s).astype(ml_dtypes.bfloat16)  # per-operation bf16 rounding is exact here
    np.testing.assert_array_equal(res.buffers[1].astype(np.float64), want_b.astype(np.float64))
    np.testing.assert_array_equal(res.buffers[0], np.float32(1.5) + np.float32(3.0))
    assert res.buffers[2][0] == 32 and res.buffers[3][0] == 16.0 and res.buffers[4][0] == 1


def test_a_planted_violation_is_refused_by_run_too(tmp_path):
    f = tmp_path / "run_planted.metal"
    f.write_text(HEAD + KERNEL % PLANTED[0][0])
    with pytest.raises(sim.SimCompileError, match="bfloat"):
        sim.run(f, "k", 1, 1, {0: np.zeros(1, np.float32), 1: np.zeros(1, np.uint16)}, schedules=1)


def test_project_and_case_kernels_pass_under_the_strict_rules():
    from _paths import ROOT, SIM_CASES
    files = sorted((ROOT / "kernels").glob("*.metal")) + sorted((SIM_CASES / "lang").glob("*.metal"))
    bad = [r for r in sim.check_files([str(p) for p in files]) if not r.ok]
    assert not bad, "\n".join(r.message for r in bad)
