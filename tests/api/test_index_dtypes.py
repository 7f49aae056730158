"""Index arguments (cu_seqlens, cache_seqlens, cache_batch_idx, cache_leftpad, block_table) are int32 in flash_attn.
NumPy's cumsum and torch.tensor([...]) give int64, so other integer dtypes are accepted and converted after a range
check (test_errors.py has the out-of-range and float cases): results must equal the int32 call's exactly, eager and
compiled."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa

rng = np.random.default_rng(7)


def _x(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("itype", [np.int64, np.int16, np.uint32])
def test_varlen_cu_seqlens_of_other_integer_dtypes(itype):
    lens_q, lens_k = [5, 0, 9], [7, 3, 12]
    q, k, v = _x(sum(lens_q), 4, 32), _x(sum(lens_k), 2, 32), _x(sum(lens_k), 2, 32)
    cu_q = np.concatenate([[0], np.cumsum(lens_q)])  # int64, as users build it
    cu_k = np.concatenate([[0], np.cumsum(lens_k)])
    ref = fa.flash_attn_varlen_func(q, k, v, cu_q.astype(np.int32), cu_k.astype(np.int32), 9, 12, causal=True)
    out = fa.flash_attn_varlen_func(q, k, v, cu_q.astype(itype), cu_k.astype(itype), 9, 12, causal=True)
    np.testing.assert_array_equal(out, ref)


def test_kvcache_int64_index_arrays():
    B, S, H, D = 3, 64, 2, 32
    q = _x(B, 1, H, D)
    k_cache, v_cache = _x(4, S, H, D), _x(4, S, H, D)
    k_new, v_new = _x(B, 1, H, D), _x(B, 1, H, D)
    idx = {"cache_seqlens": [10, 0, 33], "cache_batch_idx": [2, 0, 3], "cache_leftpad": [0, 0, 5]}
    outs = []
    for itype in (np.int32, np.int64):
        kc, vc = k_cache.copy(), v_cache.copy()
        kw = {name: np.array(vals, dtype=itype) for name, vals in idx.items()}
        out = fa.flash_attn_with_kvcache(q, kc, vc, k_new, v_new, causal=True, **kw)
        outs.append((out, kc, vc))
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, b)


def test_paged_kvcache_int64_block_table():
    B, H, D, page = 2, 2, 32, 16
    q = _x(B, 1, H, D)
    k_pages, v_pages = _x(6, page, H, D), _x(6, page, H, D)
    table = np.array([[5, 1, 3], [0, 4, 2]])
    seqlens = np.array([40, 17])
    ref = fa.flash_attn_with_kvcache(q, k_pages, v_pages, cache_seqlens=seqlens.astype(np.int32),
                                     block_table=table.astype(np.int32))
    out = fa.flash_attn_with_kvcache(q, k_pages, v_pages, cache_seqlens=seqlens, block_table=table)
    np.testing.assert_array_equal(out, ref)


def test_torch_int64_cu_seqlens_eager_and_compiled():
    torch = pytest.importorskip("torch")
    import torch._dynamo

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(14, 4, 16, generator=g) for _ in range(3))
    cu = torch.tensor([0, 6, 14])  # int64
    ref = fa.flash_attn_varlen_func(q, k, v, cu.int(), cu.int(), 8, 8)
    out = fa.flash_attn_varlen_func(q, k, v, cu, cu, 8, 8)
    assert torch.equal(out, ref)
    torch._dynamo.reset()
    try:
        fn = torch.compile(lambda a, b, c, s: fa.flash_attn_varlen_func(a, b, c, s, s, 8, 8), fullgraph=True,
                           backend="aot_eager")
        assert torch.equal(fn(q, k, v, cu), ref)
    finally:
        torch._dynamo.reset()
