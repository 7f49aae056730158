"""flash_attn_with_kvcache semantics against a plain float64 re-implementation written here: in-place append into
the caller's cache (NumPy and torch), rotary (interleaved and half-split, q positions causal vs not), paged caches,
cache_batch_idx, cache_leftpad, GQA/ALiBi/window/softcap, LSE; tolerance rule as everywhere."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import reference as R

from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn, to_torch

torch = pytest.importorskip("torch")


def rotate(x, cos, sin, pos, interleaved):
    """x (rows, heads, d) float64 rotated at integer positions pos (rows,)."""
    x = np.array(x, dtype=np.float64)
    half = cos.shape[1]
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    if interleaved:
        a, b = x[..., 0:2 * half:2].copy(), x[..., 1:2 * half:2].copy()
        x[..., 0:2 * half:2], x[..., 1:2 * half:2] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., :half].copy(), x[..., half:2 * half].copy()
        x[..., :half], x[..., half:2 * half] = a * c - b * s, a * s + b * c
    return x


def kv_reference(q, k_cache, v_cache, k=None, v=None, *, cos=None, sin=None, seqlens, batch_idx=None, leftpad=None,
                 block_table=None, causal=False, window_size=(-1, -1), interleaved=True, compute_dtype=np.float64,
                 **attn):
    """flash_attn_with_kvcache in float64 from first principles.

    Sequence b owns logical cache rows 0.. (through batch_idx or its block_table pages); its valid keys are logical
    rows leftpad[b] .. seqlens[b] + seqlen_new - 1; new rows land at seqlens[b] + t and rotate at that absolute
    position; q rotates at seqlens[b] + i when causal/windowed, else all at seqlens[b].
    Returns out, lse and float64 copies of the caches after the append."""
    q = R.to_float64(q)
    kc, vc = R.to_float64(k_cache).copy(), R.to_float64(v_cache).copy()
    cos64 = None if cos is None else R.to_float64(cos)
    sin64 = None if sin is None else R.to_float64(sin)
    lowp = np.dtype(compute_dtype) != np.float64
    batch, sq = q.shape[:2]
    snew = 0 if k is None else k.shape[1]
    local = causal or tuple(window_size) != (-1, -1)
    outs, lses = [], []
    for b in range(batch):
        def rows(idx):
            idx = np.asarray(idx, dtype=np.int64)
            if block_table is not None:
                page = kc.shape[1]
                return block_table[b][idx // page], idx % page
            cb = b if batch_idx is None else batch_idx[b]
            return np.full(idx.shape, cb), idx
        start = 0 if leftpad is None else int(leftpad[b])
        n0 = int(seqlens[b])
        qb = q[b]
        if k is not None:
            kn, vn = R.to_float64(k[b]), R.to_float64(v[b])
            if cos64 is not None:
                kn = rotate(kn, cos64, sin64, n0 + np.arange(snew), interleaved)
                qpos = n0 + np.arange(sq) if local else np.full(sq, n0)
                qb = rotate(qb, cos64, sin64, qpos, interleaved)
            if lowp:  # the cache stores the rotated rows in the input dtype
                kn = R.round_to(kn, compute_dtype)
            dst = rows(n0 + np.arange(snew))
            kc[dst], vc[dst] = kn, vn
        src = rows(np.arange(start, n0 + snew))
        if src[0].size == 0:  # no key at all: zeros and +inf (flash_attn); the reference needs >= 1 key
            outs.append(np.zeros(qb.shape, np.float32 if lowp else np.float64))
            lses.append(np.full((qb.shape[1], sq), np.inf, np.float32 if lowp else np.float64))
            continue
        o, lse = R.attention_ref(qb[None], kc[src][None], vc[src][None], causal=causal, window_size=window_size,
                                 compute_dtype=compute_dtype, return_lse=True,
                                 **{key: (val[b] if key == "alibi_slopes" and np.ndim(val) == 2 else val)
                                    for key, val in attn.items()})
        outs.append(o[0])
        lses.append(lse[0])
    return np.stack(outs), np.stack(lses), kc, vc


def check(out, lse, q, kc0, vc0, dtype, **kw):
    ref, ref_lse, _, _ = kv_reference(q, kc0, vc0, **kw)
    low, low_lse, _, _ = kv_reference(q, kc0, vc0, compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(out, ref, low)
    if lse is not None:
        assert_close_to_ref(lse, ref_lse, low_lse, dtype=DTYPES[dtype], what="softmax_lse")


def rotary_tables(rng, rows, rotary_dim, dtype):
    angle = rng.uniform(0, 2 * np.pi, (rows, rotary_dim // 2))
    return np.cos(angle).astype(DTYPES[dtype]), np.sin(angle).astype(DTYPES[dtype])


# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("interleaved", [True, False])
def test_append_rotary_attend(rng, dtype, causal, interleaved):
    batch, sq, snew, cap, h, hk, d = 3, 4, 4, 48, 4, 2, 32
    q = randn(rng, (batch, sq, h, d), dtype)
    kc, vc = randn(rng, (batch, cap, hk, d), dtype), randn(rng, (batch, cap, hk, d), dtype)
    k, v = randn(rng, (batch, snew, hk, d), dtype), randn(rng, (batch, snew, hk, d), dtype)
    seqlens = np.array([0, 17, 44], np.int32)
    cos, sin = rotary_tables(rng, cap, 24, dtype)
    kc0, vc0, q0 = kc.copy(), vc.copy(), q.copy()
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                          causal=causal, rotary_interleaved=interleaved, return_softmax_lse=True,
                                          backend="cpu")
    np.testing.assert_array_equal(q, q0)  # q itself is never rotated in place
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (batch, h, sq) and lse.dtype == np.float32
    kw = dict(k=k, v=v, cos=cos, sin=sin, seqlens=seqlens, causal=causal, interleaved=interleaved)
    check(out, lse, q, kc0, vc0, dtype, **kw)
    # the caller's cache holds the (rotated) new rows; everything else is untouched
    _, _, kc_ref, vc_ref = kv_reference(q, kc0, vc0, **kw)
    _, _, kc_low, _ = kv_reference(q, kc0, vc0, compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(kc, kc_ref, kc_low, what="k_cache")
    np.testing.assert_array_equal(R.to_float64(vc), vc_ref)
    for b in range(batch):
        untouched = np.r_[0:seqlens[b], seqlens[b] + snew:cap]
        np.testing.assert_array_equal(kc[b, untouched], kc0[b, untouched])


def test_append_in_place_torch(rng):
    q = to_torch(randn(rng, (2, 1, 2, 16)))
    kc, vc = to_torch(randn(rng, (2, 20, 2, 16))), to_torch(randn(rng, (2, 20, 2, 16)))
    k, v = to_torch(randn(rng, (2, 1, 2, 16))), to_torch(randn(rng, (2, 1, 2, 16)))
    ptr = kc.data_ptr()
    seqlens = torch.tensor([3, 19], dtype=torch.int32)
    out = fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, backend="cpu")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert kc.data_ptr() == ptr
    assert torch.equal(kc[0, 3], k[0, 0]) and torch.equal(kc[1, 19], k[1, 0])
    assert torch.equal(vc[0, 3], v[0, 0]) and torch.equal(vc[1, 19], v[1, 0])


def test_append_into_strided_cache_view(rng):
    """A cache that is a strided view (e.g. one layer of a bigger buffer) is updated in place through its strides."""
    big = randn(rng, (2, 2, 24, 3, 16))  # [layer, batch, seq, heads, d]
    kc, vc = big[0, :, :, :2], big[1, :, :, :2]
    q, k, v = randn(rng, (2, 2, 4, 16)), randn(rng, (2, 2, 2, 16)), randn(rng, (2, 2, 2, 16))
    kc0, vc0, big0 = kc.copy(), vc.copy(), big.copy()
    out = fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=5, causal=True, backend="cpu")
    np.testing.assert_array_equal(big[0, :, 5:7, :2], k)
    np.testing.assert_array_equal(big[1, :, 5:7, :2], v)
    written = np.zeros(big.shape, bool)
    written[:, :, 5:7, :2] = True
    np.testing.assert_array_equal(big[~written], big0[~written])  # nothing outside the new rows changed
    check(out, None, q, kc0, vc0, "fp32", k=k, v=v, seqlens=np.array([5, 5]), causal=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_paged_cache(rng, dtype):
    batch, page, nblocks, h, hk, d = 2, 16, 9, 4, 1, 24
    bt = rng.permutation(nblocks)[:2 * 4].reshape(batch, 4).astype(np.int32)
    kc, vc = randn(rng, (nblocks, page, hk, d), dtype), randn(rng, (nblocks, page, hk, d), dtype)
    q = randn(rng, (batch, 3, h, d), dtype)
    k, v = randn(rng, (batch, 3, hk, d), dtype), randn(rng, (batch, 3, hk, d), dtype)
    seqlens = np.array([14, 40], np.int32)  # both appends cross a page boundary
    cos, sin = rotary_tables(rng, 64, 8, dtype)
    kc0, vc0 = kc.copy(), vc.copy()
    out = fa.flash_attn_with_kvcache(q, kc, vc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                     block_table=bt, causal=True, backend="cpu")
    kw = dict(k=k, v=v, cos=cos, sin=sin, seqlens=seqlens, block_table=bt, causal=True)
    check(out, None, q, kc0, vc0, dtype, **kw)
    _, _, _, vc_ref = kv_reference(q, kc0, vc0, **kw)
    np.testing.assert_array_equal(R.to_float64(vc), vc_ref)


def test_cache_batch_idx_and_leftpad(rng):
    batch, cap, h, d = 3, 40, 2, 16
    kc, vc = randn(rng, (5, cap, h, d)), randn(rng, (5, cap, h, d))
    q, k, v = randn(rng, (batch, 2, h, d)), randn(rng, (batch, 2, h, d)), randn(rng, (batch, 2, h, d))
    idx = np.array([4, 0, 2], np.int32)
    seqlens = np.array([10, 3, 30], np.int32)
    leftpad = np.array([4, 0, 29], np.int32)
    cos, sin = rotary_tables(rng, cap, 16, "fp32")
    kc0, vc0 = kc.copy(), vc.copy()
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                          cache_batch_idx=idx, cache_leftpad=leftpad, causal=True,
                                          return_softmax_lse=True, backend="cpu")
    kw = dict(k=k, v=v, cos=cos, sin=sin, seqlens=seqlens, batch_idx=idx, leftpad=leftpad, causal=True)
    check(out, lse, q, kc0, vc0, "fp32", **kw)
    _, _, kc_ref, vc_ref = kv_reference(q, kc0, vc0, **kw)
    np.testing.assert_allclose(kc, kc_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(vc, vc_ref)
    np.testing.assert_array_equal(kc[[1, 3]], kc0[[1, 3]])  # rows no sequence maps to


@pytest.mark.parametrize("opts", [
    dict(window_size=(5, 0)),
    dict(softcap=3.0),
    dict(alibi="heads", causal=True),
    dict(alibi="batch"),
    dict(softmax_scale=0.2, causal=True),
])
def test_attention_options_without_append(rng, opts):
    opts = dict(opts)
    batch, cap, h, hk, d = 2, 33, 6, 3, 40
    q, kc, vc = randn(rng, (batch, 5, h, d)), randn(rng, (batch, cap, hk, d)), randn(rng, (batch, cap, hk, d))
    alibi = opts.pop("alibi", None)
    if alibi == "heads":
        opts["alibi_slopes"] = rng.uniform(0.1, 0.5, h).astype(np.float32)
    elif alibi == "batch":
        opts["alibi_slopes"] = rng.uniform(0.1, 0.5, (batch, h)).astype(np.float32)
    seqlens = np.array([7, 33], np.int32)
    kc0 = kc.copy()
    out = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, backend="cpu", **opts)
    np.testing.assert_array_equal(kc, kc0)
    check(out, None, q, kc, vc, "fp32", seqlens=seqlens, **opts)


def test_no_cache_seqlens_means_full_cache(rng):
    q, kc, vc = randn(rng, (2, 3, 2, 8)), randn(rng, (2, 11, 2, 8)), randn(rng, (2, 11, 2, 8))
    out = fa.flash_attn_with_kvcache(q, kc, vc, causal=True, backend="cpu")
    np.testing.assert_allclose(out, fa.flash_attn_func(q, kc, vc, causal=True, backend="cpu"), rtol=1e-6, atol=1e-6)


def test_empty_cache_rows_give_zeros(rng):
    q, kc, vc = randn(rng, (2, 1, 2, 8)), randn(rng, (2, 11, 2, 8)), randn(rng, (2, 11, 2, 8))
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=np.array([0, 4], np.int32),
                                          return_softmax_lse=True, backend="cpu")
    assert np.all(out[0] == 0) and np.all(np.isposinf(lse[0]))
    check(out[1:], lse[1:], q[1:], kc[1:], vc[1:], "fp32", seqlens=np.array([4]))


def test_decode_loop_matches_full_attention(rng):
    """Token-by-token decoding through the cache equals causal attention over the whole sequence."""
    total, h, d = 9, 2, 16
    qs, ks, vs = randn(rng, (1, total, h, d)), randn(rng, (1, total, h, d)), randn(rng, (1, total, h, d))
    kc, vc = np.zeros((1, 16, h, d), np.float32), np.zeros((1, 16, h, d), np.float32)
    outs = []
    for t in range(total):
        outs.append(fa.flash_attn_with_kvcache(qs[:, t:t + 1], kc, vc, ks[:, t:t + 1], vs[:, t:t + 1],
                                               cache_seqlens=t, causal=True, backend="cpu"))
    full = fa.flash_attn_func(qs, ks, vs, causal=True, backend="cpu")
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kc[:, :total], ks)


def test_read_only_q_and_new_rows(rng):
    """Without rotary nothing but the cache is written: read-only q, k, v are fine."""
    q, k, v = randn(rng, (1, 2, 2, 8)), randn(rng, (1, 2, 2, 8)), randn(rng, (1, 2, 2, 8))
    for x in (q, k, v):
        x.flags.writeable = False
    kc, vc = np.zeros((1, 16, 2, 8), np.float32), np.zeros((1, 16, 2, 8), np.float32)
    out = fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=0, causal=True, backend="cpu")
    np.testing.assert_array_equal(kc[:, :2], k)
    check(out, None, q, np.zeros_like(kc), np.zeros_like(vc), "fp32", k=k, v=v, seqlens=np.array([0]), causal=True)


def test_append_in_place_torch_bf16_paged(rng):
    page = 16
    kc = to_torch(randn(rng, (4, page, 2, 32), "bf16"))
    vc = to_torch(randn(rng, (4, page, 2, 32), "bf16"))
    kc0, vc0 = kc.clone(), vc.clone()
    q = to_torch(randn(rng, (1, 1, 4, 32), "bf16"))
    k, v = to_torch(randn(rng, (1, 1, 2, 32), "bf16")), to_torch(randn(rng, (1, 1, 2, 32), "bf16"))
    bt = torch.tensor([[2, 0, 3]], dtype=torch.int32)
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=torch.tensor([20], dtype=torch.int32),
                                          block_table=bt, return_softmax_lse=True, backend="cpu")
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32 and tuple(lse.shape) == (1, 4, 1)
    assert torch.equal(kc[0, 4], k[0, 0]) and torch.equal(vc[0, 4], v[0, 0])  # row 20 = page bt[0][1]=0, slot 4
    changed = (kc != kc0).any(dim=(2, 3))
    assert changed.sum() == 1 and bool(changed[0, 4])
    check(out, lse, q, kc0, vc0, "bf16", k=k, v=v, seqlens=np.array([20]), block_table=bt.numpy())


def test_leftpad_with_alibi_and_window(rng):
    """Masks and ALiBi distances count keys from the first valid row (cache_leftpad), as flash_attn."""
    batch, cap, h, d = 2, 32, 2, 16
    kc, vc = randn(rng, (batch, cap, h, d)), randn(rng, (batch, cap, h, d))
    q = randn(rng, (batch, 3, h, d))
    seqlens = np.array([20, 31], np.int32)
    leftpad = np.array([6, 2], np.int32)
    slopes = rng.uniform(0.1, 0.5, (batch, h)).astype(np.float32)
    out = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, cache_leftpad=leftpad, alibi_slopes=slopes,
                                     window_size=(7, 1), backend="cpu")
    check(out, None, q, kc, vc, "fp32", seqlens=seqlens, leftpad=leftpad, alibi_slopes=slopes, window_size=(7, 1))


def test_zero_capacity_cache(rng):
    q = randn(rng, (2, 1, 2, 8))
    empty = np.zeros((2, 0, 2, 8), np.float32)
    out, lse = fa.flash_attn_with_kvcache(q, empty, empty, cache_seqlens=0, return_softmax_lse=True, backend="cpu")
    assert np.all(out == 0) and np.all(np.isposinf(lse))


def test_zero_new_rows_append_nothing(rng):
    # k/v with seqlen_new = 0 (an empty chunk in a streaming loop): nothing is written, the cache is attended as is
    q, kc, vc = randn(rng, (2, 3, 4, 16)), randn(rng, (2, 24, 2, 16)), randn(rng, (2, 24, 2, 16))
    empty = np.zeros((2, 0, 2, 16), np.float32)
    lens = np.array([5, 17], np.int32)
    kc0, vc0 = kc.copy(), vc.copy()
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, empty, empty, cache_seqlens=lens, causal=True,
                                          return_softmax_lse=True, backend="cpu")
    np.testing.assert_array_equal(kc, kc0)
    np.testing.assert_array_equal(vc, vc0)
    want, want_lse = fa.flash_attn_with_kvcache(q, kc0, vc0, cache_seqlens=lens, causal=True,
                                                return_softmax_lse=True, backend="cpu")
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(lse, want_lse)
    cos = np.ones((32, 4), np.float32)
    with pytest.raises(ValueError, match="seqlen_new = 0"):
        fa.flash_attn_with_kvcache(q, kc, vc, empty, empty, cos, cos, cache_seqlens=lens, backend="cpu")
