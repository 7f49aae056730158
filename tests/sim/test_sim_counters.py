"""Work counters of the Metal simulator (flash_attn_cy.sim.profile, `sim profile`): exact on small kernels counted by
hand (tests/sim/sim_cases/counters.metal), and on the project's forward kernel equal to what its tile plan implies."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

sim = pytest.importorskip("flash_attn_cy.sim")

from flash_attn_cy import _core, flash_attn_func  # noqa: E402
from flash_attn_cy.sim import chips  # noqa: E402
from flash_attn_cy.sim import __main__ as sim_cli  # noqa: E402
from _metal_support import describe_forward  # noqa: E402
from _paths import SIM_CASES  # noqa: E402

CASE = SIM_CASES / "counters.metal"


def profiled(kernel, grid, threadgroup, buffers, bytes_=None, schedules=1):
    with sim.profile() as p:
        res = sim.run(CASE, kernel, grid, threadgroup, buffers, bytes_, schedules=schedules)
    assert res.faults == []
    assert len(p.dispatches) == 1
    d = p.dispatches[0]
    assert d["kernel"] == kernel and d["counted"]
    return d, res


def test_device_memory_per_buffer_exact():
    n, groups, tg = 100, 4, 32  # 128 threads, 100 of them in range
    d, res = profiled("copy_scale", groups, tg, {0: np.arange(n, dtype=np.float32), 1: np.zeros(n, np.float32)},
                      {2: np.uint32(n), 3: np.float32(2.0)})
    np.testing.assert_array_equal(res.buffers[1], 2 * np.arange(n, dtype=np.float32))
    assert d["buffers"][0] == {"kind": "buffer", "bytes_read": 4 * n, "bytes_written": 0, "loads": n, "stores": 0,
                               "atomics": 0}
    assert d["buffers"][1] == {"kind": "buffer", "bytes_read": 0, "bytes_written": 4 * n, "loads": 0, "stores": n,
                               "atomics": 0}
    assert (d["device_bytes_read"], d["device_bytes_written"]) == (4 * n, 4 * n)
    assert (d["device_load_ops"], d["device_store_ops"], d["device_atomic_ops"]) == (n, n, 0)
    # setBytes data is constant memory, not device traffic: `n` is read by every thread, `scale` by those in range
    assert d["buffers"][2]["kind"] == "bytes" and d["buffers"][2]["loads"] == groups * tg
    assert d["buffers"][3]["loads"] == n
    assert d["constant_bytes_read"] == 4 * (groups * tg + n)
    assert d["grid"] == (groups, 1, 1) and d["threadgroup"] == (tg, 1, 1)
    assert d["threadgroups"] == groups and d["threads_per_threadgroup"] == tg
    for key in ("threadgroup_bytes_read", "threadgroup_bytes_written", "simdgroup_mma", "threadgroup_barriers",
                "simdgroup_barriers", "threadgroup_memory_bytes"):
        assert d[key] == 0, key
    assert d["flops"]["total"] == 0  # `x * scale` is scalar float arithmetic: not seen (documented)


def test_threadgroup_memory_and_barriers_exact():
    groups = 3
    x = np.arange(64 * groups, dtype=np.float32)
    d, res = profiled("tg_exchange", groups, 64, {0: x, 1: np.zeros_like(x)})
    want = x.reshape(groups, 64)[:, ::-1].copy()
    want[:, :32] += want[:, 31::-1]
    np.testing.assert_array_equal(res.buffers[1], want.ravel())
    assert d["threadgroup_memory_bytes"] == 64 * 4 + 32 * 2
    assert (d["threadgroup_store_ops"], d["threadgroup_bytes_written"]) == (96 * groups, 320 * groups)
    assert (d["threadgroup_load_ops"], d["threadgroup_bytes_read"]) == (96 * groups, 320 * groups)
    assert d["threadgroup_barriers"] == 2 * groups  # once per threadgroup per barrier
    assert d["simdgroup_barriers"] == 2 * groups  # once per SIMD group per barrier
    assert d["simdgroup_collectives"] == 0
    assert (d["device_load_ops"], d["device_store_ops"]) == (64 * groups, 64 * groups)


@pytest.mark.parametrize("kernel,dtype,kind", [("mma_f32", np.float32, "mma_fp32"), ("mma_f16", np.float16, "mma_fp16")])
def test_simdgroup_matrix_products_exact(kernel, dtype, kind):
    groups = 2
    rng = np.random.default_rng(3)
    a = rng.standard_normal((groups, 8, 16)).astype(dtype)
    b = rng.standard_normal((groups, 16, 8)).astype(dtype)
    d, res = profiled(kernel, groups, 32, {0: a, 1: b, 2: np.zeros((groups, 8, 8), np.float32)})
    np.testing.assert_allclose(res.buffers[2], np.einsum("gik,gkj->gij", a.astype(np.float64), b), rtol=1e-5,
                               atol=1e-5)
    assert d["simdgroup_mma"] == 2 * groups  # K = 16: two 8x8x8 multiply-accumulates per SIMD group
    assert d["flops"][kind] == d["flops"]["mma"] == 2 * groups * 2 * 8 * 8 * 8
    elem = np.dtype(dtype).itemsize
    # 4 simdgroup_loads per threadgroup: 32 lanes x 2 elements each; one simdgroup_store of 64 floats
    assert d["buffers"][0]["loads"] == d["buffers"][1]["loads"] == 2 * 64 * groups
    assert d["buffers"][0]["bytes_read"] == 2 * 64 * elem * groups
    assert (d["buffers"][2]["stores"], d["buffers"][2]["bytes_written"]) == (64 * groups, 256 * groups)


def test_flops_by_type():
    n = 64
    d, res = profiled("flops", 2, 32, {0: np.full(n, 0.5, np.float16), 1: np.ones((n, 4), np.float32),
                                       2: np.zeros(n, np.float32)})
    y = 0.5 * 0.5 + 0.5
    s = 4 * 2.0
    np.testing.assert_allclose(res.buffers[2], math.exp(y) + s * s + s + s, rtol=1e-6)
    f = d["flops"]
    assert (f["fp16"], f["fp32"], f["transcendental"], f["bf16"], f["mma"]) == (2 * n, 18 * n, n, 0, 0)
    assert f["total"] == 21 * n
    # the float4 load is one 16-byte access; half and float scalars are 2 and 4 bytes
    assert (d["buffers"][1]["loads"], d["buffers"][1]["bytes_read"]) == (n, 16 * n)
    assert (d["buffers"][0]["loads"], d["buffers"][0]["bytes_read"]) == (n, 2 * n)


def test_atomics_count_once_per_operation():
    groups, tg = 3, 96
    d, res = profiled("count_threads", groups, tg, {0: np.zeros(1, np.uint32)})
    assert res.buffers[0][0] == groups * tg
    assert d["device_atomic_ops"] == groups  # a fetch_add is one atomic even though the simulator loops on a CAS
    assert d["buffers"][0]["bytes_read"] == d["buffers"][0]["bytes_written"] == 4 * groups
    assert d["device_load_ops"] == d["device_store_ops"] == 0
    assert d["threadgroup_atomic_ops"] == groups * (tg + 2)
    assert d["threadgroup_bytes_read"] == d["threadgroup_bytes_written"] == groups * 4 * (tg + 1)
    assert d["threadgroup_memory_bytes"] == 4


def test_thread_private_bytes_follow_private_arrays():
    idx = np.arange(128, dtype=np.uint32)
    small, _ = profiled("private_64", 1, 32, {0: idx, 1: np.zeros(32, np.float32)})
    large, _ = profiled("private_512", 1, 32, {0: idx, 1: np.zeros(32, np.float32)})
    assert small["thread_private_bytes"] >= 64 * 4
    grow = large["thread_private_bytes"] - small["thread_private_bytes"]
    assert (512 - 64) * 4 <= grow <= (512 - 64) * 4 + 256  # the array, plus at most a little alignment and spills


def test_only_the_forward_run_is_counted_and_nothing_outside_a_profile():
    x = np.arange(192, dtype=np.float32)
    one, _ = profiled("tg_exchange", 3, 64, {0: x, 1: np.zeros_like(x)}, schedules=1)
    many, _ = profiled("tg_exchange", 3, 64, {0: x, 1: np.zeros_like(x)}, schedules=4)
    strip = lambda d: {k: v for k, v in d.items() if k != "faults"}  # noqa: E731
    assert strip(one) == strip(many)
    with sim.profile() as p:
        pass
    sim.run(CASE, "tg_exchange", 3, 64, {0: x, 1: np.zeros_like(x)}, schedules=1)
    assert p.dispatches == []


def test_nested_profiles_both_record():
    x = np.arange(64, dtype=np.float32)
    with sim.profile() as outer:
        with sim.profile() as inner:
            sim.run(CASE, "tg_exchange", 1, 64, {0: x, 1: np.zeros_like(x)}, schedules=1)
        sim.run(CASE, "tg_exchange", 1, 64, {0: x, 1: np.zeros_like(x)}, schedules=1)
    assert len(inner.dispatches) == 1 and len(outer.dispatches) == 2


@pytest.mark.parametrize("causal", [False, True])
def test_forward_kernel_matches_its_tile_plan(causal):
    """The project's forward kernel through backend="sim": K and V are read once per visited key tile (the plan's
    count), Q once, out and the LSE written once; simdgroup_matrix products follow the tiles visited."""
    rng = np.random.default_rng(5)
    b, n, h, dim = 1, 96, 2, 64
    q, k, v = (rng.standard_normal((b, n, h, dim)).astype(np.float16) for _ in range(3))
    plain = flash_attn_func(q, k, v, causal=causal, backend="sim")
    _core.clear_plans()  # the general path (a call run from a stored plan skips the LSE nobody asked for)
    with sim.profile() as p:
        out = flash_attn_func(q, k, v, causal=causal, backend="sim")
    np.testing.assert_array_equal(out, plain)  # the profile build computes the same bits
    (d,) = p.dispatches
    info = describe_forward(q, k, v, lse_shape=(b, h, n), window_left=-1, window_right=0 if causal else -1)
    att = next(l for l in info["launches"] if l["kernel"] == d["kernel"])["attention"]
    assert d["kernel"] == "fa_fwd_f16_d64" and n % att["bk"] == 0
    tiles = att["key_tiles_visited"]  # (query tile, head, key tile) triples, over the batch
    kv_bytes = tiles * att["bk"] * dim * 2
    assert d["buffers"][1]["bytes_read"] == kv_bytes and d["buffers"][2]["bytes_read"] == kv_bytes
    assert d["buffers"][1]["loads"] == tiles * att["bk"] * dim  # one 2-byte load per element
    assert d["buffers"][0]["bytes_read"] == q.nbytes
    assert d["buffers"][3]["bytes_written"] == q.nbytes
    assert d["buffers"][4]["bytes_written"] == b * h * n * 4
    assert d["device_bytes_read"] == 2 * kv_bytes + q.nbytes
    # per visited tile, each of the 4 SIMD groups: S = Q K^T and O += P V, (d / 8) x (bk / 8) products each
    assert d["simdgroup_mma"] == tiles * att["simdgroups"] * 2 * (dim // 8) * (att["bk"] // 8)
    assert d["flops"]["mma_fp32"] == d["simdgroup_mma"] * 1024  # P is float: float x half -> fp32 rate
    assert d["threadgroup_barriers"] == 2 * tiles
    assert d["threadgroup_memory_bytes"] == 2 * att["bk"] * (dim + 8) * 2
    assert d["flops"]["transcendental"] > 0 and d["thread_private_bytes"] > 0
    useful = sim.attention_flops(b, h, n, n, dim, causal=causal)
    assert d["useful_flops"] == useful
    r = p.roofline("M2 Max")
    assert r.useful_flops == useful and r.mma_flops == d["flops"]["mma"]
    assert r.useful_fraction == pytest.approx(useful / d["flops"]["mma"])
    if not causal:
        assert r.useful_fraction == 1.0  # no mask and whole tiles: every product is useful
    else:
        assert 0.5 < r.useful_fraction < 1.0  # diagonal tiles compute masked products too


def test_profile_is_off_after_the_block():
    q = np.ones((1, 8, 1, 64), np.float32)
    with sim.profile() as p:
        pass
    flash_attn_func(q, q, q, backend="sim")
    assert p.dispatches == []


def test_attention_flops_masks():
    assert sim.attention_flops(2, 3, 5, 7, 16) == 2 * 3 * 5 * 7 * 4 * 16
    # causal, bottom-right aligned: query i sees keys 0 .. i + (7 - 5)
    assert sim.attention_flops(1, 1, 5, 7, 16, causal=True) == sum(i + 3 for i in range(5)) * 64
    assert sim.attention_flops(1, 1, 4, 4, 8, window_size=(1, 0)) == (1 + 2 + 2 + 2) * 32
    assert sim.attention_flops(1, 1, 4, 4, 8, backward=True) == 16 * 80
    with pytest.raises(ValueError, match="seqlen_q must be an int >= 0"):
        sim.attention_flops(1, 1, -4, 4, 8)
    with pytest.raises(ValueError, match="window_size"):
        sim.attention_flops(1, 1, 4, 4, 8, window_size=(-2, 0))
    with pytest.raises(ValueError, match="useful_flops must be a finite number"):
        sim.profile().roofline("M1", useful_flops=-1.0)
    with pytest.raises(TypeError, match="chip must be a str"):
        sim.profile().roofline(4)


def test_chip_table():
    names = chips.chip_names()
    for gen in ("M1", "M2", "M3", "M4", "M5"):
        assert gen in names and f"{gen} Pro" in names and f"{gen} Max" in names
    for gen in ("M1", "M2", "M3"):
        assert f"{gen} Ultra" in names
    for c in chips.CHIPS.values():
        assert c.gpu_cores > 0 and c.bandwidth_gbs > 0 and c.fp16_tflops >= c.fp32_tflops > 0
        if c.fp32_source == "derived":  # cores x 128 ALUs x 2 x clock, at a plausible GPU clock
            clock = c.fp32_tflops * 1e3 / (c.gpu_cores * 256)
            assert 1.2 < clock < 1.9, c
    assert chips.chip("m4-max") is chips.chip("M4 Max") is chips.chip("M4_MAX")
    assert chips.CHIPS["M1"].fp32_tflops == 2.6 and chips.CHIPS["M4 Max"].bandwidth_gbs == 546
    with pytest.raises(ValueError, match="unknown Apple GPU 'M9'.*M1, M1 Pro"):
        chips.chip("M9")


def _dispatch(mma=0, fp32=0, fp16=0, read=0, written=0):
    flops = {"mma_fp32": mma, "mma_fp16": 0, "mma_bf16": 0, "fp32": fp32, "fp16": fp16, "bf16": 0,
             "transcendental": 0}
    flops["mma"] = mma
    flops["total"] = mma + fp32 + fp16
    return {"kernel": "k", "flops": flops, "device_bytes_read": read, "device_bytes_written": written}


def test_roofline_picks_the_larger_bound():
    c = chips.chip("M1 Max")  # 10.4 TFLOP/s, 400 GB/s
    compute = sim.Roofline.of([_dispatch(mma=10.4e12)], c, None)
    assert compute.bound == "compute" and compute.seconds == pytest.approx(1.0)
    memory = sim.Roofline.of([_dispatch(fp32=1e9, read=300e9, written=100e9)], c, 2e9)
    assert memory.bound == "memory" and memory.seconds == pytest.approx(1.0)
    assert memory.useful_fraction is None  # no simdgroup_matrix flops to compare with
    both = sim.Roofline.of([_dispatch(mma=10.4e12), _dispatch(read=800e9)], c, 5.2e12)
    assert both.total.compute_s == pytest.approx(1.0) and both.total.memory_s == pytest.approx(2.0)
    assert both.bound == "memory" and [r.bound for r in both.rows] == ["compute", "memory"]
    assert both.useful_fraction == pytest.approx(0.5)
    text = str(both)
    assert "M1 Max" in text and "memory" in text and "0.500" in text


def test_cli_profile_json_and_chip(capsys, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.arange(64, dtype=np.float32))
    args = ["profile", str(CASE), "--kernel", "tg_exchange", "--grid", "1", "--threadgroup", "64", "--buffer",
            f"0={x}", "--buffer", "1=zeros:float32:64", "--schedules", "1"]
    assert sim_cli.main(args + ["--json", "--chip", "M3 Pro"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (d,) = doc["dispatches"]
    assert d["threadgroup_barriers"] == 2 and d["buffers"]["0"]["bytes_read"] == 256
    assert doc["roofline"]["chip"]["name"] == "M3 Pro" and doc["roofline"]["total"]["bound"] == "memory"
    assert sim_cli.main(args + ["--chip", "M4", "--useful-flops", "0"]) == 0
    text = capsys.readouterr().out
    assert "tg_exchange" in text and "2 threadgroup" in text and "roofline on M4" in text
    assert sim_cli.main(args + ["--chip", "M7 Turbo"]) == 2
    assert "unknown Apple GPU" in capsys.readouterr().err
