"""Property tests (hypothesis): random small shapes and options through the public API, checked against the float64
reference under the tolerance rule, and structural invariants (packed == unpacked, varlen == dense per sequence)."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import flash_attn_cy as fa  # noqa: E402
from flash_attn_cy import reference as R  # noqa: E402

from _tolerance import assert_close_to_ref  # noqa: E402
from conftest import DTYPES  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 3))
    sq = draw(st.integers(1, 40))
    sk = draw(st.integers(1, 40))
    hk = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    d = draw(st.sampled_from([1, 3, 8, 17, 32, 64, 80, 128, 256]))
    dtype = draw(st.sampled_from(["fp32", "fp16", "bf16"]))
    causal = draw(st.booleans())
    left = draw(st.integers(-1, 45))
    right = draw(st.integers(-1, 45))
    softcap = draw(st.sampled_from([0.0, 0.0, 2.0, 30.0]))
    alibi = draw(st.sampled_from([None, "h", "bh"]))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return dict(batch=batch, sq=sq, sk=sk, hk=hk, h=hk * group, d=d, dtype=dtype, causal=causal,
                window=(left, right), softcap=softcap, alibi=alibi, seed=seed)


@SETTINGS
@given(problems())
def test_random_problems_match_reference(p):
    rng = np.random.default_rng(p["seed"])
    dt = DTYPES[p["dtype"]]
    q = rng.standard_normal((p["batch"], p["sq"], p["h"], p["d"])).astype(dt)
    k = rng.standard_normal((p["batch"], p["sk"], p["hk"], p["d"])).astype(dt)
    v = rng.standard_normal((p["batch"], p["sk"], p["hk"], p["d"])).astype(dt)
    slopes = None
    if p["alibi"] == "h":
        slopes = rng.uniform(0.0, 0.5, p["h"]).astype(np.float32)
    elif p["alibi"] == "bh":
        slopes = rng.uniform(0.0, 0.5, (p["batch"], p["h"])).astype(np.float32)
    opts = dict(causal=p["causal"], window_size=p["window"], softcap=p["softcap"], alibi_slopes=slopes)
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="cpu", **opts)
    ref, ref_lse = R.attention_ref(q, k, v, return_lse=True, **opts)
    low, low_lse = R.attention_ref(q, k, v, return_lse=True, compute_dtype=dt, **opts)
    assert_close_to_ref(out, ref, low)
    assert_close_to_ref(lse, ref_lse, low_lse, dtype=dt, what="softmax_lse")


@SETTINGS
@given(lens=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=4),
       causal=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_random_varlen_equals_dense(lens, causal, seed):
    rng = np.random.default_rng(seed)
    lq = [a for a, _ in lens]
    lk = [b for _, b in lens]
    q = rng.standard_normal((sum(lq), 4, 16)).astype(np.float32)
    k = rng.standard_normal((sum(lk), 2, 16)).astype(np.float32)
    v = rng.standard_normal((sum(lk), 2, 16)).astype(np.float32)
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    out, lse, _ = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=causal,
                                            return_attn_probs=True, backend="cpu")
    for b in range(len(lens)):
        if lq[b] == 0:
            continue
        o, l, _ = fa.flash_attn_func(q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]], v[None, ck[b]:ck[b + 1]],
                                     causal=causal, return_attn_probs=True, backend="cpu")
        np.testing.assert_allclose(out[cq[b]:cq[b + 1]], o[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lse[:, cq[b]:cq[b + 1]], l[0], rtol=1e-5, atol=1e-6)
