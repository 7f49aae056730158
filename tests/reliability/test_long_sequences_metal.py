"""Issue 17 item 8 on the Metal kernels (run by the simulator): no attention work item makes more than
kMaxAccumulatorAddsPerSplit = 512 fp32 additions, i.e. 4096 keys in vector decode and 512 x BK in the tiled kernels
(csrc/plan/fa_plan_forward.cpp forces split-KV), and the merge of thousands of splits
(kernels/fa_merge.h, pairwise sums) stays accurate.

Plans are described without allocating: Metal device tensors with fake MTLBuffer handles (the description never
touches them), so 2^31 - 1 keys cost nothing."""
from __future__ import annotations

import math

import numpy as np
import pytest

MAX_ADDS_PER_SPLIT = 512  # kMaxAccumulatorAddsPerSplit in csrc/plan/fa_plan_forward.cpp
MAX_KEYS_PER_SPLIT = 4096  # = MAX_ADDS_PER_SPLIT x 8: the vector kernel adds one term per 8 keys, the others per BK
ENV = "FLASH_ATTN_CY_TEST_MAX_KEYS_PER_SPLIT"


def _dense(handle, shape, elem_bytes):
    from flash_attn_cy import _core
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return _core.DeviceTensor(handle, 0, acc * elem_bytes, tuple(shape), tuple(reversed(strides)))


def _describe_metal(sq, sk, *, hq=2, hkv=2, d=64, batch=1, **options):
    from flash_attn_cy import _core
    q = _dense(0x7000_0000, (batch, sq, hq, d), 2)
    k = _dense(0x7100_0000, (batch, sk, hkv, d), 2)
    v = _dense(0x7200_0000, (batch, sk, hkv, d), 2)
    out = _dense(0x7300_0000, (batch, sq, hq, d), 2)
    lse = _dense(0x7400_0000, (batch, hq, sq), 4)
    return _core.describe_plan("forward", "metal", "float16", q, k, v, out, lse, softmax_scale=0.125, **options)


def _attention(plan):
    (att,) = [l for l in plan["launches"] if l["kernel"].startswith(("fa_fwd_", "fa_dec_", "fa_vec"))]
    return att


def _max_keys(info):
    """Most keys a split of this attention launch may take: 512 accumulator additions of its kernel."""
    return MAX_ADDS_PER_SPLIT * (8 if info["kind"] == "vector" else info["bk"])


def _keys_per_split(sk, bk, splits):
    """The most keys one split visits, with the kernel's partition (fa_tg_keys_of): whole BK-key blocks,
    ceil(blocks / splits) of them per split."""
    blocks = -(-sk // bk)
    return min(sk, -(-blocks // splits) * bk)


@pytest.mark.parametrize("sk", [2**24, 2**28, 2**31 - 1])
@pytest.mark.parametrize("sq,hq,hkv,kind", [(1, 2, 2, "vector"), (1, 16, 2, "fragment"), (40, 2, 2, "prefill")])
@pytest.mark.parametrize("num_splits", [0, 1, 3])
def test_every_split_has_at_most_max_keys(sk, sq, hq, hkv, kind, num_splits):
    plan = _describe_metal(sq, sk, hq=hq, hkv=hkv, num_splits=num_splits)
    att = _attention(plan)
    info = att["attention"]
    assert info["kind"] == kind
    splits = info["num_splits"]
    assert MAX_KEYS_PER_SPLIT <= _max_keys(info) <= 4 * MAX_KEYS_PER_SPLIT
    assert splits >= math.ceil(sk / _max_keys(info))  # raised above a forced num_splits and the scratch cap
    assert _keys_per_split(sk, info["bk"], splits) <= _max_keys(info)
    assert att["grid"][2] == splits  # batch 1
    merges = [l for l in plan["launches"] if l["kernel"].startswith("fa_merge_")]
    assert len(merges) == 1 and plan["scratch_bytes"][1] == splits * hq * sq * 4


@pytest.mark.parametrize("columns", [2**12, 2**15 - 1])
@pytest.mark.parametrize("sq", [1, 4, 40])
def test_kvcache_attention_splits_by_cache_capacity(columns, sq):
    """The KV-cache attention (a forward over a paged cache with seqused_k): the keys a split may visit are bounded by
    the cache capacity (page size x block_table columns, up to 2^31 - 2^16 keys here), not by the used length, which
    the plan cannot read (it lives on the GPU)."""
    from flash_attn_cy import _core
    page, hq, hkv, d = 2**16, 4, 2, 128
    sk = page * columns
    q = _dense(0x7000_0000, (1, sq, hq, d), 2)
    k = _dense(0x7100_0000, (columns, page, hkv, d), 2)
    v = _dense(0x7200_0000, (columns, page, hkv, d), 2)
    out = _dense(0x7300_0000, (1, sq, hq, d), 2)
    table = np.arange(columns, dtype=np.int32).reshape(1, columns)
    plan = _core.describe_plan("forward", "metal", "float16", q, k, v, out, None, softmax_scale=0.1,
                               block_table=table, seqused_k=np.array([sk - 3], np.int32), num_splits=1)
    info = _attention(plan)["attention"]
    assert info["num_splits"] >= math.ceil(sk / _max_keys(info))
    assert _keys_per_split(sk, info["bk"], info["num_splits"]) <= _max_keys(info)
    assert [l["kernel"] for l in plan["launches"]][-1] == "fa_merge_f16"


def test_short_key_ranges_keep_their_split_choice():
    """Vector decode: up to 4096 keys num_splits=1 still means one split (no merge launch), one more key makes two.
    The prefill kernel at d64 / float16 (BK = 32) takes up to 512 x 32 keys in one split."""
    plan = _describe_metal(1, MAX_KEYS_PER_SPLIT, num_splits=1)
    assert _attention(plan)["attention"]["num_splits"] == 1 and plan["nlaunches"] == 1
    plan = _describe_metal(1, MAX_KEYS_PER_SPLIT + 1, num_splits=1)
    assert _attention(plan)["attention"]["num_splits"] == 2 and plan["nlaunches"] == 2
    for sk, splits in ((16384, 1), (16385, 2)):
        info = _attention(_describe_metal(40, sk, num_splits=1))["attention"]
        assert (info["kind"], info["bk"], info["num_splits"]) == ("prefill", 32, splits)


def _need_sim():
    from _metal_support import require_sim
    require_sim()


@pytest.mark.parametrize("sq", [1, 4, 40])  # vector, fragment and prefill kernels (2 heads per KV head)
def test_forced_splits_are_correct_in_the_simulator(sq, monkeypatch):
    """With the test-only override of kMaxKeysPerSplit (256 keys), 1024 keys are split into 4 although num_splits=1
    asks for none; the merged result meets the float32 tolerance against the float64 reference."""
    from _tolerance import assert_close_to_ref
    from flash_attn_cy.reference import attention_ref
    from _metal_support import describe_forward, lse_close, sim_forward
    _need_sim()
    monkeypatch.setenv(ENV, "256")
    rng = np.random.default_rng(17)
    b, sk, hq, hkv, d = 1, 1024, 2, 1, 64
    q = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
    k = rng.standard_normal((b, sk, hkv, d)).astype(np.float32)
    v = rng.standard_normal((b, sk, hkv, d)).astype(np.float32)
    plan = describe_forward(q, k, v, lse_shape=(b, hq, sq), num_splits=1)
    assert _attention(plan)["attention"]["num_splits"] == 4
    out, lse = sim_forward(q, k, v, lse_shape=(b, hq, sq), num_splits=1, schedules=1)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True)
    assert_close_to_ref(out, ref64, attention_ref(q, k, v, compute_dtype=np.float32))
    lse_close(lse, lse64, atol=2e-5 * max(1.0, float(np.max(np.abs(lse64)))))


def test_merge_of_thousands_of_splits_is_accurate(monkeypatch):
    """2048 splits of 32 identical keys each (override: 32 keys per split): every split's partial is the same V row,
    so the exact output is that row and the exact LSE is log(65536) + the score. A running fp32 sum over the splits
    is off by ~2e-5 here (n * eps growth, 5x the float32 floor); the pairwise merge stays at a few ulps."""
    from _tolerance import assert_close_to_ref
    from _metal_support import lse_close, sim_forward
    _need_sim()
    monkeypatch.setenv(ENV, "32")
    rng = np.random.default_rng(3)
    b, sq, sk, h, d = 1, 1, 2048 * 32, 1, 64
    q = rng.standard_normal((b, sq, h, d)).astype(np.float32)
    krow = rng.standard_normal(d).astype(np.float32)
    vrow = rng.standard_normal(d).astype(np.float32)
    k = np.broadcast_to(krow, (b, sk, h, d)).copy()
    v = np.broadcast_to(vrow, (b, sk, h, d)).copy()
    out, lse = sim_forward(q, k, v, lse_shape=(b, h, sq), softmax_scale=0.125, num_splits=1, schedules=1)
    exact = np.broadcast_to(vrow.astype(np.float64), out.shape)
    assert_close_to_ref(out, exact, exact.astype(np.float32))  # no low-precision slack: the float32 floor only
    score = 0.125 * float(np.dot(q[0, 0, 0].astype(np.float64), krow.astype(np.float64)))
    lse_close(lse, np.full(lse.shape, score + math.log(sk)), atol=2e-5 * max(1.0, abs(score) + math.log(sk)))


@pytest.mark.parametrize("s", [32768, 65536])
def test_long_prefill_keeps_linear_memory(s):
    """A long prefill (32 heads, d128) would need 0.5-1 GB of fp32 split partials per split: the accuracy-forced
    splits stay within their scratch budget (forced_partial_budget: 1 GiB or 1/16 of the K/V bytes), so such a call
    keeps FlashAttention's O(N) memory (one split, no partials) and makes s / BK accumulator additions."""
    plan = _describe_metal(s, s, hq=32, hkv=32, d=128)
    info = _attention(plan)["attention"]
    assert info["kind"] == "prefill" and s > _max_keys(info)  # past the accuracy limit ...
    assert info["num_splits"] == 1 and not any(l["kernel"].startswith("fa_merge_") for l in plan["launches"])
