"""The plan cache over every form of flash_attn_with_kvcache (flash_attn_cy/_core_planned.pxi; issue 18): rotary
tables, cache_leftpad, cache_batch_idx, a paged cache (block_table) and ALiBi. A call run from a stored plan gives
exactly what the general path gives - the output, the LSE and the caches it appends to; the values of every index
tensor and table are read on every call (new values: the same plan, the general path's result; values the validation
refuses: its message); a change of shape, dtype, option or backend validates again."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core, _validate_kvcache

from _plan_cache_support import as_kind, count_calls, fresh_plans  # noqa: F401 (fresh_plans: autouse)
from conftest import randn

torch = pytest.importorskip("torch")

B, H, HK, D, CAP, PAGE = 2, 4, 2, 16, 32, 16


@pytest.fixture
def general_path(monkeypatch):
    seen = []
    count_calls(monkeypatch, _validate_kvcache, "kvcache", lambda: seen.append(1))
    return seen


def clone(x):
    return x.clone() if torch.is_tensor(x) else x.copy()


def same(a, b):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert type(x) is type(y) and tuple(x.shape) == tuple(y.shape)
        x, y = (t.double().numpy() if torch.is_tensor(t) else t.astype(np.float64) for t in (x, y))
        np.testing.assert_array_equal(x, y)


def hits():
    return _core.plan_cache_info()["hits"]


def case(rng, kind, form, seqlen_q=1):
    """(q, caches, new rows, keyword arguments) of one form."""
    q = as_kind(randn(rng, (B, seqlen_q, H, D)), kind)
    k, v = (as_kind(randn(rng, (B, seqlen_q, HK, D)), kind) for _ in range(2))
    lens = np.array([5, 9], np.int32)
    kw = dict(causal=True, backend="cpu", return_softmax_lse=True)
    rows = B + 1 if form == "batch_idx" else B
    if form == "paged":
        pages = 6
        kc, vc = (as_kind(randn(rng, (pages, PAGE, HK, D)), kind) for _ in range(2))
        kw["block_table"] = as_kind(np.array([[4, 1], [0, 5]], np.int32), kind)
    else:
        kc, vc = (as_kind(randn(rng, (rows, CAP, HK, D)), kind) for _ in range(2))
    if form == "rotary" or form == "rotary_neox":
        angles = np.arange(CAP)[:, None] * (0.1 ** (np.arange(D // 4) / (D // 4)))[None, :]
        kw["rotary_cos"], kw["rotary_sin"] = (as_kind(f(angles).astype(np.float32), kind) for f in (np.cos, np.sin))
        kw["rotary_interleaved"] = form == "rotary"
    elif form == "leftpad":
        kw["cache_leftpad"] = as_kind(np.array([2, 0], np.int32), kind)
    elif form == "batch_idx":
        kw["cache_batch_idx"] = as_kind(np.array([2, 0], np.int32), kind)
    elif form == "alibi":
        kw["alibi_slopes"] = as_kind(np.linspace(0.1, 0.7, H).astype(np.float32), kind)
    kw["cache_seqlens"] = as_kind(lens, kind)
    return q, kc, vc, k, v, kw


FORMS = ["rotary", "rotary_neox", "leftpad", "batch_idx", "paged", "alibi"]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seqlen_q", [1, 3])
def test_every_form_from_the_plan_equals_the_general_path(rng, general_path, kind, form, seqlen_q):
    q, kc, vc, k, v, kw = case(rng, kind, form, seqlen_q)
    q_before = clone(q)
    want_caches = (clone(kc), clone(vc))
    want = fa.flash_attn_with_kvcache(q, *want_caches, k, v, **kw)
    got_caches = (clone(kc), clone(vc))
    fa.flash_attn_with_kvcache(q, clone(kc), clone(vc), k, v, **kw)  # stored here, run from the plan below
    before = hits()
    got = fa.flash_attn_with_kvcache(q, *got_caches, k, v, **kw)
    assert hits() == before + 1 and len(general_path) == 1
    same(want, got)
    same(want_caches[0], got_caches[0])
    same(want_caches[1], got_caches[1])
    same(q, q_before)  # rotary: q rotated in a private copy, never the caller's


@pytest.mark.parametrize("form", FORMS)
def test_new_values_run_from_the_same_plan(rng, form):
    q, kc, vc, k, v, kw = case(rng, "torch", form)
    fa.flash_attn_with_kvcache(q, clone(kc), clone(vc), k, v, **kw)
    kw["cache_seqlens"] = torch.tensor([7, 3], dtype=torch.int32)
    if form == "leftpad":
        kw["cache_leftpad"] = torch.tensor([0, 3], dtype=torch.int32)
    elif form == "batch_idx":
        kw["cache_batch_idx"] = torch.tensor([1, 2], dtype=torch.int32)
    elif form == "paged":
        kw["block_table"] = torch.tensor([[3, 2], [5, 4]], dtype=torch.int32)
    elif form == "alibi":
        kw["alibi_slopes"] = kw["alibi_slopes"] * 2
    elif form.startswith("rotary"):
        kw["rotary_sin"] = -kw["rotary_sin"]
    caches = (clone(kc), clone(vc))
    before = hits()
    got = fa.flash_attn_with_kvcache(q, *caches, k, v, **kw)
    assert hits() == before + 1
    _core.clear_plans()
    want_caches = (clone(kc), clone(vc))
    same(got, fa.flash_attn_with_kvcache(q, *want_caches, k, v, **kw))
    same(caches[0], want_caches[0])
    same(caches[1], want_caches[1])


def test_values_the_validation_refuses_raise_its_messages(rng):
    for form, arg, value, message in [
        ("leftpad", "cache_leftpad", [6, 0], r"cache_leftpad\[0\] = 6 is out of range: must be in \[0, cache_seqlens"),
        ("batch_idx", "cache_batch_idx", [0, 3], r"cache_batch_idx\[1\] = 3 is out of range"),
        ("paged", "block_table", [[4, 1], [6, 0]], r"block_table: entry 6 is not a page index in \[0, 6\)"),
        ("rotary", "cache_seqlens", [5, 20], r"rotary_cos: has 20 positions \(rows\) but positions up to 20"),
        ("leftpad", "cache_seqlens", [5, 32], r"cache_seqlens\[1\] = 32 plus 1 new rows exceed the cache length 32"),
    ]:
        _core.clear_plans()
        q, kc, vc, k, v, kw = case(rng, "numpy", form)
        if form == "rotary":  # 20 positions: enough for cache_seqlens up to 19 and the new row
            kw["rotary_cos"], kw["rotary_sin"] = kw["rotary_cos"][:20], kw["rotary_sin"][:20]
        for _ in range(2):
            fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)
        assert hits() == 1, form
        kw[arg] = np.array(value, np.int32)
        with pytest.raises(ValueError, match=message):
            fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)


def test_two_sequences_appending_to_one_row_are_refused_after_a_plan(rng):
    q, kc, vc, k, v, kw = case(rng, "numpy", "batch_idx")
    for _ in range(2):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)
    kw["cache_batch_idx"] = np.array([1, 1], np.int32)
    with pytest.raises(ValueError, match="both append to cache row 1"):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_no_stale_plan_after_a_change_of_any_key_component(rng, general_path, kind):
    q, kc, vc, k, v, kw = case(rng, kind, "rotary")
    fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)
    cos, sin = kw["rotary_cos"], kw["rotary_sin"]
    slopes = as_kind(np.linspace(0.1, 0.7, H).astype(np.float32), kind)
    changes = [
        ("no rotary", dict(rotary_cos=None, rotary_sin=None)),
        ("neox rotary", dict(rotary_interleaved=False)),
        ("shorter tables", dict(rotary_cos=cos[:20], rotary_sin=sin[:20])),
        ("narrower tables", dict(rotary_cos=cos[:, :2], rotary_sin=sin[:, :2])),
        ("left padding", dict(cache_leftpad=as_kind(np.array([1, 1], np.int32), kind))),
        ("alibi", dict(alibi_slopes=slopes)),
        ("softcap", dict(softcap=1.5)),
        ("a window", dict(window_size=(3, 0))),
        ("no causal", dict(causal=False)),
        ("no lse", dict(return_softmax_lse=False)),
        ("num_splits", dict(num_splits=2)),
        ("the simulator", dict(backend="sim")),
    ]
    for what, change in changes:
        opts = dict(kw, **change)
        calls = len(general_path)
        caches = (clone(kc), clone(vc))
        got = fa.flash_attn_with_kvcache(q, *caches, k, v, **opts)
        assert len(general_path) == calls + 1, what  # a new form: validated
        again = (clone(kc), clone(vc))
        same(fa.flash_attn_with_kvcache(q, *again, k, v, **opts), got)
        same(caches[0], again[0])
    # the caches reallocated (same shapes, another address): written there, not where the plan first saw them
    fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)
    kc2, vc2 = clone(kc), clone(vc)
    before = hits()
    got = fa.flash_attn_with_kvcache(q, kc2, vc2, k, v, **kw)
    assert hits() == before + 1
    want_caches = (clone(kc), clone(vc))
    _core.clear_plans()
    same(got, fa.flash_attn_with_kvcache(q, *want_caches, k, v, **kw))
    same(kc2, want_caches[0])
