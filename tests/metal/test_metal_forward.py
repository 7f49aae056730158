"""The Metal forward kernels (kernels/fa_forward.metal, fa_decode.metal, fa_decode_vec.metal) executed by the simulator, against the
float64 reference with the project's tolerance rule, under several thread schedules (races and reads of
uninitialised threadgroup memory show up as differences between schedules, out-of-bounds accesses as faults).

Every specialization (fp32/fp16/bf16 x head dim 64/80/96/128/256) runs; the feature grid covers causal (incl.
queries longer than keys, i.e. rows that see no key), sliding windows, ALiBi, softcap, GQA/MQA, varlen, seqused_k,
dropout and split-KV decode. FA_TEST_METAL_BACKEND=cpu runs the same checks on another backend (test the tests)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from flash_attn_cy.reference import attention_ref
from _metal_support import check_varlen_causal, describe_forward, dropout_keep_mask, lse_close, np_dtype, rand, require_sim, sim_forward
from _tolerance import assert_close_to_ref
from _sim_math import sim_math  # noqa: E402,F401  (every test: IEEE and fast math)

pytestmark = pytest.mark.usefixtures("sim_math")

BACKEND = os.environ.get("FA_TEST_METAL_BACKEND", "sim")
SCHEDULES = 3  # forward, reverse and one seeded random thread order


@pytest.fixture(autouse=True)
def _need_backend():
    if BACKEND == "sim":
        require_sim()


def _lowp(dtype):
    return np_dtype(dtype)


def check_dense(rng, dtype, *, b=2, sq=19, sk=27, hq=2, hkv=1, d=64, causal=False, window=(-1, -1), softcap=0.0,
                alibi=None, dropout_p=0.0, seqused=None, num_splits=0, scale=None, schedules=SCHEDULES):
    q, k, v = rand(rng, (b, sq, hq, d), dtype), rand(rng, (b, sk, hkv, d), dtype), rand(rng, (b, sk, hkv, d), dtype)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    wl, wr = window
    if causal:
        wr = 0
    slopes = None
    if alibi == "h":
        slopes = rng.uniform(0.05, 1.0, size=(hq,)).astype(np.float32)
    elif alibi == "bh":
        slopes = rng.uniform(0.05, 1.0, size=(b, hq)).astype(np.float32)
    opts = dict(softmax_scale=scale, window_left=wl, window_right=wr, softcap=softcap, num_splits=num_splits)
    if slopes is not None:
        opts["alibi_slopes"] = slopes.reshape(-1, hq)
    mask = None
    if dropout_p > 0:
        seed, offset = 0x1234_5678_9ABC, 4097
        opts.update(dropout_p=dropout_p, seed=seed, offset=offset)
        mask = dropout_keep_mask(seed, offset, b, hq, sq, sk, dropout_p)
    used = None
    if seqused is not None:
        used = np.asarray(seqused, dtype=np.int32)
        opts["seqused_k"] = used
    out, lse = sim_forward(q, k, v, lse_shape=(b, hq, sq), schedules=schedules, backend=BACKEND, **opts)
    ref_kw = dict(softmax_scale=scale, window_size=(wl, wr), softcap=softcap, alibi_slopes=slopes,
                  dropout_mask=mask, dropout_p=dropout_p, seqused_k=used)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, **ref_kw)
    ref_lowp = attention_ref(q, k, v, compute_dtype=_lowp(dtype), **ref_kw)
    assert_close_to_ref(out, ref64, ref_lowp)
    lse_close(lse, lse64, atol=2e-5 * max(1.0, float(np.max(np.abs(lse64[np.isfinite(lse64)]), initial=1.0))))
    return out, lse


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
def test_every_specialization(dtype, d, rng):
    check_dense(rng, dtype, d=d, causal=(d % 128 == 0))


@pytest.mark.parametrize("d", [1, 33, 130])
def test_odd_head_dims_use_next_specialization(d, rng):
    check_dense(rng, "fp16", d=d, hq=1)


@pytest.mark.parametrize("sq,sk", [(19, 45), (45, 19), (32, 32), (1, 70)])
def test_causal_bottom_right(sq, sk, rng):
    out, lse = check_dense(rng, "fp16", sq=sq, sk=sk, causal=True)
    if sq > sk:  # the first sq - sk rows see no key: zeros and LSE = +inf
        assert not out[:, : sq - sk].astype(np.float32).any()
        assert np.isposinf(lse[:, :, : sq - sk]).all()


@pytest.mark.parametrize("window", [(5, 3), (0, 0), (8, -1), (-1, 2), (40, 0)])
def test_sliding_window(window, rng):
    check_dense(rng, "fp32", sq=37, sk=70, window=window)


def test_window_with_empty_rows(rng):
    check_dense(rng, "bf16", sq=40, sk=20, window=(2, 0))


@pytest.mark.parametrize("alibi,causal", [("h", False), ("bh", True)])
def test_alibi(alibi, causal, rng):
    check_dense(rng, "fp16", sq=23, sk=41, alibi=alibi, causal=causal)


@pytest.mark.parametrize("alibi", [None, "h"])
def test_softcap(alibi, rng):
    check_dense(rng, "fp32", softcap=4.0, alibi=alibi, scale=0.5)


@pytest.mark.parametrize("hq,hkv,sq", [(6, 2, 21), (4, 1, 3), (8, 2, 1), (8, 1, 1), (6, 1, 1), (5, 5, 9)])
def test_gqa_mqa(hq, hkv, sq, rng):
    check_dense(rng, "fp16", hq=hq, hkv=hkv, sq=sq, sk=50, causal=True)


def test_seqused_k(rng):
    check_dense(rng, "fp16", sq=7, sk=60, seqused=[41, 3], causal=True)


def test_dropout_uses_the_shared_philox_mask(rng):
    check_dense(rng, "fp32", sq=17, sk=35, dropout_p=0.3, causal=True)


def _kernel_kind(b, sq, sk, hq, hkv, d, dtype, **opts):
    q = np.zeros((b, sq, hq, d), _lowp(dtype))
    k = np.zeros((b, sk, hkv, d), _lowp(dtype))
    return describe_forward(q, k, k, lse_shape=(b, hq, sq), **opts)["launches"][0]["attention"]["kind"]


@pytest.mark.parametrize("num_splits", [0, 1, 5])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("hkv,kind", [(2, "vector"), (1, "fragment")])
def test_decode_split_kv(num_splits, dtype, hkv, kind, rng):
    """One query against many keys, split across threadgroups and merged by LSE: GQA 4 runs the vector kernel (4
    packed rows), GQA 8 the 8-row fragment kernel."""
    assert _kernel_kind(2, 1, 333, 8, hkv, 128, dtype, num_splits=num_splits) == kind
    check_dense(rng, dtype, sq=1, sk=333, hq=8, hkv=hkv, d=128, num_splits=num_splits)


@pytest.mark.parametrize("hkv,kind", [(4, "vector"), (1, "fragment")])
def test_decode_split_with_window_and_empty_splits(hkv, kind, rng):
    # most splits see no key of the window: their partials must not disturb the merge
    assert _kernel_kind(2, 2, 400, 4, hkv, 64, "fp16", num_splits=8) == kind
    check_dense(rng, "fp16", sq=2, sk=400, hq=4, hkv=hkv, window=(20, 0), num_splits=8)


def test_prefill_kernel_split_kv(rng):
    """The 32-row kernel writes split partials too (explicit num_splits), merged by fa_merge."""
    check_dense(rng, "fp16", sq=40, sk=100, hq=3, hkv=3, causal=True, alibi="h", num_splits=3)


@pytest.mark.parametrize("num_splits", [0, 3])
def test_varlen(num_splits, rng):
    check_varlen_causal(rng, [13, 0, 40, 1], [20, 7, 33, 50], hq=4, hkv=2, d=48, num_splits=num_splits,
                        backend=BACKEND)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("d", [16, 64, 80, 96, 128, 160, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", [(1, 257), (64, 64), (100, 37), (129, 300)])
def test_exhaustive_grid(dtype, d, causal, sq, sk, rng):
    check_dense(rng, dtype, sq=sq, sk=sk, d=d, hq=4, hkv=2, causal=causal, alibi="h" if d == 64 else None,
                softcap=3.0 if d == 80 else 0.0, schedules=3)
