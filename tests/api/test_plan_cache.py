"""The plan cache (flash_attn_cy/_core_plans.pxi; issue 18, host cost per call): a call of a form already validated and
run once runs from its stored plan, and gives exactly what the general path gives; anything a plan cannot vouch for
(data out of range, strides to copy, overlapping or read-only caches, autograd, tracing, a spy on the ABI) still goes
through the general path, with its checks and messages."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core, _validate, _validate_kvcache

from _plan_cache_support import count_calls, fresh_plans  # noqa: F401 (fresh_plans: autouse)
from conftest import DTYPES, randn

torch = pytest.importorskip("torch")

B, S, H, HK, D, CAP = 2, 5, 4, 2, 16, 12


@pytest.fixture
def general_path(monkeypatch):
    """Counts the calls that went through validation (the general path)."""
    seen = {"attention": 0, "kvcache": 0}
    count_calls(monkeypatch, _validate, "attention", lambda: seen.update(attention=seen["attention"] + 1))
    count_calls(monkeypatch, _validate_kvcache, "kvcache", lambda: seen.update(kvcache=seen["kvcache"] + 1))
    return seen


def as_kind(x, kind):
    if kind == "numpy":
        return x
    if x.dtype == DTYPES.get("bf16"):  # exact: the values are bfloat16 already
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(x.copy())


def same(a, b):
    a, b = (x.float().numpy() if torch.is_tensor(x) else x.astype(np.float64) for x in (a, b))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("opts", [dict(causal=True), dict(window_size=(3, 1), softcap=2.5, softmax_scale=0.3),
                                  dict(causal=False, window_size=[-1, -1])])
def test_flash_attn_func_from_the_plan_equals_the_general_path(rng, general_path, kind, dtype, opts):
    q, k, v = (as_kind(randn(rng, shape, dtype), kind) for shape in ((B, S, H, D), (B, 7, HK, D), (B, 7, HK, D)))
    first = fa.flash_attn_func(q, k, v, backend="cpu", **opts)
    hits = _core.plan_cache_info()["hits"]
    second = fa.flash_attn_func(q, k, v, backend="cpu", **opts)
    window_as_list = isinstance(opts.get("window_size"), list)  # a list is not a form a key describes
    assert general_path["attention"] == (2 if window_as_list else 1)
    assert _core.plan_cache_info()["hits"] == hits + (0 if window_as_list else 1)
    assert type(second) is type(first) and second.dtype == first.dtype and second.shape == first.shape
    assert second is not first
    same(first, second)


def test_any_change_of_form_is_validated_again(rng, general_path):
    q, k, v = (randn(rng, s) for s in ((B, S, H, D), (B, 7, HK, D), (B, 7, HK, D)))
    fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    calls = [dict(causal=False), dict(causal=True, softcap=1.0), dict(causal=True, softmax_scale=0.5),
             dict(causal=True, window_size=(2, 0)), dict(causal=True, backend="auto"), dict(causal=1),
             dict(causal=True, dropout_p=0.0)]
    for n, extra in enumerate(calls, start=2):
        opts = dict(backend="cpu")
        opts.update(extra)
        fa.flash_attn_func(q, k, v, **opts)
        assert general_path["attention"] == n, extra
    fa.flash_attn_func(q[:, :4], k, v, causal=True, backend="cpu")  # another shape
    assert general_path["attention"] == len(calls) + 2
    with pytest.raises(ValueError, match="dropout_p"):  # a value validation refuses never reaches a plan
        fa.flash_attn_func(q, k, v, causal=True, dropout_p=1.5, backend="cpu")


def test_a_plan_is_not_used_where_its_checks_would_fail(rng):
    q, k, v = (randn(rng, s) for s in ((B, S, H, D), (B, 7, HK, D), (B, 7, HK, D)))
    fa.flash_attn_func(q, k, v, backend="cpu")
    with pytest.raises(TypeError, match="k"):  # same shapes, another dtype: another form, validated
        fa.flash_attn_func(q, k.astype(np.float64), v, backend="cpu")
    with pytest.raises(TypeError, match="kind"):
        fa.flash_attn_func(q, torch.from_numpy(k), v, backend="cpu")
    # strides the ABI cannot take (copied by the general path) and non-native memory: same results
    big = randn(rng, (B, 7, HK, 2 * D))
    strided_k = big[..., ::2]
    want = fa.flash_attn_func(q, np.ascontiguousarray(strided_k), v, backend="cpu")
    fa.flash_attn_func(q, np.ascontiguousarray(strided_k), v, backend="cpu")
    same(fa.flash_attn_func(q, strided_k, v, backend="cpu"), want)


def test_torch_autograd_and_tracing_are_not_bypassed(rng):
    qn, kn, vn = (randn(rng, s) for s in ((B, S, H, D), (B, 7, HK, D), (B, 7, HK, D)))
    q, k, v = (torch.from_numpy(x) for x in (qn, kn, vn))
    for _ in range(2):
        fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    qg = q.clone().requires_grad_()
    out = fa.flash_attn_func(qg, k, v, causal=True, backend="cpu")
    assert out.requires_grad
    out.sum().backward()
    assert qg.grad is not None and qg.grad.abs().sum() > 0
    with torch.no_grad():  # grad mode off: no graph to record, the plan runs
        hits = _core.plan_cache_info()["hits"]
        assert not fa.flash_attn_func(qg, k, v, causal=True, backend="cpu").requires_grad
        assert _core.plan_cache_info()["hits"] == hits + 1
    traced = torch.jit.trace(lambda a, b, c: fa.flash_attn_func(a, b, c, causal=True, backend="cpu"), (q, k, v),
                             check_trace=False)
    assert "flash_attn_cy::fwd" in str(traced.graph)
    q2 = torch.from_numpy(randn(rng, (B, S, H, D)))
    same(traced(q2, k, v), fa.flash_attn_func(q2, k, v, causal=True, backend="cpu"))


def test_negated_views_and_functorch_go_the_general_way(rng):
    qn, kn, vn = (randn(rng, s) for s in ((B, S, H, D), (B, 7, HK, D), (B, 7, HK, D)))
    q, k, v = (torch.from_numpy(x) for x in (qn, kn, vn))
    want = fa.flash_attn_func(q, k, v, backend="cpu")
    fa.flash_attn_func(q, k, v, backend="cpu")
    neg_k = (-k)._neg_view()  # values of k, storage holding -k
    same(fa.flash_attn_func(q, neg_k, v, backend="cpu"), want)
    with pytest.raises(TypeError, match="torch.func"):
        torch.func.vmap(lambda x: fa.flash_attn_func(x, k[0], v[0], backend="cpu"))(q)


def test_a_spy_on_the_abi_sees_every_call(rng, monkeypatch):
    q, k, v = (randn(rng, s) for s in ((B, S, H, D), (B, 7, HK, D), (B, 7, HK, D)))
    fa.flash_attn_func(q, k, v, backend="cpu")
    seen = []
    real = _core.forward
    monkeypatch.setattr(_core, "forward", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    fa.flash_attn_func(q, k, v, backend="cpu")
    assert seen == [1]


def test_many_forms_evict_each_other_without_mixing_up(rng):
    slots = _core.plan_cache_info()["slots"]
    forms = [(randn(rng, (1, s, 2, 8)), randn(rng, (1, s + 1, 1, 8))) for s in range(1, slots + 9)]
    want = [fa.flash_attn_func(q, k, k, causal=True, backend="cpu") for q, k in forms]
    for _ in range(2):
        for (q, k), w in zip(forms, want):
            same(fa.flash_attn_func(q, k, k, causal=True, backend="cpu"), w)
    assert 0 < _core.plan_cache_info()["used"] <= slots


# ---- flash_attn_with_kvcache ----------------------------------------------------------------------------------

def kv_case(rng, kind, dtype="fp32"):
    q = as_kind(randn(rng, (B, 1, H, D), dtype), kind)
    kc, vc = (as_kind(randn(rng, (B + 1, CAP, HK, D), dtype), kind) for _ in range(2))
    k, v = (as_kind(randn(rng, (B, 1, HK, D), dtype), kind) for _ in range(2))
    return q, kc, vc, k, v


def clone(x):
    return x.clone() if torch.is_tensor(x) else x.copy()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("lens", ["int", "array", "none"])
@pytest.mark.parametrize("lse", [False, True])
def test_kvcache_from_the_plan_equals_the_general_path(rng, general_path, kind, lens, lse):
    q, kc, vc, k, v = kv_case(rng, kind)
    if lens == "int":
        seqlens = [4, 5, 6]
    else:
        seqlens = [np.array([4, 7], np.int32), np.array([5, 2], np.int32), np.array([6, 0], np.int32)]
        if kind == "torch":
            seqlens = [torch.from_numpy(s) for s in seqlens]
    general = (clone(kc), clone(vc))
    planned = (clone(kc), clone(vc))
    for step, s in enumerate(seqlens):
        new = (None, None) if lens == "none" else (k, v)
        s = None if lens == "none" else s
        want = fa.flash_attn_with_kvcache(q, *general, *new, cache_seqlens=s, causal=True,
                                          return_softmax_lse=lse, backend="cpu")
        _core.clear_plans()  # the general path again, then twice from the plan
        fa.flash_attn_with_kvcache(q, clone(planned[0]), clone(planned[1]), *new, cache_seqlens=s, causal=True,
                                   return_softmax_lse=lse, backend="cpu")
        hits = _core.plan_cache_info()["hits"]
        got = fa.flash_attn_with_kvcache(q, *planned, *new, cache_seqlens=s, causal=True, return_softmax_lse=lse,
                                         backend="cpu")
        assert _core.plan_cache_info()["hits"] == hits + 1
        for w, g in zip(want if lse else (want,), got if lse else (got,)):
            same(w, g)
        same(general[0], planned[0])
        same(general[1], planned[1])


def test_kvcache_lengths_are_checked_on_every_call(rng):
    q, kc, vc, k, v = kv_case(rng, "numpy")
    fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=np.array([3, 4], np.int32), backend="cpu")
    fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=np.array([4, 5], np.int32), backend="cpu")
    assert _core.plan_cache_info()["hits"] == 1
    with pytest.raises(ValueError, match=r"cache_seqlens\[1\] = 12 plus 1 new rows exceed the cache length 12"):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=np.array([0, 12], np.int32), backend="cpu")
    with pytest.raises(ValueError, match="cache_seqlens"):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=np.array([-1, 0], np.int32), backend="cpu")
    with pytest.raises(ValueError, match="cache_seqlens"):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=13, backend="cpu")


def test_kvcache_in_place_rules_hold_after_a_plan(rng):
    q, kc, vc, k, v = kv_case(rng, "numpy")
    lens = np.array([3, 4], np.int32)
    for _ in range(2):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens, backend="cpu")
    ro = kc.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        fa.flash_attn_with_kvcache(q, ro, vc, k, v, cache_seqlens=lens, backend="cpu")
    with pytest.raises(ValueError, match="shares memory"):
        fa.flash_attn_with_kvcache(q, kc, kc, k, v, cache_seqlens=lens, backend="cpu")
    qt, kct, vct, kt, vt = kv_case(rng, "torch")
    lt = torch.from_numpy(lens)
    for _ in range(2):
        fa.flash_attn_with_kvcache(qt, kct, vct, kt, vt, cache_seqlens=lt, backend="cpu")
    version = kct._version
    fa.flash_attn_with_kvcache(qt, kct, vct, kt, vt, cache_seqlens=lt, backend="cpu")
    assert kct._version > version  # written through its memory: autograd is told, as by an in-place op
    with torch.inference_mode():
        inference_cache = kct.clone()
    with pytest.raises(RuntimeError, match="inference"):
        fa.flash_attn_with_kvcache(qt, inference_cache, vct, kt, vt, cache_seqlens=lt, backend="cpu")
    leaf = kct.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="requires grad"):
        fa.flash_attn_with_kvcache(qt, leaf, vct, kt, vt, cache_seqlens=lt, backend="cpu")


def test_threads_share_the_cache_safely(rng):
    """Threads storing and running plans of many forms at once (the slots change hands while calls run without the
    GIL) get what a single thread gets."""
    import threading

    forms = [(randn(rng, (1, s, 2, 8)), randn(rng, (1, 2 * s, 1, 8))) for s in range(1, 81)]
    want = [fa.flash_attn_func(q, k, k, causal=True, backend="cpu") for q, k in forms]
    failures = []

    def work(offset):
        for i in range(3 * len(forms)):
            j = (i * 7 + offset) % len(forms)
            q, k = forms[j]
            got = fa.flash_attn_func(q, k, k, causal=True, backend="cpu")
            if not np.array_equal(got, want[j]):
                failures.append(j)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and _core.plan_cache_info()["hits"] > 0
