"""Every backend present in this build answers the public functions with the same semantics as the float64
reference (the simulator runs the project's Metal kernels on the CPU, so sizes stay tiny). A backend that is not
available is skipped here; what it reports as the reason is tested in test_api.py."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import reference as R

from _tolerance import assert_close_to_ref
from conftest import DTYPES, available_backends, randn

BACKENDS = available_backends() or ["cpu"]


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_func_every_backend(backend, dtype, rng):
    q, k, v = randn(rng, (1, 9, 4, 64), dtype), randn(rng, (1, 21, 2, 64), dtype), randn(rng, (1, 21, 2, 64), dtype)
    slopes = rng.uniform(0.1, 0.4, 4).astype(np.float32)
    opts = dict(causal=True, window_size=(11, -1), softcap=4.0, alibi_slopes=slopes)
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend=backend, **opts)
    ref, ref_lse = R.attention_ref(q, k, v, return_lse=True, **opts)
    low, low_lse = R.attention_ref(q, k, v, return_lse=True, compute_dtype=DTYPES[dtype], **opts)
    assert_close_to_ref(out, ref, low)
    assert_close_to_ref(lse, ref_lse, low_lse, dtype=DTYPES[dtype], what="softmax_lse")


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_every_backend(backend, rng):
    lq, lk = [3, 0, 10], [12, 5, 7]
    q, k, v = randn(rng, (13, 2, 40), "fp16"), randn(rng, (24, 1, 40), "fp16"), randn(rng, (24, 1, 40), "fp16")
    cq, ck = _cu(lq), _cu(lk)
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, 10, 12, causal=True, backend=backend)
    kw = dict(cu_seqlens_q=cq, cu_seqlens_k=ck, causal=True)
    assert_close_to_ref(out, R.attention_ref(q, k, v, **kw), R.attention_ref(q, k, v, compute_dtype=np.float16, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_every_backend(backend, paged, rng):
    """Append with rotary into a (paged) cache and decode; the cache contents and the output agree with cpu (which
    test_kvcache.py holds to the float64 re-implementation)."""
    if backend == "cpu":
        pytest.skip("cpu is the yardstick here; test_kvcache.py checks it against the reference")
    batch, h, hk, d = 2, 4, 2, 64
    if paged:
        kc = randn(rng, (6, 16, hk, d), "fp16")
        bt = np.array([[3, 0, 5], [1, 4, 2]], np.int32)
    else:
        kc = randn(rng, (batch, 48, hk, d), "fp16")
        bt = None
    vc = randn(rng, kc.shape, "fp16")
    q, k, v = randn(rng, (batch, 2, h, d), "fp16"), randn(rng, (batch, 2, hk, d), "fp16"), randn(rng, (batch, 2, hk, d), "fp16")
    ang = rng.uniform(0, 2 * np.pi, (48, 16))
    cos, sin = np.cos(ang).astype(np.float16), np.sin(ang).astype(np.float16)
    seqlens = np.array([15, 30], np.int32)
    results = {}
    for name in dict.fromkeys(["cpu", backend]):
        kcc, vcc = kc.copy(), vc.copy()
        out = fa.flash_attn_with_kvcache(q, kcc, vcc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                         block_table=bt, causal=True, rotary_interleaved=False, backend=name)
        results[name] = (out, kcc, vcc)
    out_c, kc_c, vc_c = results["cpu"]
    out_b, kc_b, vc_b = results[backend]
    np.testing.assert_array_equal(vc_b, vc_c)
    np.testing.assert_allclose(kc_b.astype(np.float32), kc_c.astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(out_b.astype(np.float32), out_c.astype(np.float32), rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("varlen", [False, True])
def test_dropout_every_backend(backend, varlen, rng):
    """S_dmask from any backend is the mask that backend applied: the output equals the reference with that mask."""
    p = 0.25
    if varlen:
        lq, lk = [6, 9], [11, 4]
        q, k, v = randn(rng, (15, 2, 32)), randn(rng, (15, 2, 32)), randn(rng, (15, 2, 32))
        cq, ck = _cu(lq), _cu(lk)
        out, lse, s = fa.flash_attn_varlen_func(q, k, v, cq, ck, 9, 11, dropout_p=p, causal=True,
                                                return_attn_probs=True, seed=(5, 7), backend=backend)
        kw = dict(cu_seqlens_q=cq, cu_seqlens_k=ck, causal=True)
    else:
        q, k, v = randn(rng, (2, 13, 2, 32)), randn(rng, (2, 17, 2, 32)), randn(rng, (2, 17, 2, 32))
        out, lse, s = fa.flash_attn_func(q, k, v, dropout_p=p, causal=True, return_attn_probs=True, seed=(5, 7),
                                         backend=backend)
        kw = dict(causal=True)
    keep = s >= 0
    ref, ref_lse = R.attention_ref(q, k, v, dropout_p=p, dropout_mask=keep, return_lse=True, **kw)
    low = R.attention_ref(q, k, v, dropout_p=p, dropout_mask=keep, compute_dtype=np.float32, **kw)
    assert_close_to_ref(out, ref, low)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)
    assert 0.1 < 1 - keep[np.abs(s) > 0].mean() < 0.4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_splits", [0, 1, 3])
def test_kvcache_num_splits_every_backend(backend, num_splits, rng):
    """num_splits only changes how the keys are divided (split-KV decode), never the answer."""
    q = randn(rng, (2, 1, 8, 64), "fp16")
    kc, vc = randn(rng, (2, 200, 2, 64), "fp16"), randn(rng, (2, 200, 2, 64), "fp16")
    seqlens = np.array([37, 200], np.int32)
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, num_splits=num_splits,
                                          return_softmax_lse=True, backend=backend)
    for b in range(2):
        n = seqlens[b]
        ref, ref_lse = R.attention_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], return_lse=True)
        low, low_lse = R.attention_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], return_lse=True,
                                       compute_dtype=np.float16)
        assert_close_to_ref(out[b:b + 1], ref, low)
        assert_close_to_ref(lse[b:b + 1], ref_lse, low_lse, dtype=np.float16, what="softmax_lse")
