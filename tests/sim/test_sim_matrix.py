"""simdgroup_matrix, half/bfloat conversions and SIMD-group functions of the Metal simulator against NumPy."""

import numpy as np
import pytest
from _paths import SIM_CASES

sim = pytest.importorskip("flash_attn_cy.sim")
ml_dtypes = pytest.importorskip("ml_dtypes")

CASE = SIM_CASES / "simdgroup_products.metal"
DTYPES = {"float": np.float32, "half": np.float16, "bfloat": ml_dtypes.bfloat16}


def _lane_layout(lane):
    # Apple's layout as documented in kernels/README.md (MLX steel BlockMMA uses the same).
    q = lane // 4
    return (q & 4) + (lane // 2) % 4, (q & 2) * 2 + (lane % 2) * 2


@pytest.mark.parametrize("transpose_b", [0, 1])
@pytest.mark.parametrize("name", list(DTYPES))
def test_simdgroup_product_matches_matrix_product(name, transpose_b):
    rng = np.random.default_rng(7)
    dt = DTYPES[name]
    a = rng.standard_normal((16, 16)).astype(dt)
    b = rng.standard_normal((16, 16)).astype(dt)
    c = rng.standard_normal((16, 16)).astype(np.float32)
    b_stored = np.ascontiguousarray(b.T) if transpose_b else b
    res = sim.run(CASE, f"mma16_{name}", 1, 128,
                  {0: a, 1: b_stored, 2: c, 3: np.zeros((16, 16), np.float32)}, {4: np.uint32(transpose_b)},
                  schedules=2)
    assert res.faults == []
    want = a.astype(np.float64) @ b.astype(np.float64) + c
    # inputs are exact in float; only the float accumulation of 16 products rounds
    np.testing.assert_allclose(res.buffers[3], want, rtol=1e-5, atol=1e-5)


def test_thread_elements_follow_apple_lane_layout():
    m = np.arange(64, dtype=np.float32).reshape(8, 8)
    res = sim.run(CASE, "matrix_layout", 1, 32, {0: m, 1: np.zeros(64, np.float32), 2: np.zeros(64, np.float32)},
                  schedules=1)
    assert res.faults == []
    where, stored = res.buffers[1], res.buffers[2].reshape(8, 8)
    for lane in range(32):
        r, c = _lane_layout(lane)
        assert where[2 * lane] == m[r, c] and where[2 * lane + 1] == m[r, c + 1]
        assert stored[r, c] == 1000 * lane and stored[r, c + 1] == 1000 * lane + 1


def test_half_and_bfloat_round_to_nearest_even_and_simd_functions():
    rng = np.random.default_rng(3)
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65519.9, 65520.0, 1e-8, 2.0 ** -24, 3 * 2.0 ** -25, 2.0 ** -25,
                        1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, np.inf, -np.inf, 1 + 2 ** -8, 1 + 3 * 2 ** -8,
                        3.0e38, 1e-40], dtype=np.float32)
    x = np.concatenate([special, (rng.standard_normal(64 - special.size) * 100).astype(np.float32)])
    res = sim.run(CASE, "conversions", 2, 32, {0: x, 1: np.zeros(64, np.float16),
                                               2: np.zeros(64, ml_dtypes.bfloat16), 3: np.zeros(192, np.float32)},
                  schedules=1)
    assert res.faults == []
    with np.errstate(over="ignore"):
        want_half = x.astype(np.float16)
    np.testing.assert_array_equal(res.buffers[1].view(np.uint16), want_half.view(np.uint16))
    np.testing.assert_array_equal(res.buffers[2].view(np.uint16), x.astype(ml_dtypes.bfloat16).view(np.uint16))
    v = x[:32].astype(np.float64)
    s = res.buffers[3]
    assert np.isnan(s[0]) or np.isinf(s[0])  # the specials include +inf and -inf
    lanes = np.arange(32)
    np.testing.assert_array_equal(s[32:64], np.full(32, np.float32(v.max())))
    np.testing.assert_array_equal(s[64:96], x[lanes ^ 5])
    np.testing.assert_array_equal(s[96:128], np.where(lanes + 3 < 32, x[np.minimum(lanes + 3, 31)], x[:32]))
    np.testing.assert_array_equal(s[160:192], np.full(32, x[7]))


def test_simd_sum_and_prefix_on_finite_values():
    x = np.arange(64, dtype=np.float32) * 0.5
    res = sim.run(CASE, "conversions", 2, 32, {0: x, 1: np.zeros(64, np.float16),
                                               2: np.zeros(64, ml_dtypes.bfloat16), 3: np.zeros(192, np.float32)},
                  schedules=1)
    s = res.buffers[3]
    np.testing.assert_array_equal(s[:32], np.full(32, x[:32].sum()))
    np.testing.assert_array_equal(s[128:160], np.concatenate([[0], np.cumsum(x[:31])]))


def test_atomics_across_threads_and_threadgroups():
    res = sim.run(CASE, "atomics", 6, 64, {0: np.zeros(2, np.uint32), 1: np.zeros(1, np.float32)}, schedules=2,
                  host_threads=2)
    assert res.faults == []
    assert list(res.buffers[0]) == [6 * 64, 6 * 64 - 1]
    assert res.buffers[1][0] == 6 * 64


def test_swizzles_read_write_and_compound_assignment():
    v = np.arange(12, dtype=np.float32).reshape(3, 4)
    res = sim.run(CASE, "swizzles", 1, 3, {0: v, 1: np.zeros((3, 2), np.float32)}, schedules=1)
    assert res.faults == []
    a = v.copy()
    b = a[:, :2] + a[:, 2:] * 2
    a[:, :2] = b
    a[:, 2:] += [1, 2]
    np.testing.assert_array_equal(res.buffers[0], a[:, ::-1])
    np.testing.assert_array_equal(res.buffers[1], np.stack([a[:, 2], a[:, :3].sum(1)], 1) + b[:, ::-1])


def test_diagonal_constructor():
    m = np.arange(64, dtype=np.float32).reshape(8, 8)
    res = sim.run(CASE, "diagonal", 1, 32, {0: m, 1: np.zeros((8, 8), np.float32)}, schedules=1)
    assert res.faults == []
    np.testing.assert_array_equal(res.buffers[1], 2 * m)


def test_threadgroup_memory_in_templated_helper():
    x = np.arange(128, dtype=np.float32)
    res = sim.run(CASE, "helper_tile", 2, 64, {0: x}, schedules=3)
    assert res.faults == []
    want = np.concatenate([x[:64][::-1], x[64:][::-1]]) + np.tile(np.arange(64)[::-1], 2)
    np.testing.assert_array_equal(res.buffers[0], want)
