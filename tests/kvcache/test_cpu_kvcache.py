"""CPU backend KV-cache path (flash_attn_with_kvcache, backend="cpu"): in-place append at cache_seqlens, rotary
(interleaved and half-split) on q and the new k, leftpad, cache_batch_idx, paged caches, GQA, against the float64
reference."""
from __future__ import annotations

import numpy as np
import pytest

from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn

fa = pytest.importorskip("flash_attn_cy")
ref = pytest.importorskip("flash_attn_cy.reference")


def _rotary(rng, seqlen_ro, rotary_dim, dtype):
    angle = rng.random((seqlen_ro, rotary_dim // 2)) * 2 * np.pi
    return np.cos(angle).astype(DTYPES[dtype]), np.sin(angle).astype(DTYPES[dtype])


def _run_and_check(q, kc, vc, knew, vnew, dtype, **kw):
    kc_ref_in, vc_ref_in = kc.copy(), vc.copy()
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, knew, vnew, return_softmax_lse=True, backend="cpu", **kw)
    out64, lse64, kc64, vc64 = ref.kvcache_ref(q, kc_ref_in, vc_ref_in, knew, vnew, return_lse=True, **kw)
    out_lp, lse_lp, _, _ = ref.kvcache_ref(q, kc_ref_in, vc_ref_in, knew, vnew, return_lse=True,
                                           compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(out, out64, out_lp, dtype=DTYPES[dtype])
    # LSE is stored in fp32 whatever the dtype: fp32's floor applies to fp64 inputs.
    assert_close_to_ref(lse, lse64, lse_lp, dtype=DTYPES["fp32" if dtype == "fp64" else dtype], what="lse")
    # The caches were updated in place with the (rotated) new rows; everything else untouched.
    tol = {"fp32": 1e-6, "fp64": 1e-12, "fp16": 1e-3, "bf16": 8e-3}[dtype]
    np.testing.assert_allclose(kc.astype(np.float64), kc64, rtol=tol, atol=tol)
    np.testing.assert_array_equal(vc.astype(np.float64), vc64)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_append_with_rotary(rng, dtype, interleaved, causal):
    b, cap, hq, hk, d, snew, sq = 3, 90, 4, 2, 40, 3, 3
    kc, vc = randn(rng, (b, cap, hk, d), dtype), randn(rng, (b, cap, hk, d), dtype)
    q = randn(rng, (b, sq, hq, d), dtype)
    knew, vnew = randn(rng, (b, snew, hk, d), dtype), randn(rng, (b, snew, hk, d), dtype)
    cos, sin = _rotary(rng, cap, 24, dtype)
    seqlens = np.array([17, 0, 80], np.int32)
    _run_and_check(q, kc, vc, knew, vnew, dtype, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                   causal=causal, rotary_interleaved=interleaved)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_no_new_rows_decode(rng, dtype):
    b, cap, hq, hk, d = 2, 333, 8, 1, 64
    kc, vc = randn(rng, (b, cap, hk, d), dtype), randn(rng, (b, cap, hk, d), dtype)
    q = randn(rng, (b, 1, hq, d), dtype)
    _run_and_check(q, kc, vc, None, None, dtype, cache_seqlens=np.array([333, 57], np.int32))
    _run_and_check(q, kc, vc, None, None, dtype, cache_seqlens=np.array([1, 200], np.int32), causal=True,
                   window_size=(50, 0), softcap=4.0, alibi_slopes=np.array([0.1] * hq, np.float32))


def test_cache_batch_idx(rng):
    b, ncache, cap, h, d = 3, 5, 60, 2, 32
    kc, vc = randn(rng, (ncache, cap, h, d), "fp32"), randn(rng, (ncache, cap, h, d), "fp32")
    q = randn(rng, (b, 2, h, d), "fp32")
    knew, vnew = randn(rng, (b, 2, h, d), "fp32"), randn(rng, (b, 2, h, d), "fp32")
    _run_and_check(q, kc, vc, knew, vnew, "fp32", cache_seqlens=np.array([10, 0, 58], np.int32),
                   cache_batch_idx=np.array([4, 0, 2], np.int32), causal=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_paged_cache(rng, dtype):
    b, page, nblocks, maxb, hq, hk, d = 2, 16, 12, 5, 4, 2, 48
    kc, vc = randn(rng, (nblocks, page, hk, d), dtype), randn(rng, (nblocks, page, hk, d), dtype)
    bt = rng.permutation(nblocks)[: b * maxb].reshape(b, maxb).astype(np.int32)
    q = randn(rng, (b, 4, hq, d), dtype)
    knew, vnew = randn(rng, (b, 4, hk, d), dtype), randn(rng, (b, 4, hk, d), dtype)
    cos, sin = _rotary(rng, page * maxb, 16, dtype)
    _run_and_check(q, kc, vc, knew, vnew, dtype, block_table=bt, cache_seqlens=np.array([13, 70], np.int32),
                   rotary_cos=cos, rotary_sin=sin, causal=True)


def test_leftpad_without_rotary(rng):
    b, cap, h, d = 2, 64, 2, 32
    kc, vc = randn(rng, (b, cap, h, d), "fp32"), randn(rng, (b, cap, h, d), "fp32")
    q = randn(rng, (b, 2, h, d), "fp32")
    knew, vnew = randn(rng, (b, 2, h, d), "fp32"), randn(rng, (b, 2, h, d), "fp32")
    _run_and_check(q, kc, vc, knew, vnew, "fp32", cache_seqlens=np.array([30, 9], np.int32),
                   cache_leftpad=np.array([7, 9], np.int32), causal=True)


@pytest.mark.parametrize("causal", [True, False])
def test_leftpad_rotary_positions_are_absolute_cache_rows(rng, causal):
    # flash_attn's CUDA kernel offsets cos/sin by leftpad (row_offset_cossin includes params.leftpad_k) and its test
    # rotates with seqlen_offsets=cache_seqlens, which include the left padding: new row t rotates at cache row
    # cache_seqlens[b] + t. Checked here by composing rotary_ref with the plain reference attention.
    b, cap, h, d, snew, sq = 2, 64, 2, 32, 3, 2
    kc, vc = randn(rng, (b, cap, h, d), "fp32"), randn(rng, (b, cap, h, d), "fp32")
    q = randn(rng, (b, sq, h, d), "fp32")
    knew, vnew = randn(rng, (b, snew, h, d), "fp32"), randn(rng, (b, snew, h, d), "fp32")
    cos, sin = _rotary(rng, cap, 16, "fp32")
    seqlens, leftpad = np.array([30, 12], np.int32), np.array([7, 3], np.int32)
    kc0, vc0, q0 = kc.copy(), vc.copy(), q.copy()
    out = fa.flash_attn_with_kvcache(q, kc, vc, knew, vnew, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                     cache_leftpad=leftpad, causal=causal, backend="cpu")
    for i in range(b):
        pos = seqlens[i] + np.arange(snew)
        k_rot = ref.rotary_ref(knew[i], cos, sin, pos, interleaved=True)
        np.testing.assert_allclose(kc[i, seqlens[i]:seqlens[i] + snew], k_rot, rtol=1e-6, atol=1e-6)
        qpos = seqlens[i] + (np.arange(sq) if causal else np.zeros(sq, int))
        q_rot = ref.rotary_ref(q0[i], cos, sin, qpos, interleaved=True)
        keys = slice(leftpad[i], seqlens[i] + snew)
        kk = np.concatenate([kc0[i, leftpad[i]:seqlens[i]], k_rot])[None]
        vv = np.concatenate([vc0[i, leftpad[i]:seqlens[i]], vnew[i]])[None]
        out64 = ref.attention_ref(q_rot[None], kk, vv, causal=causal)
        out_lp = ref.attention_ref(q_rot[None].astype(np.float32), kk.astype(np.float32), vv.astype(np.float32),
                                   causal=causal, compute_dtype=np.float32)
        assert_close_to_ref(out[i:i + 1], out64, out_lp, dtype=np.dtype(np.float32))
        assert keys.start == leftpad[i]


def test_append_out_of_capacity_raises_and_leaves_cache(rng):
    kc, vc = randn(rng, (1, 10, 1, 16), "fp32"), randn(rng, (1, 10, 1, 16), "fp32")
    kc0 = kc.copy()
    q = randn(rng, (1, 1, 1, 16), "fp32")
    knew, vnew = randn(rng, (1, 3, 1, 16), "fp32"), randn(rng, (1, 3, 1, 16), "fp32")
    with pytest.raises(ValueError):
        fa.flash_attn_with_kvcache(q, kc, vc, knew, vnew, cache_seqlens=np.array([8], np.int32), backend="cpu")
    np.testing.assert_array_equal(kc, kc0)
