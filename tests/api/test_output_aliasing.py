"""Buffers written in place must not share memory with another output or with an input: the kernels would read
values they are overwriting, a silently wrong result. flash_attn_cy.backward's dq/dk/dv and the two caches of an
appending flash_attn_with_kvcache call are checked exactly (np.shares_memory), so interleaved views of one buffer
(the packed dqkv that qkvpacked code passes, a (..., 2, heads, dim) K/V cache) still work."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import randn

import flash_attn_cy as fa


@pytest.fixture
def fwd(rng):
    q, k, v = (randn(rng, (1, 37, 2, 16), "fp32") for _ in range(3))
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    dout = randn(rng, out.shape, "fp32")
    return dout, q, k, v, out, lse


@pytest.mark.parametrize("outputs,other", [
    (lambda t: dict(dq=t["k"]), "k"),
    (lambda t: dict(dv=t["dout"]), "dout"),
    (lambda t: dict(dk=t["q"][:, :, :, :]), "q"),
    (lambda t: dict(dq=t["buf"], dk=t["buf"]), "dk"),
    (lambda t: dict(dk=t["buf"], dv=t["buf"][:, ::-1]), "dv"),
])
def test_backward_outputs_overlapping_something_are_rejected(fwd, outputs, other):
    dout, q, k, v, out, lse = fwd
    named = dict(dout=dout, q=q, k=k, v=v, buf=np.zeros_like(q))
    saved = [x.copy() for x in (dout, q, k, v)]
    with pytest.raises(ValueError, match=f"shares memory with {other}"):
        fa.backward(dout, q, k, v, out, lse, causal=True, backend="cpu", **outputs(named))
    for before, now in zip(saved, (dout, q, k, v)):
        np.testing.assert_array_equal(before, now)  # rejected before anything was written


def test_backward_into_views_of_one_packed_buffer_is_allowed(fwd):
    dout, q, k, v, out, lse = fwd
    want = fa.backward(dout, q, k, v, out, lse, causal=True, backend="cpu", deterministic=True)
    dqkv = np.zeros(q.shape[:2] + (3,) + q.shape[2:], np.float32)
    got = fa.backward(dout, q, k, v, out, lse, causal=True, backend="cpu", deterministic=True,
                      dq=dqkv[:, :, 0], dk=dqkv[:, :, 1], dv=dqkv[:, :, 2])
    for w, g, i in zip(want, got, range(3)):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(dqkv[:, :, i], w)


def test_backward_torch_outputs_overlapping_an_input_are_rejected(fwd):
    torch = pytest.importorskip("torch")
    dout, q, k, v, out, lse = (torch.from_numpy(x) for x in fwd)
    with pytest.raises(ValueError, match="dv: shares memory with v"):
        fa.backward(dout, q, k, v, out, lse, backend="cpu", dv=v)


def test_kvcache_append_into_one_buffer_for_both_caches_is_rejected(rng):
    q, k, v = (randn(rng, (2, 3, 4, 16), "fp32") for _ in range(3))
    cache = np.zeros((2, 40, 4, 16), np.float32)
    with pytest.raises(ValueError, match="v_cache: shares memory with k_cache"):
        fa.flash_attn_with_kvcache(q, cache, cache, k, v, cache_seqlens=5, backend="cpu")
    assert not cache.any()  # nothing appended
    # without an append nothing is written: one buffer for both is merely unusual, and allowed
    fa.flash_attn_with_kvcache(q, cache, cache, cache_seqlens=5, backend="cpu")


def test_kvcache_append_into_a_packed_kv_cache_is_allowed(rng):
    q, k, v = (randn(rng, (2, 3, 4, 16), "fp32") for _ in range(3))
    kv = np.zeros((2, 40, 2, 4, 16), np.float32)
    sep_k, sep_v = np.zeros((2, 40, 4, 16), np.float32), np.zeros((2, 40, 4, 16), np.float32)
    got = fa.flash_attn_with_kvcache(q, kv[:, :, 0], kv[:, :, 1], k, v, cache_seqlens=5, causal=True, backend="cpu")
    want = fa.flash_attn_with_kvcache(q, sep_k, sep_v, k, v, cache_seqlens=5, causal=True, backend="cpu")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kv[:, :, 0], sep_k)
    np.testing.assert_array_equal(kv[:, :, 1], sep_v)
