"""The sim backend (the Metal kernels in the simulator) and the cpu backend agree on every public forward function:
both meet the tolerance rule against the float64 reference and return the same LSE (and, with dropout, the same
Philox mask, so the same output). The KV-cache function is covered in test_metal_kvcache.py."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy.reference import attention_ref, to_float64
from _metal_support import np_dtype, rand, require_sim
from _tolerance import assert_close_to_ref
from _sim_hazards import sim_hazards  # noqa: F401  (every test: under the hazard detector)

pytestmark = pytest.mark.usefixtures("sim_hazards")


@pytest.fixture(autouse=True)
def _need_sim():
    require_sim()


def _both(fn, *args, **kw):
    res = {}
    for backend in ("sim", "cpu"):
        out, lse, _ = fn(*args, return_attn_probs=True, backend=backend, **kw)
        res[backend] = (np.asarray(out), np.asarray(lse))
    return res


def _check(res, ref64, lse64, ref_lowp):
    for backend, (out, lse) in res.items():
        assert_close_to_ref(out, ref64, ref_lowp, what=f"{backend} out")
        fin = np.isfinite(lse64)
        assert np.array_equal(np.isposinf(lse), ~fin), backend
        assert np.max(np.abs(lse[fin] - lse64[fin]), initial=0.0) < 1e-4, backend


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_flash_attn_func(dtype, rng):
    q, k, v = rand(rng, (2, 33, 4, 72), dtype), rand(rng, (2, 41, 2, 72), dtype), rand(rng, (2, 41, 2, 72), dtype)
    kw = dict(causal=True, window_size=(-1, -1), softcap=0.0)
    res = _both(fa.flash_attn_func, q, k, v, **kw)
    ref64, lse64 = attention_ref(q, k, v, causal=True, return_lse=True)
    _check(res, ref64, lse64, attention_ref(q, k, v, causal=True, compute_dtype=np_dtype(dtype)))


def test_qkvpacked_and_kvpacked(rng):
    qkv = rand(rng, (2, 29, 3, 4, 64), "fp16")
    res = _both(fa.flash_attn_qkvpacked_func, qkv, window_size=(7, 2))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    ref64, lse64 = attention_ref(q, k, v, window_size=(7, 2), return_lse=True)
    _check(res, ref64, lse64, attention_ref(q, k, v, window_size=(7, 2), compute_dtype=np.float16))

    q = rand(rng, (2, 5, 6, 64), "fp16")
    kv = rand(rng, (2, 50, 2, 2, 64), "fp16")
    slopes = rng.uniform(0.1, 1.0, size=(6,)).astype(np.float32)
    res = _both(fa.flash_attn_kvpacked_func, q, kv, alibi_slopes=slopes, softcap=5.0)
    k, v = kv[:, :, 0], kv[:, :, 1]
    kw = dict(alibi_slopes=slopes, softcap=5.0)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, **kw)
    _check(res, ref64, lse64, attention_ref(q, k, v, compute_dtype=np.float16, **kw))


def test_varlen_funcs(rng):
    lens_q, lens_k = [9, 30, 1], [15, 22, 70]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rand(rng, (cu_q[-1], 4, 64), "bf16")
    k, v = rand(rng, (cu_k[-1], 1, 64), "bf16"), rand(rng, (cu_k[-1], 1, 64), "bf16")
    res = _both(fa.flash_attn_varlen_func, q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, **kw)
    _check(res, ref64, lse64, attention_ref(q, k, v, compute_dtype=np_dtype("bf16"), **kw))

    qkv = rand(rng, (cu_q[-1], 3, 2, 64), "fp16")
    res = _both(fa.flash_attn_varlen_qkvpacked_func, qkv, cu_q, max(lens_q), causal=True)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_q, causal=True)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, **kw)
    _check(res, ref64, lse64, attention_ref(q, k, v, compute_dtype=np.float16, **kw))


def test_varlen_paged_kv(rng):
    """flash_attn_varlen_func with a block_table: keys of sequence b come from pages block_table[b]."""
    page, hkv, d = 16, 2, 64
    lens_q, lens_k = [3, 17], [40, 21]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    nblocks, per_seq = 9, 3
    kc, vc = rand(rng, (nblocks, page, hkv, d), "fp16"), rand(rng, (nblocks, page, hkv, d), "fp16")
    table = rng.permutation(nblocks)[: 2 * per_seq].reshape(2, per_seq).astype(np.int32)
    q = rand(rng, (cu_q[-1], 4, d), "fp16")
    res = _both(fa.flash_attn_varlen_func, q, kc, vc, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                block_table=table)
    # dense copies of the paged keys for the reference
    k = np.concatenate([kc[table[b]].reshape(-1, hkv, d)[: lens_k[b]] for b in range(2)])
    v = np.concatenate([vc[table[b]].reshape(-1, hkv, d)[: lens_k[b]] for b in range(2)])
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, **kw)
    _check(res, ref64, lse64, attention_ref(q, k, v, compute_dtype=np.float16, **kw))


def test_dropout_same_mask_on_both(rng):
    q, k, v = rand(rng, (1, 24, 2, 64), "fp32"), rand(rng, (1, 31, 2, 64), "fp32"), rand(rng, (1, 31, 2, 64), "fp32")
    outs = [np.asarray(fa.flash_attn_func(q, k, v, dropout_p=0.25, causal=True, backend=b, seed=(1234, 99)))
            for b in ("sim", "cpu")]
    assert np.max(np.abs(outs[0] - outs[1])) < 1e-5
    other = np.asarray(fa.flash_attn_func(q, k, v, dropout_p=0.25, causal=True, backend="sim", seed=(1235, 99)))
    assert np.max(np.abs(other - outs[0])) > 1e-2  # a different seed drops different entries


@pytest.mark.parametrize("window,softcap,alibi", [((-1, 0), 0.0, False), ((5, 2), 3.0, True)])
def test_attn_probs_debug_output(window, softcap, alibi, rng):
    """return_attn_probs with dropout: probabilities (dropped ones negated) equal on sim and cpu, and equal to the
    reference softmax with the documented Philox mask."""
    from _metal_support import dropout_keep_mask

    q, k, v = rand(rng, (2, 13, 3, 40), "fp16"), rand(rng, (2, 21, 3, 40), "fp16"), rand(rng, (2, 21, 3, 40), "fp16")
    kw = dict(dropout_p=0.3, window_size=window, softcap=softcap, return_attn_probs=True, seed=(77, 5))
    if alibi:
        kw["alibi_slopes"] = rng.uniform(0.1, 1.0, size=(3,)).astype(np.float32)
    probs = {b: np.asarray(fa.flash_attn_func(q, k, v, backend=b, **kw)[2]) for b in ("sim", "cpu")}
    keep = dropout_keep_mask(77, 5, 2, 3, 13, 21, 0.3)
    ref = np.zeros((2, 3, 13, 21))
    s64 = np.einsum("bihd,bjhd->bhij", to_float64(q), to_float64(k)) / np.sqrt(40)
    if softcap:
        s64 = softcap * np.tanh(s64 / softcap)
    i, j = np.arange(13)[:, None], np.arange(21)[None, :]
    if alibi:
        s64 = s64 - kw["alibi_slopes"][None, :, None, None] * np.abs(i + 8 - j)
    vis = (j >= i + 8 - window[0]) if window[0] >= 0 else np.ones((13, 21), bool)
    vis = vis & ((j <= i + 8 + window[1]) if window[1] >= 0 else True)
    s64 = np.where(vis, s64, -np.inf)
    ref = np.exp(s64 - s64.max(-1, keepdims=True))
    ref = ref / ref.sum(-1, keepdims=True)
    ref = np.where(keep, ref, -ref)
    for backend, got in probs.items():
        assert got.shape == ref.shape
        assert np.array_equal(got < 0, (ref < 0)), backend  # the same dropped entries (visible ones)
        assert np.max(np.abs(got - ref)) < 1e-5, backend


def test_attn_probs_of_sim_come_from_its_own_kernel(monkeypatch, rng):
    """S_dmask on sim is written by the fa_probs_* kernel at the end of the sim's forward plan: one call of the core,
    on the sim backend, with the probabilities buffer (no CPU recomputation)."""
    from flash_attn_cy import _core

    calls = []
    real = _core.forward

    def spy(backend, *args, **kw):
        calls.append((backend, "attn_probs" in kw))
        return real(backend, *args, **kw)

    monkeypatch.setattr(_core, "forward", spy)
    q = rand(rng, (1, 7, 2, 32), "fp32")
    _, _, probs = fa.flash_attn_func(q, q, q, causal=True, return_attn_probs=True, backend="sim")
    assert calls == [("sim", True)]
    probs = np.asarray(probs)
    assert probs.shape == (1, 2, 7, 7) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(probs, 1) == 0)  # causal: no probability above the diagonal
