"""CPU backend dropout: the mask comes from the shared Philox stream (kernels/fa_philox.h), kept probabilities are
scaled by 1/(1-p), the LSE is the un-dropped one, and S_dmask holds the probabilities with dropped entries negated."""
from __future__ import annotations

import numpy as np
import pytest

from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn

fa = pytest.importorskip("flash_attn_cy")
ref = pytest.importorskip("flash_attn_cy.reference")

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
U32 = np.uint64(0xFFFFFFFF)


def philox_keep(seed: int, offset: int, bh: int, rows: np.ndarray, cols: np.ndarray, p: float) -> np.ndarray:
    """Independent NumPy Philox4x32-10 with the documented counter mapping; True = kept."""
    rows, cols = np.broadcast_arrays(rows.astype(np.uint64), cols.astype(np.uint64))
    c0 = cols >> np.uint64(2)
    c1 = rows.copy()
    c2 = np.full_like(c0, bh)
    c3 = np.full_like(c0, (offset & 0xFFFFFFFF) ^ (((offset >> 32) * W0) & 0xFFFFFFFF))
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for _ in range(10):
        p0 = np.uint64(M0) * c0
        p1 = np.uint64(M1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & U32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & U32)
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    words = np.stack([c0, c1, c2, c3], axis=-1)
    w = np.take_along_axis(words, (cols & np.uint64(3)).astype(np.int64)[..., None], axis=-1)[..., 0]
    threshold = min(int(np.floor(p * 2.0 ** 32)), 2 ** 32 - 1)
    return w >= np.uint64(threshold)


def _keep_mask(seed, offset, b, h, sq, sk, p):
    rows = np.arange(sq)[:, None]
    cols = np.arange(sk)[None, :]
    return np.stack([np.stack([philox_keep(seed, offset, bi * h + hi, rows, cols, p) for hi in range(h)])
                     for bi in range(b)])


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_matches_reference_with_philox_mask(rng, dtype, causal):
    b, sq, sk, h, d = 2, 37, 75, 3, 24
    p = 0.375  # exactly representable: the ABI carries dropout_p as fp32, the fp64 reference would see 0.3 exactly
    seed, offset = 0x1234_5678_9ABC_DEF0, 0x0F0F_0000_0000_0042
    q, k, v = (randn(rng, (b, n, h, d), dtype) for n in (sq, sk, sk))
    out, lse, s_dmask = fa.flash_attn_func(q, k, v, dropout_p=p, causal=causal, return_attn_probs=True,
                                           backend="cpu", seed=(seed, offset))
    keep = _keep_mask(seed, offset, b, h, sq, sk, p)
    out64, lse64 = ref.attention_ref(q, k, v, causal=causal, dropout_mask=keep, dropout_p=p, return_lse=True)
    out_lp = ref.attention_ref(q, k, v, causal=causal, dropout_mask=keep, dropout_p=p, compute_dtype=DTYPES[dtype])
    assert_close_to_ref(out, out64, out_lp, dtype=DTYPES[dtype])
    # LSE ignores dropout (flash_attn): equal to the no-dropout LSE.
    _, lse_nodrop = ref.attention_ref(q, k, v, causal=causal, return_lse=True)
    np.testing.assert_allclose(lse, lse_nodrop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse64, lse_nodrop, rtol=1e-12)
    # S_dmask: |value| = softmax probability, sign = kept / dropped.
    s_dmask = np.asarray(s_dmask)
    assert s_dmask.shape == (b, h, sq, sk)
    _, _, probs = _probs_ref(q, k, causal)
    visible = probs > 0
    np.testing.assert_allclose(np.abs(s_dmask), probs, rtol=2e-3 if dtype == "bf16" else 1e-5, atol=1e-6)
    assert np.array_equal(s_dmask[visible] > 0, keep[visible])


def _probs_ref(q, k, causal):
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    s = np.einsum("bihd,bjhd->bhij", q64, k64) / np.sqrt(q.shape[-1])
    sq, sk = q.shape[1], k.shape[1]
    if causal:
        vis = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + sk - sq
        s = np.where(vis, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return s, e, e / e.sum(-1, keepdims=True)


def test_dropout_rate_statistics(rng):
    b, sq, sk, h, d = 1, 64, 256, 4, 16
    q, k, v = (randn(rng, (b, n, h, d), "fp32") for n in (sq, sk, sk))
    for p in (0.1, 0.5, 0.9):
        _, _, s_dmask = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, backend="cpu",
                                           seed=(99, 7))
        dropped = float(np.mean(np.asarray(s_dmask) < 0))
        n = s_dmask.size
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(dropped - p) < 5 * sigma, (p, dropped)


def test_dropout_reproducible_and_seed_dependent(rng):
    q, k, v = (randn(rng, (2, 50, 2, 32), "fp32") for _ in range(3))
    a = fa.flash_attn_func(q, k, v, dropout_p=0.2, backend="cpu", seed=(5, 0))
    b = fa.flash_attn_func(q, k, v, dropout_p=0.2, backend="cpu", seed=(5, 0))
    c = fa.flash_attn_func(q, k, v, dropout_p=0.2, backend="cpu", seed=(6, 0))
    d = fa.flash_attn_func(q, k, v, dropout_p=0.2, backend="cpu", seed=(5, 1))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_dropout_varlen_uses_in_sequence_indices(rng):
    # Varlen rows/cols of the mask are indices within each sequence, bh = b * nheads + h.
    lens_q, lens_k, h, d, p = [9, 21], [30, 17], 2, 16, 0.4
    cu_q = np.array([0, 9, 30], np.int32)
    cu_k = np.array([0, 30, 47], np.int32)
    q = randn(rng, (30, h, d), "fp32")
    k = randn(rng, (47, h, d), "fp32")
    v = randn(rng, (47, h, d), "fp32")
    out = fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 21, 30, dropout_p=p, backend="cpu", seed=(11, 3))
    for bi in range(2):
        keep = _keep_mask(11, 3, 2, h, lens_q[bi], lens_k[bi], p)[bi:bi + 1]
        qb = q[None, cu_q[bi]:cu_q[bi + 1]]
        kb, vb = k[None, cu_k[bi]:cu_k[bi + 1]], v[None, cu_k[bi]:cu_k[bi + 1]]
        out64 = ref.attention_ref(qb, kb, vb, dropout_mask=keep, dropout_p=p)
        out_lp = ref.attention_ref(qb, kb, vb, dropout_mask=keep, dropout_p=p, compute_dtype=np.float32)
        assert_close_to_ref(out[None, cu_q[bi]:cu_q[bi + 1]], out64, out_lp, dtype=np.dtype(np.float32))


def test_dropout_in_split_decode(rng):
    # One query per head with dropout and S_dmask: decode shapes that the decode path (decode_forward.cpp) hands to
    # the general forward's few-row layout.
    b, sq, sk, h, d, p = 2, 1, 1500, 3, 32, 0.25
    q, k, v = (randn(rng, (b, n, h, d), "fp32") for n in (sq, sk, sk))
    out, lse, s_dmask = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, backend="cpu",
                                           seed=(1234, 5))
    keep = _keep_mask(1234, 5, b, h, sq, sk, p)
    out64, lse64 = ref.attention_ref(q, k, v, dropout_mask=keep, dropout_p=p, return_lse=True)
    out_lp = ref.attention_ref(q, k, v, dropout_mask=keep, dropout_p=p, compute_dtype=np.float32)
    assert_close_to_ref(out, out64, out_lp, dtype=np.dtype(np.float32))
    np.testing.assert_allclose(lse, lse64, rtol=1e-5)
    _, _, probs = _probs_ref(q, k, False)
    np.testing.assert_allclose(np.abs(s_dmask), probs, rtol=1e-5, atol=1e-7)
    assert np.array_equal(np.asarray(s_dmask) > 0, keep)
