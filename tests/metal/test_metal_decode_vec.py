"""The vector decode kernels (kernels/fa_decode_vec.h: fa_vec1_* for one row, fa_vec4_* for 2..4) in the simulator against the float64
reference, under several thread schedules (reverse and seeded random orders: races in its threadgroup combine, reads
of uninitialised threadgroup memory and divergent barriers become faults, and out-of-bounds reads fault on the guard
pages right after each buffer's last element).

Every case first asserts that the plan really picks the vector kernel (at most 4 packed rows per head block), then
checks the output with the project's tolerance rule and the LSE. Covered: every dtype x head-dim specialization, odd
head dims (zero padded columns), GQA groups of 2 and 4 sharing K/V loads, MQA, causal with rows that see no key,
sliding windows, ALiBi, softcap, dropout (the shared Philox mask), seqused_k, varlen, split-KV (auto and explicit,
including splits that see no key) and K/V layouts that are not vector aligned (the scalar load path). The KV-cache
layouts (paged, cache_batch_idx, leftpad) reach the same kernel through tests/kvcache/test_metal_kvcache.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flash_attn_cy.reference import attention_ref
from test_metal_forward import check_dense
from _metal_support import check_varlen_causal, describe_forward, lse_close, np_dtype, rand, require_sim, sim_forward
from _tolerance import assert_close_to_ref
from _sim_math import sim_math  # noqa: E402,F401  (every test: IEEE and fast math)

pytestmark = pytest.mark.usefixtures("sim_math")

SCHEDULES = 4  # forward, reverse and two seeded random thread orders


@pytest.fixture(autouse=True)
def _need_sim():
    require_sim()


def _plan_info(b, sq, sk, hq, hkv, d, dtype, **opts):
    q = np.zeros((b, sq, hq, d), np_dtype(dtype))
    k = np.zeros((b, sk, hkv, d), np_dtype(dtype))
    plan = describe_forward(q, k, k, lse_shape=(b, hq, sq), **opts)
    return plan["launches"][0]["attention"]


def check_vec(rng, dtype, *, b=2, sq=1, sk=77, hq=4, hkv=1, d=64, num_splits=0, **kw):
    plan_opts = {"num_splits": num_splits}
    info = _plan_info(b, sq, sk, hq, hkv, d, dtype, **plan_opts)
    assert info["kind"] == "vector", info
    out, lse = check_dense(rng, dtype, b=b, sq=sq, sk=sk, hq=hq, hkv=hkv, d=d, num_splits=num_splits,
                           schedules=SCHEDULES, **kw)
    return info, out, lse


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("rows", [1, 4])
def test_every_specialization(dtype, d, rows, rng):
    # rows 4 = GQA 4: the 4 heads of the group are the 4 rows of one threadgroup (fa_vec4_*); rows 1: fa_vec1_*
    info, _, _ = check_vec(rng, dtype, d=d, hq=4, hkv=4 // rows, sk=77, causal=(d % 128 == 0))
    assert info["pack"] == rows and info["bq"] == rows and info["kv_vector_loads"]


@pytest.mark.parametrize("d", [1, 33, 100, 126, 130, 200])
def test_odd_head_dims(d, rng):
    # 33 and 126 are not multiples of the vector width: scalar loads; 100, 200: vector loads with zero chunks
    check_vec(rng, "fp16", d=d, hq=2, hkv=2)


@pytest.mark.parametrize("hq,hkv,sq", [(1, 1, 1), (8, 8, 1), (8, 4, 2), (4, 1, 1), (3, 3, 4), (2, 1, 2)])
def test_rows_and_groups(hq, hkv, sq, rng):
    check_vec(rng, "fp16", hq=hq, hkv=hkv, sq=sq, sk=140, causal=True)


@pytest.mark.parametrize("sq,sk", [(4, 2), (3, 3), (1, 1), (2, 70)])
def test_causal_bottom_right_and_rows_without_keys(sq, sk, rng):
    _, out, lse = check_vec(rng, "bf16", sq=sq, sk=sk, hq=1, hkv=1, causal=True)
    if sq > sk:  # the first sq - sk rows see no key: zeros and LSE = +inf
        assert not out[:, : sq - sk].astype(np.float32).any()
        assert np.isposinf(lse[:, :, : sq - sk]).all()


@pytest.mark.parametrize("window", [(5, 3), (0, 0), (8, -1), (-1, 2), (40, 0)])
def test_sliding_window(window, rng):
    check_vec(rng, "fp32", sq=3, sk=90, hq=2, hkv=2, window=window)


@pytest.mark.parametrize("alibi,causal", [("h", False), ("bh", True)])
def test_alibi(alibi, causal, rng):
    check_vec(rng, "fp16", sq=2, sk=61, hq=4, hkv=2, alibi=alibi, causal=causal)


@pytest.mark.parametrize("alibi", [None, "h"])
def test_softcap(alibi, rng):
    check_vec(rng, "fp32", softcap=4.0, alibi=alibi, scale=0.5, hq=2, hkv=1)


def test_dropout_uses_the_shared_philox_mask(rng):
    check_vec(rng, "fp32", sq=2, sk=75, hq=2, hkv=1, dropout_p=0.3, causal=True)


def test_seqused_k(rng):
    check_vec(rng, "fp16", sq=1, sk=90, hq=4, hkv=2, seqused=[41, 3], causal=True)


@pytest.mark.parametrize("num_splits", [0, 1, 3, 7])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_split_kv(num_splits, dtype, rng):
    """One token against 1000 keys: auto (0) splits because 2 threadgroups cannot fill a GPU; the partials are
    merged by LSE (fa_merge)."""
    info, _, _ = check_vec(rng, dtype, b=1, sq=1, sk=1000, hq=2, hkv=2, d=128, num_splits=num_splits)
    if num_splits == 0:
        assert 1 < info["num_splits"] <= 1024 // 256  # whole 32-key blocks, at least 256 keys per split
    else:
        assert info["num_splits"] == num_splits


def test_split_with_window_and_empty_splits(rng):
    # most splits see no key of the window: their partials (LSE = FA_MASKED) must not disturb the merge
    check_vec(rng, "fp16", b=1, sq=2, sk=700, hq=2, hkv=2, window=(20, 0), num_splits=8)


def test_split_rows_without_keys(rng):
    # every split of the first rows is empty: merged output zero and LSE +inf
    _, out, lse = check_vec(rng, "fp32", b=1, sq=4, sk=2, hq=1, hkv=1, causal=True, num_splits=2)
    assert np.isposinf(lse[:, :, :2]).all() and not out[:, :2].any()


@pytest.mark.parametrize("num_splits", [0, 2])
def test_varlen(num_splits, rng):
    check_varlen_causal(rng, [1, 0, 2, 1], [20, 7, 300, 50], hq=4, hkv=2, d=64, num_splits=num_splits, kind="vector",
                        schedules=SCHEDULES)


@pytest.mark.parametrize("layout", ["wide_rows", "shifted_base", "aligned"])
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_kv_layouts_vector_and_scalar_loads(layout, dtype, rng):
    """K/V views whose rows or base are not multiples of the vector width take the scalar path (the plan clears
    FA_FLAG_KV_ALIGNED); aligned views take the vector path. Both against the reference, with the views ending
    exactly at the guard page (a read past the last column of the last row would fault)."""
    b, sk, hkv, hq, d = 2, 50, 2, 4, 128
    q = rand(rng, (b, 1, hq, d), dtype)
    if layout == "wide_rows":
        k = rand(rng, (b, sk, hkv, d + 2), dtype)[..., :d]
        v = rand(rng, (b, sk, hkv, d + 2), dtype)[..., 2:]
    elif layout == "shifted_base":
        n = b * sk * hkv * d
        k = rand(rng, (n + 1,), dtype)[1:].reshape(b, sk, hkv, d)
        v = rand(rng, (n + 3,), dtype)[3:].reshape(b, sk, hkv, d)
    else:
        k, v = rand(rng, (b, sk, hkv, d), dtype), rand(rng, (b, sk, hkv, d), dtype)
    scale = d ** -0.5
    att = describe_forward(q, k, v, lse_shape=(b, hq, 1), softmax_scale=scale)["launches"][0]["attention"]
    assert att["kind"] == "vector" and att["kv_vector_loads"] == (layout == "aligned")
    out, lse = sim_forward(q, k, v, lse_shape=(b, hq, 1), schedules=SCHEDULES, softmax_scale=scale)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, softmax_scale=scale)
    assert_close_to_ref(out, ref64, attention_ref(q, k, v, softmax_scale=scale, compute_dtype=np_dtype(dtype)))
    lse_close(lse, lse64, atol=2e-5 * max(1.0, float(np.max(np.abs(lse64)))))


def test_vector_and_fragment_kernels_agree(rng):
    """The same decode through both decode kernels: 4 heads of one group (vector, one threadgroup) and the same
    heads plus 4 more of the group (fragment, 8 rows): the first 4 heads' outputs must agree within rounding."""
    d, sk = 64, 200
    q8 = rand(rng, (1, 1, 8, d), "fp32")
    k = rand(rng, (1, sk, 1, d), "fp32")
    v = rand(rng, (1, sk, 1, d), "fp32")
    kinds = []
    outs = []
    for q in (q8[:, :, :4].copy(), q8):
        kinds.append(describe_forward(q, k, v, lse_shape=(1, q.shape[2], 1))["launches"][0]["attention"]["kind"])
        outs.append(sim_forward(q, k, v, lse_shape=(1, q.shape[2], 1), schedules=2)[0])
    assert kinds == ["vector", "fragment"]
    assert np.max(np.abs(outs[0] - outs[1][:, :, :4])) < 1e-6 * math.sqrt(sk)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_cache_row_with_no_keys(num_splits, rng):
    """seqused_k = 0 (an empty cache row): zeros and LSE +inf, with and without the split/merge path; the other
    sequence against the reference."""
    q = rand(rng, (2, 1, 4, 64), "fp16")
    k, v = rand(rng, (2, 10, 4, 64), "fp16"), rand(rng, (2, 10, 4, 64), "fp16")
    used = np.array([0, 3], np.int32)
    opts = dict(seqused_k=used, num_splits=num_splits)
    assert describe_forward(q, k, v, lse_shape=(2, 4, 1), **opts)["launches"][0]["kernel"] == "fa_vec1_f16_d64"
    out, lse = sim_forward(q, k, v, lse_shape=(2, 4, 1), schedules=SCHEDULES, **opts)
    assert not out[0].astype(np.float32).any() and np.isposinf(lse[0]).all()
    ref64, lse64 = attention_ref(q[1:], k[1:, :3], v[1:, :3], return_lse=True)
    assert_close_to_ref(out[1:], ref64, attention_ref(q[1:], k[1:, :3], v[1:, :3], compute_dtype=np.float16))
    lse_close(lse[1:], lse64, atol=1e-5)
