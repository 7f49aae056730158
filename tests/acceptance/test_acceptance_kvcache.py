"""Acceptance tests for flash_attn_with_kvcache with flash_attn 2.x semantics, checked against an independent
float64 computation written here (append at cache_seqlens, rotary at absolute positions, paged caches,
cache_batch_idx, leftpad) and flash_attn_cy.reference.kvcache_ref for the low-precision error budget."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flash_attn_cy import flash_attn_with_kvcache
from flash_attn_cy import reference as R

from _acc_ref import assert_rule, attn64, t64


def rotate64(x, cos, sin, pos, interleaved):
    """x (s, h, d) float64 rotated at positions pos (s,) with rotary_dim = 2 * cos.shape[1]."""
    x = x.clone()
    r = 2 * cos.shape[1]
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]
    if interleaved:
        x0, x1 = x[..., 0:r:2].clone(), x[..., 1:r:2].clone()
        x[..., 0:r:2] = x0 * c - x1 * s
        x[..., 1:r:2] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., : r // 2].clone(), x[..., r // 2: r].clone()
        x[..., : r // 2] = x0 * c - x1 * s
        x[..., r // 2: r] = x1 * c + x0 * s
    return x


def kv64(q, kc, vc, k=None, v=None, *, cos=None, sin=None, seqlens, batch_idx=None, leftpad=None, causal=False,
         window=(-1, -1), interleaved=True, block_table=None, **kw):
    """Independent float64 flash_attn_with_kvcache: returns (out, lse, k_cache_after, v_cache_after)."""
    q, kc, vc = t64(q), t64(kc).clone(), t64(vc).clone()
    b, sq = q.shape[:2]
    snew = 0 if k is None else k.shape[1]
    outs, lses = [], []
    for i in range(b):
        L = int(seqlens[i])
        lp = 0 if leftpad is None else int(leftpad[i])
        if block_table is not None:
            page = kc.shape[1]
            rows_k = kc[block_table[i]].reshape(-1, *kc.shape[2:])
            rows_v = vc[block_table[i]].reshape(-1, *vc.shape[2:])
        else:
            row = i if batch_idx is None else int(batch_idx[i])
            rows_k, rows_v = kc[row], vc[row]
        qi = q[i]
        if k is not None:
            kn, vn = t64(k[i]), t64(v[i])
            if cos is not None:
                c, s = t64(cos), t64(sin)
                kn = rotate64(kn, c, s, torch.arange(L, L + snew), interleaved)
                qpos = torch.arange(L, L + sq) if (causal or window != (-1, -1)) else torch.full((sq,), L)
                qi = rotate64(qi, c, s, qpos, interleaved)
            rows_k[L:L + snew] = kn
            rows_v[L:L + snew] = vn
            if block_table is not None:  # write the pages back
                for p, blk in enumerate(block_table[i]):
                    kc[blk] = rows_k[p * page:(p + 1) * page]
                    vc[blk] = rows_v[p * page:(p + 1) * page]
        keys, vals = rows_k[lp:L + snew], rows_v[lp:L + snew]
        o, l = attn64(qi[None], keys[None], vals[None], causal=causal, window=window, **kw)
        outs.append(o[0])
        lses.append(l[0])
    return torch.stack(outs), torch.stack(lses), kc, vc


def _rot_tables(rng, n, rot_dim, dtype):
    ang = rng.uniform(0, 2 * np.pi, (n, rot_dim // 2))
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


@pytest.mark.parametrize("backend", ["cpu", "sim"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_append_with_rotary(rng, backend, dtype, interleaved, causal):
    b, sq, snew, h, hk, d, cap, rot = 3, 3, 3, 4, 2, 40, 50, 24  # rotary_dim < headdim
    q = rng.standard_normal((b, sq, h, d)).astype(dtype)
    kc = rng.standard_normal((b, cap, hk, d)).astype(dtype)
    vc = rng.standard_normal((b, cap, hk, d)).astype(dtype)
    k = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    v = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    seqlens = np.array([0, 17, 47], np.int32)
    cos, sin = _rot_tables(rng, cap, rot, dtype)
    kc0, vc0 = kc.copy(), vc.copy()
    out, lse = flash_attn_with_kvcache(q, kc, vc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                       causal=causal, rotary_interleaved=interleaved, return_softmax_lse=True,
                                       backend=backend)
    e_out, e_lse, e_kc, e_vc = kv64(q, kc0, vc0, k, v, cos=cos, sin=sin, seqlens=seqlens, causal=causal,
                                    interleaved=interleaved)
    low = R.kvcache_ref(q, kc0, vc0, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens, causal=causal,
                        rotary_interleaved=interleaved, compute_dtype=dtype)
    # the cache was updated in place: rotated new keys, raw new values, everything else untouched
    # storing the rotated keys rounds them to the cache dtype: the low-precision reference is that rounding
    assert_rule(kc, e_kc, e_kc.numpy().astype(dtype), dtype, "k_cache")
    np.testing.assert_array_equal(vc, e_vc.numpy().astype(dtype))
    assert_rule(out, e_out, low[0], dtype, "out")
    assert lse.shape == (b, h, sq) and lse.dtype == np.float32


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_paged_cache(rng, backend):
    b, sq, snew, h, hk, d, page, nblk = 2, 2, 2, 2, 1, 64, 16, 7
    dtype = np.float32
    q = rng.standard_normal((b, sq, h, d)).astype(dtype)
    kc = rng.standard_normal((nblk, page, hk, d)).astype(dtype)
    vc = rng.standard_normal((nblk, page, hk, d)).astype(dtype)
    k = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    v = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    bt = np.array([[5, 0, 3], [6, 1, 2]], np.int32)
    seqlens = np.array([30, 5], np.int32)
    kc0, vc0 = kc.copy(), vc.copy()
    out = flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, block_table=bt, causal=True,
                                  backend=backend)
    e_out, _, e_kc, e_vc = kv64(q, kc0, vc0, k, v, seqlens=seqlens, block_table=bt, causal=True)
    low = R.kvcache_ref(q, kc0, vc0, k, v, cache_seqlens=seqlens, block_table=bt, causal=True, compute_dtype=dtype)
    np.testing.assert_array_equal(kc, e_kc.numpy().astype(dtype))
    np.testing.assert_array_equal(vc, e_vc.numpy().astype(dtype))
    assert_rule(out, e_out, low[0], dtype)


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_batch_idx_and_no_new_keys(rng, backend):
    b, sq, h, hk, d, cap = 2, 1, 3, 3, 33, 21
    dtype = np.float32
    q = rng.standard_normal((b, sq, h, d)).astype(dtype)
    kc = rng.standard_normal((4, cap, hk, d)).astype(dtype)
    vc = rng.standard_normal((4, cap, hk, d)).astype(dtype)
    idx = np.array([3, 1], np.int32)
    seqlens = np.array([9, 21], np.int32)
    kc0 = kc.copy()
    out, lse = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, cache_batch_idx=idx, softcap=3.0,
                                       return_softmax_lse=True, backend=backend)
    np.testing.assert_array_equal(kc, kc0)  # k=None: the cache is only read
    e_out, e_lse, _, _ = kv64(q, kc, vc, seqlens=seqlens, batch_idx=idx, softcap=3.0)
    low = R.kvcache_ref(q, kc, vc, cache_seqlens=seqlens, cache_batch_idx=idx, softcap=3.0, compute_dtype=dtype,
                        return_lse=True)
    assert_rule(out, e_out, low[0], dtype)
    assert_rule(lse, e_lse, low[1], np.float32, "lse")


def test_cache_seqlens_none_means_whole_cache(rng):
    """flash_attn: without cache_seqlens (and without new k/v) every sequence attends over the whole cache."""
    q = rng.standard_normal((2, 3, 2, 16)).astype(np.float32)
    kc = rng.standard_normal((2, 11, 2, 16)).astype(np.float32)
    vc = rng.standard_normal((2, 11, 2, 16)).astype(np.float32)
    out = flash_attn_with_kvcache(q, kc, vc, causal=True, backend="cpu")
    exact = attn64(q, kc, vc, causal=True)[0]
    low = R.attention_ref(q, kc, vc, causal=True, compute_dtype=np.float32)
    assert_rule(out, exact, low, np.float32)


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_leftpad_int_seqlens_window_alibi_splits(rng, backend):
    b, sq, snew, h, hk, d, cap = 2, 4, 4, 4, 1, 48, 40
    dtype = np.float16
    q = rng.standard_normal((b, sq, h, d)).astype(dtype)
    kc = rng.standard_normal((b, cap, hk, d)).astype(dtype)
    vc = rng.standard_normal((b, cap, hk, d)).astype(dtype)
    k = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    v = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    leftpad = np.array([3, 0], np.int32)
    slopes = rng.uniform(0.05, 0.3, (h,)).astype(np.float32)
    kc0, vc0 = kc.copy(), vc.copy()
    out = flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=25, cache_leftpad=leftpad, causal=True,
                                  window_size=(9, 0), alibi_slopes=slopes, num_splits=3, backend=backend)
    seqlens = np.array([25, 25])
    e_out, _, e_kc, _ = kv64(q, kc0, vc0, k, v, seqlens=seqlens, leftpad=leftpad, causal=True, window=(9, 0),
                             alibi=slopes)
    low = R.kvcache_ref(q, kc0, vc0, k, v, cache_seqlens=seqlens, cache_leftpad=leftpad, causal=True,
                        window_size=(9, 0), alibi_slopes=slopes, compute_dtype=dtype)
    np.testing.assert_array_equal(kc, e_kc.numpy().astype(dtype))
    assert_rule(out, e_out, low[0], dtype)


def test_torch_cache_updated_in_place_and_splits_agree(rng):
    b, h, d, cap = 2, 2, 32, 64
    kc = torch.zeros(b, cap, h, d, dtype=torch.bfloat16)
    vc = torch.zeros(b, cap, h, d, dtype=torch.bfloat16)
    ptr = kc.data_ptr()
    seqlens = torch.tensor([0, 7], dtype=torch.int32)
    outs = []
    for step in range(3):
        q, k, v = (torch.randn(b, 1, h, d, dtype=torch.bfloat16) for _ in range(3))
        out = flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, causal=True, backend="cpu")
        assert out.dtype == torch.bfloat16 and out.shape == q.shape
        assert torch.equal(kc[:, :][torch.arange(b), seqlens.long()], k[:, 0])
        seqlens += 1
        outs.append(out)
    assert kc.data_ptr() == ptr
    # num_splits is a performance hint only
    q = torch.randn(b, 1, h, d, dtype=torch.bfloat16)
    o1 = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, num_splits=1, backend="cpu")
    o4 = flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, num_splits=4, backend="cpu")
    assert (o1.float() - o4.float()).abs().max() <= 2 ** -6


def test_kvcache_errors(rng):
    q = np.zeros((2, 1, 2, 16), np.float32)
    kc = np.zeros((2, 8, 2, 16), np.float32)
    k = np.zeros((2, 1, 2, 16), np.float32)
    with pytest.raises(ValueError, match="cache_seqlens"):
        flash_attn_with_kvcache(q, kc, kc.copy(), k, k.copy(), cache_seqlens=np.array([8, 1], np.int32),
                                backend="cpu")
    with pytest.raises(ValueError, match="block_table|page"):
        flash_attn_with_kvcache(q, kc, kc.copy(), block_table=np.zeros((2, 1), np.int32), backend="cpu")
    with pytest.raises((ValueError, TypeError), match="k_cache|v_cache"):
        flash_attn_with_kvcache(q, kc, np.zeros((2, 8, 2, 16), np.float16), backend="cpu")
    with pytest.raises(ValueError, match="cache_batch_idx"):
        flash_attn_with_kvcache(q, kc, kc.copy(), cache_batch_idx=np.array([0, 5], np.int32), backend="cpu")


@pytest.mark.parametrize("backend", ["cpu", "sim"])
@pytest.mark.parametrize("layout", ["batch_idx", "leftpad", "paged"])
def test_append_rotary_with_indirection(rng, backend, layout):
    """New k/v + rotary (rotary_dim < headdim, GQA) together with cache_batch_idx, cache_leftpad or a paged cache.
    Checked against the float64 computation of this file only (the project reference's rotary position with
    leftpad is a known issue): rotary positions are absolute cache rows cache_seqlens + i, as flash_attn."""
    b, sq, snew, h, hk, d, rot = 2, 2, 2, 4, 2, 24, 16
    dtype = np.float32
    q = rng.standard_normal((b, sq, h, d)).astype(dtype)
    k = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    v = rng.standard_normal((b, snew, hk, d)).astype(dtype)
    seqlens = np.array([5, 18], np.int32)
    extra, ref_kw = {}, {}
    if layout == "paged":
        kc = rng.standard_normal((5, 16, hk, d)).astype(dtype)
        bt = np.array([[4, 1], [0, 2]], np.int32)
        extra["block_table"] = ref_kw["block_table"] = bt
    else:
        kc = rng.standard_normal((3, 32, hk, d)).astype(dtype)
        if layout == "batch_idx":
            idx = np.array([2, 0], np.int32)
            extra["cache_batch_idx"] = ref_kw["batch_idx"] = idx
        else:
            lp = np.array([2, 7], np.int32)
            extra["cache_leftpad"] = ref_kw["leftpad"] = lp
    vc = rng.standard_normal(kc.shape).astype(dtype)
    cos, sin = _rot_tables(rng, 40, rot, dtype)
    kc0, vc0 = kc.copy(), vc.copy()
    out = flash_attn_with_kvcache(q, kc, vc, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                  causal=True, rotary_interleaved=False, backend=backend, **extra)
    e_out, _, e_kc, e_vc = kv64(q, kc0, vc0, k, v, cos=cos, sin=sin, seqlens=seqlens, causal=True,
                                interleaved=False, **ref_kw)
    np.testing.assert_array_equal(vc, e_vc.numpy().astype(dtype))
    assert_rule(kc, e_kc, e_kc.numpy().astype(dtype), dtype, "k_cache")
    # fp32 budget: the reference in fp32 on the same cache (without leftpad-rotary, which it positions differently)
    low = R.kvcache_ref(q, kc0, vc0, k, v, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens, causal=True,
                        rotary_interleaved=False, compute_dtype=dtype,
                        **{key: val for key, val in extra.items() if key != "cache_leftpad"})[0]
    budget_ref = low if layout != "leftpad" else e_out.numpy().astype(dtype)
    assert_rule(out, e_out, budget_ref, dtype)
