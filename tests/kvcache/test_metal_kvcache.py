"""flash_attn_with_kvcache served by the Metal kernels (KV-cache append + rotary, then decode/prefill attention) in
the simulator: against the float64 reference and against the CPU backend, on dense, batch-indirected, left-padded and
paged caches, with and without new keys and rotary embedding (interleaved and half-split)."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy
from flash_attn_cy.reference import kvcache_ref, rotary_ref, to_float64
from _metal_support import np_dtype, rand, require_sim
from _tolerance import assert_close_to_ref
from _sim_hazards import sim_hazards  # noqa: F401  (every test: under the hazard detector)

pytestmark = pytest.mark.usefixtures("sim_hazards")


@pytest.fixture(autouse=True)
def _need_sim():
    require_sim()


def _rotary_tables(rng, seqlen_ro, rotary_dim, dtype):
    angles = rng.uniform(0, 2 * np.pi, size=(seqlen_ro, rotary_dim // 2))
    return np.cos(angles).astype(np_dtype(dtype)), np.sin(angles).astype(np_dtype(dtype))


def _run(backend, q, kc, vc, **kw):
    kc, vc = kc.copy(), vc.copy()
    out, lse = flash_attn_cy.flash_attn_with_kvcache(q.copy(), kc, vc, return_softmax_lse=True, backend=backend, **kw)
    return np.asarray(out), np.asarray(lse), kc, vc


CASES = {
    # name: (dtype, seqlen_q, seqlen_new, causal, window, rotary ("i"/"h"/None), layout, extras)
    # With 4 query heads on 2 KV heads, seqlen_q 1-2 runs the vector decode kernel (2-4 packed rows: dense, paged,
    # batch_idx and leftpad caches all reach it), seqlen_q 3-4 the 8-row fragment kernel (6-8 rows).
    "decode_gqa": ("fp16", 1, 0, False, (-1, -1), None, "dense", {}),
    "append_rotary_interleaved_causal": ("fp32", 3, 3, True, (-1, -1), "i", "dense", {}),
    "append_rotary_halfsplit_noncausal": ("bf16", 2, 2, False, (-1, -1), "h", "dense", {}),
    "batch_idx_window_softcap": ("fp16", 2, 2, True, (6, 0), "i", "batch_idx", {"softcap": 3.0}),
    "paged_rotary_causal": ("fp16", 4, 4, True, (-1, -1), "h", "paged", {}),
    "paged_decode_alibi_splits": ("fp32", 1, 1, False, (-1, -1), None, "paged", {"alibi": True, "num_splits": 3}),
    "leftpad_append": ("fp16", 2, 2, True, (-1, -1), None, "leftpad", {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kvcache_sim_matches_reference_and_cpu(name, rng):
    dtype, sq, snew, causal, window, rot, layout, extra = CASES[name]
    b, hq, hkv, d, cap, page = 3, 4, 2, 64, 64, 16
    rd = 32
    # an empty cache row only with new keys (the reference cannot attend over zero keys)
    seqlens = np.array([5, 0 if snew else 1, 37], dtype=np.int32)
    q = rand(rng, (b, sq, hq, d), dtype)
    kw = dict(causal=causal, window_size=window, softcap=extra.get("softcap", 0.0),
              num_splits=extra.get("num_splits", 0))
    if extra.get("alibi"):
        kw["alibi_slopes"] = rng.uniform(0.1, 1.0, size=(hq,)).astype(np.float32)
    if layout == "paged":
        nblocks = b * cap // page + 2
        kc, vc = rand(rng, (nblocks, page, hkv, d), dtype), rand(rng, (nblocks, page, hkv, d), dtype)
        kw["block_table"] = rng.permutation(nblocks)[: b * cap // page].reshape(b, cap // page).astype(np.int32)
    else:
        rows = b + 2 if layout == "batch_idx" else b
        kc, vc = rand(rng, (rows, cap, hkv, d), dtype), rand(rng, (rows, cap, hkv, d), dtype)
        if layout == "batch_idx":
            kw["cache_batch_idx"] = np.array([4, 0, 2], dtype=np.int32)
        if layout == "leftpad":
            kw["cache_leftpad"] = np.array([2, 0, 9], dtype=np.int32)
            seqlens = seqlens + kw["cache_leftpad"]
    kw["cache_seqlens"] = seqlens
    if snew:
        kw["k"], kw["v"] = rand(rng, (b, snew, hkv, d), dtype), rand(rng, (b, snew, hkv, d), dtype)
    if rot:
        kw["rotary_cos"], kw["rotary_sin"] = _rotary_tables(rng, cap, rd, dtype)
        kw["rotary_interleaved"] = rot == "i"

    out, lse, kc_sim, vc_sim = _run("sim", q, kc, vc, **kw)
    out_cpu, lse_cpu, kc_cpu, vc_cpu = _run("cpu", q, kc, vc, **kw)

    ref_kw = {k: v for k, v in kw.items() if k != "num_splits"}
    out64, lse64, kc64, vc64 = kvcache_ref(q, kc, vc, return_lse=True, **ref_kw)
    out_lowp, lse_lowp = kvcache_ref(q, kc, vc, compute_dtype=np_dtype(dtype), return_lse=True, **ref_kw)[:2]
    assert_close_to_ref(out, out64, out_lowp)
    assert_close_to_ref(out_cpu, out64, out_lowp, what="cpu out")
    fin = np.isfinite(lse64)
    assert np.array_equal(np.isposinf(lse), ~fin)
    # LSE (fp32 of the scaled scores of q and keys rotated and rounded to the dtype): same rule as out
    lse_budget = 2 * np.max(np.abs(to_float64(lse_lowp)[fin] - lse64[fin]), initial=0.0) + 1e-4
    assert np.max(np.abs(lse[fin] - lse64[fin]), initial=0.0) <= lse_budget
    assert np.max(np.abs(lse_cpu[fin] - lse64[fin]), initial=0.0) <= lse_budget
    # caches: new rows as the reference (rotation rounded once to the dtype), everything else untouched
    tol = {"fp32": 1e-6, "fp16": 1e-3, "bf16": 8e-3}[dtype]
    for got, cpu, ref in ((kc_sim, kc_cpu, kc64), (vc_sim, vc_cpu, vc64)):
        assert np.max(np.abs(to_float64(got) - ref)) <= tol * max(1.0, float(np.max(np.abs(ref))))
        assert np.max(np.abs(to_float64(got) - to_float64(cpu))) <= tol * max(1.0, float(np.max(np.abs(ref))))


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_positions_with_leftpad_are_absolute_cache_rows(interleaved, rng):
    """flash_attn's CUDA kernel rotates the new key written at cache row r (r = cache_seqlens[b] + i, counted from
    the start of the cache, left padding included) with cos/sin row r: check the sim and CPU caches against that."""
    dtype, b, hkv, d, cap, rd = "fp32", 2, 1, 32, 40, 16
    q = rand(rng, (b, 1, 2, d), dtype)
    kc, vc = rand(rng, (b, cap, hkv, d), dtype), rand(rng, (b, cap, hkv, d), dtype)
    knew, vnew = rand(rng, (b, 2, hkv, d), dtype), rand(rng, (b, 2, hkv, d), dtype)
    cos, sin = _rotary_tables(rng, cap, rd, dtype)
    leftpad = np.array([3, 6], dtype=np.int32)
    seqlens = np.array([10, 20], dtype=np.int32)
    kw = dict(k=knew, v=vnew, rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens, cache_leftpad=leftpad,
              rotary_interleaved=interleaved, causal=True)
    for backend in ("sim", "cpu"):
        _, _, kc_b, _ = _run(backend, q, kc, vc, **kw)
        for bi in range(b):
            rows = seqlens[bi] + np.arange(2)
            want = rotary_ref(knew[bi], cos, sin, rows, interleaved=interleaved)
            got = to_float64(kc_b[bi, rows])
            assert np.max(np.abs(got - want)) < 1e-5, f"{backend}: rotary position of appended keys"
