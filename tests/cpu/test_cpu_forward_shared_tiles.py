"""CPU forward: K/V tiles prepared once per work item and shared by up to 8 query tiles (csrc/cpu/README.md).

The query tiles of one work item see different parts of a shared K/V tile: causal and local bands start and end
inside it, at even or odd key offsets (the bf16 kernels pair keys two by two, and fall back to pairing a tile's own
keys when its band starts or ends inside a pair). These shapes put 8 query tiles in one item (one thread, >= 32
query tiles in the call, see tiles_per_item in attention_forward.cpp) and bands at every parity; each is checked
against the float64 reference with the project tolerance, on the AVX-512 kernels and the portable ones.
"""
from __future__ import annotations

import numpy as np
import pytest

from _cpu_isa import isa  # noqa: F401 (the fixture)
from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn

fa = pytest.importorskip("flash_attn_cy")
ref = pytest.importorskip("flash_attn_cy.reference")


@pytest.fixture
def one_thread():
    # Items of 8 query tiles need >= 4 items per thread: with one thread, >= 32 query tiles per call.
    before = fa.get_num_threads()
    fa.set_num_threads(1)
    yield
    fa.set_num_threads(before)


HEADS = 4  # x 9-11 query tiles per head: items of 8 tiles


def _check(q, k, v, dtype, **kw):
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="cpu", **kw)
    out64, lse64 = ref.attention_ref(q, k, v, return_lse=True, **kw)
    out_lp, lse_lp = ref.attention_ref(q, k, v, return_lse=True, compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(out, out64, out_lp, dtype=DTYPES[dtype])
    assert_close_to_ref(lse, lse64, lse_lp, dtype=DTYPES[dtype], what="lse")


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("sq,sk,kw", [
    (600, 600, dict(causal=True)),                 # 10 query tiles: two items, diagonal tiles
    (601, 700, dict(causal=True)),                 # odd causal offset: bands end inside a key pair
    (520, 531, dict(window_size=(36, 0))),         # local: bands start at odd keys inside a K/V tile
    (530, 530, dict(window_size=(64, 64))),        # band edges exactly on tile edges
    (517, 601, dict(window_size=(5, 3))),          # narrow window: gaps between the bands of an item's tiles
    (575, 575, dict()),                            # dense, ragged last K/V tile of odd length
], ids=["causal", "causal-odd-offset", "local-odd", "local-aligned", "local-narrow", "dense"])
def test_query_tiles_sharing_kv_tiles(rng, isa, one_thread, dtype, sq, sk, kw):
    if isa == "portable" and dtype == "fp16":
        pytest.skip("portable kernels: fp32/bf16 cover the shared code")
    d = 72
    q = randn(rng, (1, sq, HEADS, d), dtype)
    k = randn(rng, (1, sk, HEADS, d), dtype)
    v = randn(rng, (1, sk, HEADS, d), dtype)
    _check(q, k, v, dtype, **kw)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("left", [10, 11])
def test_inf_value_outside_a_tiles_band_stays_out(rng, one_thread, dtype, left):
    # Query tile 1 (rows 64..127) with window (left, 0) sees keys 64-left.. only, in an item whose K/V tiles start
    # at key 0 (tile 0's band). An inf in V at the key just before that band shares a K/V tile (and, for odd `left`,
    # a bf16 key pair) with keys it does see; it must not reach those rows as 0 * inf = NaN.
    sq = sk = 576
    d = 32
    q = randn(rng, (1, sq, HEADS, d), dtype)
    k = randn(rng, (1, sk, HEADS, d), dtype)
    v = randn(rng, (1, sk, HEADS, d), dtype)
    bad = 64 - left - 1
    v[0, bad, :, :] = np.inf
    out = np.asarray(fa.flash_attn_func(q, k, v, window_size=(left, 0), backend="cpu"), np.float32)
    assert np.isfinite(out[0, 64:128]).all()
    v_clean = v.copy()
    v_clean[0, bad, :, :] = 0
    out64 = ref.attention_ref(q, k, v_clean, window_size=(left, 0))
    out_lp = ref.attention_ref(q, k, v_clean, window_size=(left, 0), compute_dtype=DTYPES[dtype])
    assert_close_to_ref(out[:, 64:128], out64[:, 64:128], out_lp[:, 64:128], dtype=DTYPES[dtype])


@pytest.mark.parametrize("scale", [0.11, -0.11], ids=["positive", "negative"])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window_size=(40, 7)), dict(causal=True, window_size=(90, -1))],
                         ids=["causal", "local", "causal-left"])
def test_band_edge_masking_with_grouped_rows(rng, isa, one_thread, scale, kw):
    """Boundary tiles without softcap/ALiBi are masked by prefix/suffix fills (a positive scale), or by the scalar
    logit pass (a negative scale, which would turn -inf into +inf in the softmax's scaling); GQA packs 4 heads per
    query position, so a tile's rows repeat each query index."""
    q = randn(rng, (2, 203, 8, 40), "fp32")
    k = randn(rng, (2, 250, 2, 40), "fp32")
    v = randn(rng, (2, 250, 2, 40), "fp32")
    _check(q, k, v, "fp32", softmax_scale=scale, **kw)
