"""Property test (hypothesis) of flash_attn_with_kvcache: random cache layouts (dense, cache_batch_idx, leftpad,
paged), lengths, rotary style and masks against the float64 re-implementation in test_kvcache.py."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import flash_attn_cy as fa  # noqa: E402

from test_kvcache import check, kv_reference  # noqa: E402


@st.composite
def cases(draw):
    batch = draw(st.integers(1, 3))
    layout = draw(st.sampled_from(["dense", "batch_idx", "leftpad", "paged"]))
    snew = draw(st.integers(0, 5))
    sq = draw(st.integers(1, 5))
    hk = draw(st.integers(1, 2))
    h = hk * draw(st.integers(1, 3))
    d = draw(st.sampled_from([8, 24, 64]))
    cap = 48 if layout != "paged" else 16 * 3
    seqlens = [draw(st.integers(0, cap - snew)) for _ in range(batch)]
    rotary = snew > 0 and draw(st.booleans())
    return dict(batch=batch, layout=layout, snew=snew, sq=sq, h=h, hk=hk, d=d, cap=cap, seqlens=seqlens,
                rotary=rotary, interleaved=draw(st.booleans()), causal=draw(st.booleans()),
                window=draw(st.sampled_from([(-1, -1), (4, 0), (9, 2)])), seed=draw(st.integers(0, 2 ** 32 - 1)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_kvcache(c):
    rng = np.random.default_rng(c["seed"])
    b, d, hk = c["batch"], c["d"], c["hk"]
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    kw = dict(seqlens=np.array(c["seqlens"], np.int32), causal=c["causal"], window_size=c["window"],
              interleaved=c["interleaved"])
    call = dict(cache_seqlens=kw["seqlens"], causal=c["causal"], window_size=c["window"],
                rotary_interleaved=c["interleaved"])
    if c["layout"] == "paged":
        kc, vc = f(3 * b + 1, 16, hk, d), f(3 * b + 1, 16, hk, d)
        bt = rng.permutation(3 * b + 1)[:3 * b].reshape(b, 3).astype(np.int32)
        kw["block_table"] = call["block_table"] = bt
    elif c["layout"] == "batch_idx":
        kc, vc = f(b + 2, c["cap"], hk, d), f(b + 2, c["cap"], hk, d)
        idx = rng.permutation(b + 2)[:b].astype(np.int32)
        kw["batch_idx"] = call["cache_batch_idx"] = idx
    else:
        kc, vc = f(b, c["cap"], hk, d), f(b, c["cap"], hk, d)
        if c["layout"] == "leftpad":
            lp = np.array([rng.integers(0, s + 1) for s in c["seqlens"]], np.int32)
            kw["leftpad"] = call["cache_leftpad"] = lp
    q = f(b, c["sq"], c["h"], d)
    k = v = None
    if c["snew"]:
        k, v = f(b, c["snew"], hk, d), f(b, c["snew"], hk, d)
        kw.update(k=k, v=v)
    if c["rotary"]:
        ang = rng.uniform(0, 2 * np.pi, (c["cap"] + 8, rng.integers(1, d // 2 + 1)))
        kw["cos"], kw["sin"] = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        call.update(rotary_cos=kw["cos"], rotary_sin=kw["sin"])
    kc0, vc0 = kc.copy(), vc.copy()
    out, lse = fa.flash_attn_with_kvcache(q, kc, vc, k, v, return_softmax_lse=True, backend="cpu", **call)
    check(out, lse, q, kc0, vc0, "fp32", **kw)
    _, _, kc_ref, vc_ref = kv_reference(q, kc0, vc0, **kw)
    np.testing.assert_allclose(kc, kc_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(vc, vc_ref)
