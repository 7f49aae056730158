"""CPU backend forward: every layout and feature against the float64 reference, on odd sizes, on both the
runtime-selected kernels (AVX-512 where the CPU has it) and the portable kernels (FLASH_ATTN_CY_CPU_ISA=portable).

Tolerance: the project rule (tests/_tolerance.py): error <= 2 x error of the same reference computed in the input
dtype + a small floor.
"""
from __future__ import annotations

import numpy as np
import pytest

from _cpu_isa import isa  # noqa: F401 (the fixture)
from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn

fa = pytest.importorskip("flash_attn_cy")
ref = pytest.importorskip("flash_attn_cy.reference")

SHAPES = [(113, 203), (128, 217), (1, 239), (239, 1)]


def _check(q, k, v, dtype, **kw):
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="cpu", **kw)
    ref_kw = {n: kw[n] for n in ("softmax_scale", "causal", "window_size", "softcap", "alibi_slopes") if n in kw}
    out64, lse64 = ref.attention_ref(q, k, v, return_lse=True, **ref_kw)
    low = np.dtype(np.float32) if dtype == "fp64" else DTYPES[dtype]
    out_lp, lse_lp = ref.attention_ref(q, k, v, return_lse=True, compute_dtype=DTYPES[dtype], **ref_kw)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close_to_ref(out, out64, out_lp, dtype=DTYPES[dtype])
    # LSE is fp32 whatever the input dtype: its floor is fp32's unless the input is coarser.
    assert_close_to_ref(lse, lse64, lse_lp, dtype=DTYPES[dtype] if dtype != "fp64" else low, what="lse")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("sq,sk", SHAPES)
@pytest.mark.parametrize("d", [40, 59, 111, 256])
def test_dense_causal_and_not_gqa(rng, isa, dtype, sq, sk, d):
    if isa == "portable" and d not in (59, 256):
        pytest.skip("portable kernels: a subset of head dims keeps the suite fast")
    q = randn(rng, (2, sq, 4, d), dtype)
    k = randn(rng, (2, sk, 2, d), dtype)
    v = randn(rng, (2, sk, 2, d), dtype)
    _check(q, k, v, dtype, causal=False)
    _check(q, k, v, dtype, causal=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("d", [1, 2, 16, 17, 32, 64, 80, 96, 128, 160, 192, 224])
def test_head_dims(rng, dtype, d):
    q = randn(rng, (1, 77, 3, d), dtype)
    k = randn(rng, (1, 131, 3, d), dtype)
    v = randn(rng, (1, 131, 3, d), dtype)
    _check(q, k, v, dtype, causal=d % 2 == 0)


FEATURES = [
    dict(window_size=(17, 5)),
    dict(window_size=(0, 0)),
    dict(window_size=(-1, 9)),
    dict(window_size=(33, -1)),
    dict(causal=True, window_size=(40, -1)),
    dict(softcap=3.0),
    dict(alibi="heads"),
    dict(alibi="batch_heads", causal=True),
    dict(softcap=2.5, alibi="heads", window_size=(50, 10)),
    dict(softmax_scale=0.375, causal=True),  # fp32-exact: the ABI carries the scale as fp32,
]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("feat", FEATURES, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("sq,sk", [(113, 203), (203, 113)])
def test_features(rng, isa, dtype, feat, sq, sk):
    feat = dict(feat)
    hq, hk, d = 6, 2, 48
    if isa == "portable" and dtype in ("fp16", "fp64"):
        pytest.skip("portable kernels: fp32/bf16 cover the shared code")
    alibi = feat.pop("alibi", None)
    if alibi == "heads":
        feat["alibi_slopes"] = (rng.random(hq) * 0.5).astype(np.float32)
    elif alibi == "batch_heads":
        feat["alibi_slopes"] = (rng.random((2, hq)) * 0.5).astype(np.float32)
    q = randn(rng, (2, sq, hq, d), dtype)
    k = randn(rng, (2, sk, hk, d), dtype)
    v = randn(rng, (2, sk, hk, d), dtype)
    _check(q, k, v, dtype, **feat)


@pytest.mark.parametrize("hq,hk", [(8, 1), (6, 3), (5, 5)])
def test_mqa_gqa_decode_rows(rng, isa, hq, hk):
    # One query per sequence: the GQA group fills the query tile (several heads per tile).
    for sq in (1, 3):
        q = randn(rng, (3, sq, hq, 64), "bf16")
        k = randn(rng, (3, 300, hk, 64), "bf16")
        v = randn(rng, (3, 300, hk, 64), "bf16")
        _check(q, k, v, "bf16", causal=True)
        _check(q, k, v, "bf16", causal=False)


def test_fully_masked_rows_give_zero_and_inf_lse(rng, isa):
    # window (0, 0) with sk < sq: the first sq - sk rows see no key (bottom-right alignment).
    q = randn(rng, (1, 70, 2, 32), "fp32")
    k = randn(rng, (1, 20, 2, 32), "fp32")
    v = randn(rng, (1, 20, 2, 32), "fp32")
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    assert np.all(out[:, :50] == 0)
    assert np.all(np.isposinf(lse[:, :, :50]))
    assert np.all(np.isfinite(lse[:, :, 50:]))
    _check(q, k, v, "fp32", causal=True)


def test_non_contiguous_inputs(rng, isa):
    base = randn(rng, (2, 97, 3, 3, 40), "fp32")  # q, k, v interleaved in one buffer (qkv-packed layout)
    q, k, v = base[:, :, 0], base[:, :, 1], base[:, :, 2]
    _check(q, k, v, "fp32", causal=True)
    qt = np.ascontiguousarray(randn(rng, (2, 3, 97, 40), "bf16")).transpose(0, 2, 1, 3)  # head-major storage
    kt = np.ascontiguousarray(randn(rng, (2, 3, 150, 40), "bf16")).transpose(0, 2, 1, 3)
    vt = np.ascontiguousarray(randn(rng, (2, 3, 150, 40), "bf16")).transpose(0, 2, 1, 3)
    _check(qt, kt, vt, "bf16")


def _varlen_case(rng, dtype, lens_q, lens_k, hq, hk, d):
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = randn(rng, (int(cu_q[-1]), hq, d), dtype)
    k = randn(rng, (int(cu_k[-1]), hk, d), dtype)
    v = randn(rng, (int(cu_k[-1]), hk, d), dtype)
    return q, k, v, cu_q, cu_k


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_uneven_and_empty(rng, isa, dtype, causal):
    lens_q, lens_k = [37, 0, 130, 1, 64], [80, 5, 129, 0, 64]
    q, k, v, cu_q, cu_k = _varlen_case(rng, dtype, lens_q, lens_k, 4, 2, 59)
    kw = dict(causal=causal, window_size=(30, -1) if causal else (-1, -1))
    out, lse, _ = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), return_attn_probs=True,
                                            backend="cpu", **kw)
    assert out.shape == q.shape and lse.shape == (4, q.shape[0])
    # Reference per sequence (dense), so each packed range is checked where it lives.
    for b in range(len(lens_q)):
        rq, rk = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if lens_q[b] == 0:
            continue
        if lens_k[b] == 0:  # no key at all: zeros and +inf LSE, as flash_attn
            assert np.all(out[rq].astype(np.float32) == 0) and np.all(np.isposinf(lse[:, rq]))
            continue
        qb, kb, vb = q[None, rq], k[None, rk], v[None, rk]
        out64, lse64 = ref.attention_ref(qb, kb, vb, return_lse=True, **kw)
        out_lp, lse_lp = ref.attention_ref(qb, kb, vb, return_lse=True, compute_dtype=DTYPES[dtype], **kw)
        assert_close_to_ref(out[None, rq], out64, out_lp, dtype=DTYPES[dtype])
        assert_close_to_ref(lse[None, :, rq], lse64, lse_lp, dtype=DTYPES[dtype], what="lse")


def test_threads_setting_gives_identical_results(rng):
    q = randn(rng, (2, 150, 4, 64), "fp32")
    k = randn(rng, (2, 190, 4, 64), "fp32")
    v = randn(rng, (2, 190, 4, 64), "fp32")
    old = fa.get_num_threads()
    try:
        fa.set_num_threads(1)
        assert fa.get_num_threads() == 1
        one = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
        fa.set_num_threads(3)
        many = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    finally:
        fa.set_num_threads(old if old else 0)
    # Each (tile, head) is computed by exactly one thread with a fixed order: bit-identical.
    assert np.array_equal(one, many)


def test_portable_and_simd_agree(rng, monkeypatch):
    q = randn(rng, (1, 100, 2, 72), "fp32")
    k = randn(rng, (1, 140, 2, 72), "fp32")
    v = randn(rng, (1, 140, 2, 72), "fp32")
    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", "portable")
    a = fa.flash_attn_func(q, k, v, backend="cpu")
    monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA")
    b = fa.flash_attn_func(q, k, v, backend="cpu")
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("sq", [1, 20])  # 1: decode row kernels; 20: lane-layout kernels (vdpbf16ps for bf16)
def test_output_rounding_is_round_to_nearest_even(rng, isa, dtype, sq):
    # q = 0 makes both keys equally likely: out = (v0 + v1) / 2, one fp32 rounding, so the only other rounding is the
    # final fp32 -> dtype conversion, which must match NumPy / ml_dtypes round-to-nearest-even bit for bit
    # (halfway cases, overflow to inf included).
    dt = DTYPES[dtype]
    nheads, d = 64, 64
    bits = rng.integers(0, 1 << 16, size=(1, 2, nheads, d), dtype=np.uint16)
    v = bits.view(dt).astype(np.float32)
    # finite inputs; bf16 also without subnormals, which vdpbf16ps treats as zero (denormals-are-zero)
    keep = np.isfinite(v) & ((np.abs(v) >= 2.0 ** -100) if dtype == "bf16" else True)
    v = np.where(keep, v, 0.0).astype(dt)
    q = np.zeros((1, sq, nheads, d), dt)
    k = randn(rng, (1, 2, nheads, d), dtype)
    out = fa.flash_attn_func(q, k, v, backend="cpu")
    with np.errstate(over="ignore"):
        expect = ((v[:, 0].astype(np.float32) + v[:, 1].astype(np.float32)) * np.float32(0.5)).astype(dt)
    for i in range(sq):
        np.testing.assert_array_equal(out[:, i].view(np.uint16), expect.view(np.uint16))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("hq,hk,sq", [(4, 4, 1), (6, 3, 2), (4, 1, 1), (3, 3, 4)])
def test_split_decode_long_cache_with_features(rng, dtype, hq, hk, sq):
    # <= 4 query rows per KV head: key splits over all heads, merged by LSE; features must survive the split.
    sk = 1900
    q = randn(rng, (2, sq, hq, 64), dtype)
    k = randn(rng, (2, sk, hk, 64), dtype)
    v = randn(rng, (2, sk, hk, 64), dtype)
    _check(q, k, v, dtype)
    _check(q, k, v, dtype, causal=True, window_size=(700, 0), softcap=6.0,
           alibi_slopes=(rng.random((2, hq)) * 0.01).astype(np.float32))
