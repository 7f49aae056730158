"""The float64 reference itself is checked against independent computations: PyTorch's SDPA in float64 and
hand-written scalar loops for the masks, ALiBi, softcap, varlen, rotary and the KV cache."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import DTYPES, randn
from _tolerance import assert_close_to_ref, error_budget
from flash_attn_cy.reference import (alibi_bias, attention_ref, attention_ref_torch, kvcache_ref, rotary_ref,
                                     visible_mask)

torch = pytest.importorskip("torch")


def loop_attention(q, k, v, *, scale, causal=False, window=(-1, -1), softcap=0.0, slopes=None):
    """Scalar loops over one sequence: q (sq, h, d), k/v (sk, hk, d). Returns out (sq, h, d), lse (h, sq)."""
    sq, h, d = q.shape
    sk, hk, _ = k.shape
    left, right = window
    if causal:
        right = 0
    out = np.zeros((sq, h, d))
    lse = np.full((h, sq), np.inf)
    for hh in range(h):
        kh = hh // (h // hk)
        for i in range(sq):
            scores = {}
            for j in range(sk):
                diag = i + sk - sq
                if left >= 0 and j < diag - left:
                    continue
                if right >= 0 and j > diag + right:
                    continue
                s = scale * float(np.dot(q[i, hh], k[j, kh]))
                if softcap > 0:
                    s = softcap * math.tanh(s / softcap)
                if slopes is not None:
                    s -= slopes[hh] * abs(i + sk - sq - j)
                scores[j] = s
            if not scores:
                continue
            m = max(scores.values())
            z = sum(math.exp(s - m) for s in scores.values())
            lse[hh, i] = m + math.log(z)
            for j, s in scores.items():
                out[i, hh] += math.exp(s - m) / z * v[j, kh]
    return out, lse


def test_matches_torch_sdpa_float64(rng):
    q, k, v = (rng.standard_normal((2, 37, 3, 24)) for _ in range(3))
    out = attention_ref(q, k, v)
    tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).transpose(1, 2).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)


def test_causal_square_matches_torch_sdpa(rng):
    q, k, v = (rng.standard_normal((1, 29, 2, 16)) for _ in range(3))
    out = attention_ref(q, k, v, causal=True, softmax_scale=0.3)
    tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=0.3)
    np.testing.assert_allclose(out, want.transpose(1, 2).numpy(), rtol=1e-12, atol=1e-12)


def test_gqa_matches_repeated_heads(rng):
    q = rng.standard_normal((2, 11, 6, 8))
    k, v = rng.standard_normal((2, 2, 13, 2, 8))
    out = attention_ref(q, k, v)
    rep = attention_ref(q, np.repeat(k, 3, axis=2), np.repeat(v, 3, axis=2))
    np.testing.assert_allclose(out, rep, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("sq,sk", [(7, 13), (13, 7), (1, 9), (9, 1), (8, 8)])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (False, (3, 2)), (True, (2, -1)),
                                           (False, (0, 0)), (False, (-1, 1))])
def test_masks_match_loop(rng, sq, sk, causal, window):
    q = rng.standard_normal((1, sq, 4, 5))
    k, v = rng.standard_normal((2, 1, sk, 2, 5))
    out, lse = attention_ref(q, k, v, causal=causal, window_size=window, return_lse=True)
    want, want_lse = loop_attention(q[0], k[0], v[0], scale=5 ** -0.5, causal=causal, window=window)
    np.testing.assert_allclose(out[0], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse[0]), np.isinf(want_lse))
    np.testing.assert_allclose(lse[0], want_lse, rtol=1e-12, atol=1e-12)


def test_rows_without_keys_are_zero_with_inf_lse(rng):
    # sq > sk with causal: the first sq - sk query rows see nothing under bottom-right alignment
    q = rng.standard_normal((1, 6, 1, 4))
    k, v = rng.standard_normal((2, 1, 3, 1, 4))
    out, lse = attention_ref(q, k, v, causal=True, return_lse=True)
    assert np.all(out[0, :3] == 0) and np.all(np.isposinf(lse[0, 0, :3]))
    assert np.all(np.isfinite(lse[0, 0, 3:])) and np.any(out[0, 3:] != 0)


def test_softcap_and_alibi_match_loop(rng):
    q = rng.standard_normal((2, 9, 4, 6)) * 3
    k, v = rng.standard_normal((2, 2, 12, 2, 6)) * 3
    slopes = rng.uniform(0.05, 0.5, size=(2, 4))
    out, lse = attention_ref(q, k, v, softcap=2.5, alibi_slopes=slopes, causal=True, return_lse=True)
    for b in range(2):
        want, want_lse = loop_attention(q[b], k[b], v[b], scale=6 ** -0.5, causal=True, softcap=2.5,
                                        slopes=slopes[b])
        np.testing.assert_allclose(out[b], want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lse[b], want_lse, rtol=1e-12, atol=1e-12)
    # 1-d slopes are shared by the batch
    out1 = attention_ref(q, k, v, alibi_slopes=slopes[0])
    want, _ = loop_attention(q[1], k[1], v[1], scale=6 ** -0.5, slopes=slopes[0])
    np.testing.assert_allclose(out1[1], want, rtol=1e-12, atol=1e-12)


def test_alibi_bias_formula():
    b = alibi_bias(np.array([0.5]), 2, 4)
    # query 0 aligns with key 2, query 1 with key 3
    np.testing.assert_allclose(b[0], -0.5 * np.array([[2, 1, 0, 1], [3, 2, 1, 0]]))
    m = visible_mask(2, 4, causal=True)
    np.testing.assert_array_equal(m, [[1, 1, 1, 0], [1, 1, 1, 1]])


def test_varlen_equals_dense_per_sequence(rng):
    lens_q, lens_k = [5, 0, 9, 1], [7, 4, 3, 1]
    cq = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rng.standard_normal((cq[-1], 4, 8))
    k, v = rng.standard_normal((2, ck[-1], 2, 8))
    out, lse = attention_ref(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, causal=True, return_lse=True)
    assert out.shape == q.shape and lse.shape == (4, cq[-1])
    for b in range(4):
        if lens_q[b] == 0:
            continue
        o, l = attention_ref(q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]], v[None, ck[b]:ck[b + 1]],
                             causal=True, return_lse=True)
        np.testing.assert_array_equal(out[cq[b]:cq[b + 1]], o[0])
        np.testing.assert_array_equal(lse[:, cq[b]:cq[b + 1]], l[0])


def test_sequences_without_keys(rng):
    q = rng.standard_normal((5, 2, 4))
    k = rng.standard_normal((3, 2, 4))
    cq, ck = np.array([0, 2, 5], np.int32), np.array([0, 0, 3], np.int32)
    out, lse = attention_ref(q, k, k, cu_seqlens_q=cq, cu_seqlens_k=ck, return_lse=True)
    assert np.all(out[:2] == 0) and np.all(np.isposinf(lse[:, :2])) and np.all(np.isfinite(lse[:, 2:]))
    t_out, t_lse = attention_ref_torch(*(torch.from_numpy(x) for x in (q, k, k)), cu_seqlens_q=cq, cu_seqlens_k=ck,
                                       return_lse=True)
    np.testing.assert_allclose(t_out.numpy(), out, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(t_lse.numpy()), np.isinf(lse))
    # a KV cache that is empty and gets no new rows
    o, l, _, _ = kvcache_ref(rng.standard_normal((1, 2, 2, 4)), np.zeros((1, 8, 2, 4)), np.zeros((1, 8, 2, 4)),
                             cache_seqlens=0, return_lse=True)
    assert np.all(o == 0) and np.all(np.isposinf(l))


def test_seqused_k_ignores_tail(rng):
    q = rng.standard_normal((2, 3, 2, 4))
    k, v = rng.standard_normal((2, 2, 10, 2, 4))
    out = attention_ref(q, k, v, seqused_k=[4, 10], causal=True)
    np.testing.assert_allclose(out[0], attention_ref(q[:1], k[:1, :4], v[:1, :4], causal=True)[0], rtol=1e-14)
    np.testing.assert_allclose(out[1], attention_ref(q[1:], k[1:], v[1:], causal=True)[0], rtol=1e-14)


def test_dropout_mask_scaling(rng):
    q, k, v = rng.standard_normal((3, 1, 5, 2, 4))
    keep = rng.random((1, 2, 5, 5)) > 0.3
    out = attention_ref(q, k, v, dropout_mask=keep, dropout_p=0.3)
    s = np.einsum("ihd,jhd->hij", q[0], k[0]) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("hij,jhd->ihd", p * keep[0] / 0.7, v[0])
    np.testing.assert_allclose(out[0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_low_precision_reference_error_is_dtype_sized(rng, dtype):
    dt = DTYPES[dtype]
    q, k, v = (randn(rng, (2, 64, 2, 32), dtype) for _ in range(3))
    ref = attention_ref(q, k, v, causal=True)
    lowp = attention_ref(q, k, v, causal=True, compute_dtype=dt)
    assert lowp.dtype == dt
    err = np.max(np.abs(lowp.astype(np.float64) - ref))
    eps = float(np.finfo(np.float32).eps) if dtype == "fp32" else {"fp16": 2.0 ** -10, "bf16": 2.0 ** -7}[dtype]
    assert 0 < err < 8 * eps, err
    # the rule accepts the low-precision reference itself and rejects a visibly wrong answer
    assert_close_to_ref(lowp, ref, lowp)
    allowed, _ = error_budget(ref, lowp)
    with pytest.raises(AssertionError, match="exceeds allowed"):
        assert_close_to_ref(ref + 1.5 * allowed, ref, lowp)


def test_tolerance_handles_inf_lse():
    ref = np.array([1.0, np.inf])
    assert_close_to_ref(np.array([1.0, np.inf], np.float32), ref, np.array([1.0, np.inf], np.float32))
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_to_ref(np.array([1.0, 5.0]), ref, np.array([1.0, np.inf], np.float32))
    allowed, _ = error_budget(ref, np.array([1.0, np.inf], np.float32))
    assert 0 < allowed < 1e-5


def test_torch_reference_matches_numpy(rng):
    q = rng.standard_normal((2, 9, 4, 8))
    k, v = rng.standard_normal((2, 2, 12, 2, 8))
    slopes = rng.uniform(0.1, 0.4, size=4)
    kw = dict(causal=True, window_size=(5, -1), softcap=3.0, alibi_slopes=slopes)
    out, lse = attention_ref(q, k, v, return_lse=True, **kw)
    t_out, t_lse = attention_ref_torch(*(torch.from_numpy(x) for x in (q, k, v)), return_lse=True, **kw)
    np.testing.assert_allclose(t_out.numpy(), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t_lse.numpy(), lse, rtol=1e-12, atol=1e-12)
    # varlen with an empty query sequence and a row that sees no key
    cq, ck = np.array([0, 4, 4, 9], np.int32), np.array([0, 2, 5, 12], np.int32)
    qv, kv_, vv = rng.standard_normal((9, 4, 8)), rng.standard_normal((12, 2, 8)), rng.standard_normal((12, 2, 8))
    out, lse = attention_ref(qv, kv_, vv, cu_seqlens_q=cq, cu_seqlens_k=ck, causal=True, return_lse=True)
    t_out, t_lse = attention_ref_torch(*(torch.from_numpy(x) for x in (qv, kv_, vv)), cu_seqlens_q=cq,
                                       cu_seqlens_k=ck, causal=True, return_lse=True)
    np.testing.assert_allclose(t_out.numpy(), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(t_lse.numpy()), np.isinf(lse))


def test_torch_reference_gradients(rng):
    q = torch.from_numpy(rng.standard_normal((1, 5, 2, 3))).requires_grad_()
    k = torch.from_numpy(rng.standard_normal((1, 3, 1, 3))).requires_grad_()
    v = torch.from_numpy(rng.standard_normal((1, 3, 1, 3))).requires_grad_()
    # causal with sq > sk: two rows see nothing; gradients must stay finite (zero) there
    f = lambda q, k, v: attention_ref_torch(q, k, v, causal=True, softcap=2.0, alibi_slopes=np.array([0.3, 0.1]))
    assert torch.autograd.gradcheck(f, (q, k, v))
    f(q, k, v).sum().backward()
    assert torch.isfinite(q.grad).all() and torch.all(q.grad[0, :2] == 0)


def test_torch_low_precision_reference(rng):
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 16, 2, 8))).to(torch.bfloat16) for _ in range(3))
    ref = attention_ref_torch(q, k, v, causal=True)
    lowp = attention_ref_torch(q, k, v, causal=True, compute_dtype=torch.bfloat16)
    assert lowp.dtype == torch.bfloat16 and ref.dtype == torch.float64
    err = (lowp.double() - ref).abs().max().item()
    assert 0 < err < 0.05


def _rotate_loop(x, cos, sin, pos, interleaved):
    x = x.copy()
    half = cos.shape[1]
    for r in range(x.shape[0]):
        for i in range(half):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + half)
            c, s = cos[pos[r], i], sin[pos[r], i]
            x0, x1 = x[r, :, a].copy(), x[r, :, b].copy()
            x[r, :, a], x[r, :, b] = x0 * c - x1 * s, x0 * s + x1 * c
    return x


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_matches_loop(rng, interleaved):
    x = rng.standard_normal((5, 2, 10))
    ang = rng.uniform(0, 3, size=(12, 3))
    pos = np.array([0, 3, 4, 11, 7])
    got = rotary_ref(x, np.cos(ang), np.sin(ang), pos, interleaved=interleaved)
    np.testing.assert_allclose(got, _rotate_loop(x, np.cos(ang), np.sin(ang), pos, interleaved), rtol=1e-14)
    np.testing.assert_array_equal(got[..., 6:], x[..., 6:])


@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_append_then_attend(rng, paged):
    b, sq, h, hk, d, cap, snew = 2, 2, 4, 2, 8, 32, 2
    q = rng.standard_normal((b, sq, h, d))
    kc, vc = rng.standard_normal((2, b, cap, hk, d))
    knew, vnew = rng.standard_normal((2, b, snew, hk, d))
    lens = np.array([5, 17])
    ang = rng.uniform(0, 3, size=(cap, 2))
    kw = dict(rotary_cos=np.cos(ang), rotary_sin=np.sin(ang), cache_seqlens=lens, causal=True)
    if paged:
        page = 16
        perm = np.array([3, 0, 2, 1])  # physical pages in scrambled order
        block_table = perm.reshape(b, cap // page)
        kp = np.zeros((4, page, hk, d))
        vp = np.zeros((4, page, hk, d))
        for bb in range(b):
            for blk in range(cap // page):
                kp[block_table[bb, blk]] = kc[bb, blk * page:(blk + 1) * page]
                vp[block_table[bb, blk]] = vc[bb, blk * page:(blk + 1) * page]
        out, kp2, vp2 = kvcache_ref(q, kp, vp, knew, vnew, block_table=block_table, **kw)
        k2 = np.stack([np.concatenate([kp2[block_table[bb, i]] for i in range(2)]) for bb in range(b)])
    else:
        out, k2, v2 = kvcache_ref(q, kc, vc, knew, vnew, **kw)
    for bb in range(b):
        n = lens[bb]
        pos = n + np.arange(snew)
        krot = _rotate_loop(knew[bb], np.cos(ang), np.sin(ang), pos, True)
        np.testing.assert_allclose(k2[bb, n:n + snew], krot, rtol=1e-14)
        np.testing.assert_array_equal(k2[bb, :n], kc[bb, :n])
        keys = np.concatenate([kc[bb, :n], krot])
        vals = np.concatenate([vc[bb, :n], vnew[bb]])
        qrot = _rotate_loop(q[bb], np.cos(ang), np.sin(ang), pos, True)
        want, _ = loop_attention(qrot, keys, vals, scale=d ** -0.5, causal=True)
        np.testing.assert_allclose(out[bb], want, rtol=1e-12, atol=1e-12)


def test_kvcache_leftpad_and_batch_idx(rng):
    """cache_seqlens counts from row 0 (leftpad included); keys before the leftpad are ignored; rotary positions are
    absolute cache rows (flash_attn 2.x adds leftpad_k to its cos/sin row); cache_batch_idx picks the cache row."""
    b, sq, h, d, cap, snew = 2, 2, 2, 6, 24, 2
    q = rng.standard_normal((b, sq, h, d))
    kc, vc = rng.standard_normal((2, 3, cap, h, d))
    knew, vnew = rng.standard_normal((2, b, snew, h, d))
    lens, leftpad, bidx = np.array([9, 15]), np.array([4, 0]), np.array([2, 0])
    ang = rng.uniform(0, 3, size=(cap, 3))
    out, k2, v2 = kvcache_ref(q, kc, vc, knew, vnew, rotary_cos=np.cos(ang), rotary_sin=np.sin(ang),
                              cache_seqlens=lens, cache_leftpad=leftpad, cache_batch_idx=bidx, causal=True,
                              rotary_interleaved=False)
    for bb in range(b):
        n, lp, row = lens[bb], leftpad[bb], bidx[bb]
        pos = n + np.arange(snew)
        krot = _rotate_loop(knew[bb], np.cos(ang), np.sin(ang), pos, False)
        np.testing.assert_allclose(k2[row, n:n + snew], krot, rtol=1e-14)
        keys = np.concatenate([kc[row, lp:n], krot])
        vals = np.concatenate([vc[row, lp:n], vnew[bb]])
        qrot = _rotate_loop(q[bb], np.cos(ang), np.sin(ang), pos, False)
        want, _ = loop_attention(qrot, keys, vals, scale=d ** -0.5, causal=True)
        np.testing.assert_allclose(out[bb], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(k2[1], kc[1])  # the unused cache row is untouched


@pytest.mark.parametrize("compute_dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
def test_nan_in_a_visible_input_propagates(compute_dtype, where):
    """A NaN in q, or in a key/value some query row sees, makes that row NaN (out and, for q/k, the LSE), as plain
    float64 math would; rows that cannot see it stay finite. The reference once hid it as a row of zeros."""
    from flash_attn_cy import reference as R
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 6, 2, 8)) for _ in range(3))
    x = {"q": q, "k": k, "v": v}[where]
    x[0, 3, 1, 2] = np.nan  # row / key 3, head 1
    out, lse = R.attention_ref(q, k, v, causal=True, return_lse=True, compute_dtype=compute_dtype)
    out, lse = np.asarray(out, np.float64), np.asarray(lse, np.float64)
    bad_rows = [3] if where == "q" else [3, 4, 5]  # causal: key 3 is seen by rows 3.. only
    for r in range(6):
        nan_row = np.isnan(out[0, r, 1])
        assert nan_row.any() == (r in bad_rows), (r, out[0, r, 1])
        assert np.isnan(lse[0, 1, r]) == (r in bad_rows and where != "v"), (r, lse[0, 1, r])
    assert np.isfinite(out[0, :, 0]).all() and np.isfinite(lse[0, 0]).all()  # the other head is untouched
    t_out = R.attention_ref_torch(*(torch.tensor(a) for a in (q, k, v)), causal=True)
    assert np.array_equal(np.isnan(t_out.numpy()), np.isnan(R.attention_ref(q, k, v, causal=True)))
