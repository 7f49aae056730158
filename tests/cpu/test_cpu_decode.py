"""CPU decode path (csrc/cpu/decode_forward.cpp): at most 4 query rows per KV head, keys streamed in blocks of 16 in
memory order over all KV heads, split over threads and merged by log-sum-exp. Checked against the float64 reference
on the edges of that walk: key counts around the block size, head dims that are not a multiple of the vector width,
every rows-per-KV-head count (GQA groups and several queries), masks crossing blocks, logit features, paged caches
whose pages split a block, strided caches, the split count, and both ISA paths."""
from __future__ import annotations

import numpy as np
import pytest

from _cpu_isa import isa  # noqa: F401 (the fixture)
from _tolerance import assert_close_to_ref
from conftest import DTYPES, LOWP_DTYPES, randn

fa = pytest.importorskip("flash_attn_cy")
ref = pytest.importorskip("flash_attn_cy.reference")



def _check(q, kc, vc, dtype, **kw):
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, return_softmax_lse=True, backend="cpu", **kw)
    kw.pop("num_splits", None)
    out64, lse64, _, _ = ref.kvcache_ref(q, kc, vc, return_lse=True, **kw)
    out_lp, lse_lp, _, _ = ref.kvcache_ref(q, kc, vc, return_lse=True, compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(out, out64, out_lp, dtype=DTYPES[dtype])
    assert_close_to_ref(lse, lse64, lse_lp, dtype=DTYPES[dtype], what="lse")
    return out, lse


# (headdim, nheads_q, nheads_kv, seqlen_q): rows per KV head = seqlen_q * nheads_q / nheads_kv, 1..4; the last two
# have more than 16 rows in all (the AVX-512 softmax works on 16 rows at a time: a full set plus a partial one)
SHAPES = [(64, 4, 4, 1), (128, 8, 2, 1), (17, 6, 3, 2), (80, 4, 1, 1), (256, 2, 2, 4), (40, 3, 3, 3), (33, 2, 1, 2),
          (128, 32, 8, 1), (72, 10, 5, 2)]


@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"d{s[0]}-h{s[1]}/{s[2]}-q{s[3]}")
def test_key_counts_around_the_block_size(rng, isa, dtype, shape):
    d, hq, hk, sq = shape
    lens = np.array([0, 1, 15, 16, 17, 63, 300], np.int32)
    b = len(lens)
    kc, vc = randn(rng, (b, 300, hk, d), dtype), randn(rng, (b, 300, hk, d), dtype)
    q = randn(rng, (b, sq, hq, d), dtype)
    out, lse = _check(q, kc, vc, dtype, cache_seqlens=lens)
    assert np.all(np.asarray(out, np.float64)[0] == 0) and np.all(np.isinf(lse[0]))  # no key: zeros, +inf


@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("features", [
    dict(causal=True),
    dict(causal=True, window_size=(37, 0)),
    dict(window_size=(5, 3)),
    dict(window_size=(200, -1)),
    dict(softcap=3.0),
    dict(alibi=True, causal=True),
    dict(softmax_scale=-0.3),
    dict(softcap=2.0, alibi=True, window_size=(70, 0)),
])
def test_masks_and_logit_features(rng, isa, dtype, features):
    b, cap, hq, hk, d, sq = 3, 260, 4, 2, 48, 2
    kw = dict(features)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = rng.uniform(0.01, 0.3, (b, hq)).astype(np.float32)
    kc, vc = randn(rng, (b, cap, hk, d), dtype), randn(rng, (b, cap, hk, d), dtype)
    q = randn(rng, (b, sq, hq, d), dtype)
    _check(q, kc, vc, dtype, cache_seqlens=np.array([260, 131, 9], np.int32), **kw)


@pytest.mark.parametrize("dtype", LOWP_DTYPES)
@pytest.mark.parametrize("page", [16, 48, 256])
def test_paged_cache_pages_split_blocks(rng, isa, dtype, page):
    b, hq, hk, d, maxlen = 2, 8, 2, 64, 400
    nblk = -(-maxlen // page)
    kc, vc = randn(rng, (b * nblk + 2, page, hk, d), dtype), randn(rng, (b * nblk + 2, page, hk, d), dtype)
    table = rng.permutation(b * nblk + 2)[: b * nblk].reshape(b, nblk).astype(np.int32)
    q = randn(rng, (b, 1, hq, d), dtype)
    _check(q, kc, vc, dtype, cache_seqlens=np.array([maxlen, 201], np.int32), block_table=table, causal=True)


@pytest.mark.parametrize("dtype", LOWP_DTYPES)
def test_leftpad_and_cache_batch_idx(rng, isa, dtype):
    b, cap, hq, hk, d = 3, 200, 4, 4, 64
    kc, vc = randn(rng, (5, cap, hk, d), dtype), randn(rng, (5, cap, hk, d), dtype)
    q = randn(rng, (b, 1, hq, d), dtype)
    _check(q, kc, vc, dtype, cache_seqlens=np.array([200, 77, 30], np.int32),
           cache_batch_idx=np.array([4, 0, 2], np.int32))
    kc2, vc2 = kc[:b].copy(), vc[:b].copy()
    _check(q, kc2, vc2, dtype, cache_seqlens=np.array([200, 77, 30], np.int32),
           cache_leftpad=np.array([3, 50, 29], np.int32))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_strided_cache_heads(rng, isa, dtype):
    """K/V heads further apart than headdim (a view of every other head): the kernels' head stride."""
    b, cap, hq, hk, d = 2, 150, 4, 2, 64
    kbig, vbig = randn(rng, (b, cap, 2 * hk, d), dtype), randn(rng, (b, cap, 2 * hk, d), dtype)
    kc, vc = kbig[:, :, ::2], vbig[:, :, 1::2]
    q = randn(rng, (b, 1, hq, d), dtype)
    _check(q, kc, vc, dtype, cache_seqlens=np.array([150, 33], np.int32))


def test_split_count_only_changes_rounding(rng):
    b, cap, hq, hk, d = 1, 4096, 8, 8, 64
    kc, vc = randn(rng, (b, cap, hk, d), "fp32"), randn(rng, (b, cap, hk, d), "fp32")
    q = randn(rng, (b, 1, hq, d), "fp32")
    outs = [_check(q, kc, vc, "fp32", cache_seqlens=cap, num_splits=n)[0] for n in (1, 3, 0)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=2e-6)
    np.testing.assert_allclose(outs[0], outs[2], rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", LOWP_DTYPES)
def test_nonfinite_key_poisons_only_its_head(rng, isa, dtype):
    b, cap, hq, hk, d = 1, 1000, 4, 2, 64
    kc, vc = randn(rng, (b, cap, hk, d), dtype), randn(rng, (b, cap, hk, d), dtype)
    kc[0, 700, 1, 5] = np.nan
    q = randn(rng, (b, 1, hq, d), dtype)
    out = np.asarray(fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=cap, backend="cpu"), np.float64)
    assert np.isfinite(out[0, 0, :2]).all()  # query heads 0, 1 read KV head 0
    assert np.isnan(out[0, 0, 2:]).all()     # heads 2, 3 saw a NaN score: NaN rows, as flash_attn and torch
