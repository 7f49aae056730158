"""Dropout: the Philox mask mapping, forward/backward consistency, reproducibility and statistics.

The mask is checked against an independent NumPy implementation of the documented mapping (kernels/fa_philox.h,
README "Dropout"): key = (lo32(seed), hi32(seed)); counter = (col / 4, row, b * nheads + h,
lo32(offset) ^ hi32(offset) * 0x9E3779B9); word col % 4 of Philox4x32-10; kept iff word >= floor(p * 2^32).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _tolerance import assert_close_to_ref  # noqa: E402
from conftest import available_backends, randn, to_torch  # noqa: E402
from test_backward import TORCH_DTYPES  # noqa: E402

import flash_attn_cy.interface as fa  # noqa: E402
from flash_attn_cy import backward  # noqa: E402
from flash_attn_cy.reference import attention_ref_torch  # noqa: E402

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(c, k0, k1):
    """Philox4x32-10 on uint64 arrays holding 32-bit counters c[0..3]; key (k0, k1) as Python ints."""
    c0, c1, c2, c3 = (np.asarray(x, np.uint64) for x in c)
    for _ in range(10):
        p0 = np.uint64(_M0) * c0
        p1 = np.uint64(_M1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _MASK32)
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def keep_mask(seed, offset, batch, nheads, sq, sk, p):
    """Boolean keep mask (batch, nheads, sq, sk) of the documented mapping."""
    b, h, i, j = np.meshgrid(np.arange(batch), np.arange(nheads), np.arange(sq), np.arange(sk), indexing="ij")
    bh = (b * nheads + h).astype(np.uint64)
    off = (offset & 0xFFFFFFFF) ^ (((offset >> 32) * _W0) & 0xFFFFFFFF)
    words = philox4x32_10((j.astype(np.uint64) >> np.uint64(2), i.astype(np.uint64), bh,
                           np.full(bh.shape, off, np.uint64)), seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
    w = np.choose(j % 4, words)
    return w >= np.uint64(min(int(np.floor(p * 2.0 ** 32)), 2 ** 32 - 1))


def test_philox_known_answers():
    # Random123 kat_vectors, philox4x32_10: counter and key all zero / all ones
    assert [int(x) for x in philox4x32_10((0, 0, 0, 0), 0, 0)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = 0xFFFFFFFF
    assert [int(x) for x in philox4x32_10((ones,) * 4, ones, ones)] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                                       0x6D5451FD]


SEED = (0x1234_5678_9ABC_DEF0, 0x0F1E_2D3C_4B5A_6978)


def _forward(q, k, v, backend="cpu", **kw):
    fn = fa.flash_attn_varlen_func if "cu_seqlens_q" in kw else fa.flash_attn_func
    return fn(q, k, v, return_attn_probs=True, backend=backend, **kw)


def test_forward_mask_is_the_documented_one(rng):
    q, k, v = randn(rng, (2, 13, 3, 8)), randn(rng, (2, 21, 3, 8)), randn(rng, (2, 21, 3, 8))
    _, _, probs = _forward(q, k, v, dropout_p=0.3, seed=SEED)
    keep = keep_mask(*SEED, 2, 3, 13, 21, 0.3)
    np.testing.assert_array_equal(probs >= 0, keep)  # dropped entries are marked by a negative sign


def dropout_ref_grads(q, k, v, dout, keep, p, compute_dtype=None, **kw):
    tq, tk, tv = (to_torch(x).requires_grad_() for x in (q, k, v))
    out = attention_ref_torch(tq, tk, tv, dropout_mask=keep, dropout_p=p, compute_dtype=compute_dtype, **kw)
    out.backward(to_torch(dout[:out.shape[0]]).to(out.dtype))
    return out.detach().to(torch.float64).numpy(), [t.grad.to(torch.float64).numpy() for t in (tq, tk, tv)]


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_backward_with_dropout_matches_reference(rng, dtype):
    p = 0.25
    q, k, v = randn(rng, (2, 70, 4, 32), dtype), randn(rng, (2, 67, 2, 32), dtype), randn(rng, (2, 67, 2, 32), dtype)
    dout = randn(rng, q.shape, dtype)
    out, lse, _ = _forward(q, k, v, dropout_p=p, seed=SEED, causal=True, softcap=5.0)
    grads = backward(dout, q, k, v, out, lse, dropout_p=p, seed=SEED, causal=True, softcap=5.0)
    keep = keep_mask(*SEED, 2, 4, 70, 67, p)
    o64, g64 = dropout_ref_grads(q, k, v, dout, keep, p, causal=True, softcap=5.0)
    olow, glow = dropout_ref_grads(q, k, v, dout, keep, p, compute_dtype=TORCH_DTYPES[dtype], causal=True, softcap=5.0)
    assert_close_to_ref(out, o64, olow, dtype=q.dtype, what="out")
    for name, ours, r64, rlow in zip(("dq", "dk", "dv"), grads, g64, glow):
        assert_close_to_ref(ours, r64, rlow, dtype=q.dtype, what=name)


def test_fp64_dropout_exact(rng):
    # p = 0.5: the keep factor 1 / (1 - p) = 2 is exact in the fp32 the ABI carries it in
    p = 0.5
    q, k, v = randn(rng, (1, 9, 2, 4), "fp64"), randn(rng, (1, 11, 2, 4), "fp64"), randn(rng, (1, 11, 2, 4), "fp64")
    dout = randn(rng, q.shape, "fp64")
    out, lse, _ = _forward(q, k, v, dropout_p=p, seed=7, softmax_scale=0.5)
    grads = backward(dout, q, k, v, out, lse, dropout_p=p, seed=7, softmax_scale=0.5)
    _, g64 = dropout_ref_grads(q, k, v, dout, keep_mask(7, 0, 1, 2, 9, 11, p), p, softmax_scale=0.5)
    for ours, r64 in zip(grads, g64):
        np.testing.assert_allclose(ours, r64, rtol=0, atol=1e-12)


def test_varlen_dropout_uses_sequence_coordinates(rng):
    # bh = b * nheads + h and row/column are counted inside each sequence
    p = 0.4
    cu_q, cu_k = np.array([0, 7, 19], np.int32), np.array([0, 10, 16], np.int32)
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=12, max_seqlen_k=10, dropout_p=p, seed=SEED)
    q, k, v = randn(rng, (19, 2, 16)), randn(rng, (16, 2, 16)), randn(rng, (16, 2, 16))
    dout = randn(rng, q.shape)
    # the public varlen function returns attention probabilities only for dense inputs: use the normalised entry
    out, lse, _ = fa.attention_forward(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=12, max_seqlen_k=10,
                                       dropout_p=p, softmax_scale=16 ** -0.5, rng=SEED, backend="cpu")
    grads = backward(dout, q, k, v, out, lse, **kw)
    keep = keep_mask(*SEED, 2, 2, 12, 10, p)
    rkw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    _, g64 = dropout_ref_grads(q, k, v, dout, keep, p, **rkw)
    _, glow = dropout_ref_grads(q, k, v, dout, keep, p, compute_dtype=torch.float32, **rkw)
    for name, ours, r64, rlow in zip(("dq", "dk", "dv"), grads, g64, glow):
        assert_close_to_ref(ours, r64, rlow, dtype=q.dtype, what=name)


def test_same_seed_same_bits_other_seed_differs(rng):
    q, k, v = randn(rng, (1, 40, 2, 16)), randn(rng, (1, 45, 2, 16)), randn(rng, (1, 45, 2, 16))
    dout = randn(rng, q.shape)

    def run(seed):
        out, lse, _ = _forward(q, k, v, dropout_p=0.2, seed=seed)
        return [out] + list(backward(dout, q, k, v, out, lse, dropout_p=0.2, seed=seed, deterministic=True))

    a, b, c = run(11), run(11), run(12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_cpu_and_sim_agree(rng):
    # the Metal kernels never materialise probabilities, so the shared mask shows through the results: forward and
    # backward of both backends, same seed, each checked against the reference built on the documented mask
    if "sim" not in available_backends():
        pytest.skip("sim backend not available")
    q, k, v = randn(rng, (1, 19, 2, 64)), randn(rng, (1, 23, 1, 64)), randn(rng, (1, 23, 1, 64))
    dout = randn(rng, q.shape)
    keep = keep_mask(*SEED, 1, 2, 19, 23, 0.3)
    o64, g64 = dropout_ref_grads(q, k, v, dout, keep, 0.3, causal=True)
    olow, glow = dropout_ref_grads(q, k, v, dout, keep, 0.3, compute_dtype=torch.float32, causal=True)
    for backend in ("cpu", "sim"):
        out, lse, _ = fa.attention_forward(q, k, v, dropout_p=0.3, softmax_scale=0.125, causal=True,
                                           window_size=(-1, 0), rng=SEED, backend=backend)
        grads = backward(dout, q, k, v, out, lse, backend=backend, dropout_p=0.3, seed=SEED, causal=True)
        assert_close_to_ref(out, o64, olow, what=f"{backend} out")
        for name, ours, r64, rlow in zip(("dq", "dk", "dv"), grads, g64, glow):
            assert_close_to_ref(ours, r64, rlow, what=f"{backend} {name}")


def test_kept_fraction_within_statistical_bounds(rng):
    p = 0.3
    q = randn(rng, (2, 96, 4, 8))
    _, _, probs = _forward(q, q, q, dropout_p=p, seed=123)
    n = probs.size
    kept = float((probs >= 0).mean())
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma, (kept, 1 - p, sigma)


def test_expectation_over_seeds_is_the_undropped_output(rng):
    p, n_seeds = 0.5, 200
    q, k, v = randn(rng, (1, 6, 1, 8)), randn(rng, (1, 7, 1, 8)), randn(rng, (1, 7, 1, 8))
    exact = fa.flash_attn_func(q, k, v).astype(np.float64)
    outs = np.stack([fa.flash_attn_func(q, k, v, dropout_p=p, seed=s).astype(np.float64) for s in range(n_seeds)])
    mean, sem = outs.mean(0), outs.std(0, ddof=1) / np.sqrt(n_seeds)
    assert np.all(np.abs(mean - exact) <= 5 * sem + 1e-6)
    # and the dropout really is random: the spread is far from zero
    assert sem.max() > 1e-2


def test_torch_generator_reproduces_dropout():
    # without seed=, PyTorch inputs draw (seed, offset) from torch's default generator: manual_seed reproduces
    x = torch.randn(1, 16, 2, 8, dtype=torch.float32)

    def run():
        q = x.clone().requires_grad_()
        out = fa.flash_attn_func(q, x, x, dropout_p=0.3)
        out.sum().backward()
        return out.detach(), q.grad

    torch.manual_seed(3)
    o1, g1 = run()
    torch.manual_seed(3)
    o2, g2 = run()
    o3, _ = run()
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    assert not torch.equal(o1, o3)
