"""The plan cache over every call form of the attention functions (flash_attn_cy/_core_planned_attn.pxi; issue 18):
the packed variants, the varlen family (packed, paged), ALiBi, dropout, the probabilities, windows and softcap. A call
run from a stored plan gives exactly what the general path gives; a change of anything the key holds (shape, dtype,
kind, option, backend) validates again; what is data (pointers, cu_seqlens, max_seqlen, row counts, slopes, pages) is
read on every call, so that a resized or reallocated tensor or new values never meet a stale plan; and data the
validation refuses raises the general path's message after a plan was stored."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core, _validate
from flash_attn_cy.interface import FLASH_ATTN_PROBS

from _plan_cache_support import as_kind, count_calls, fresh_plans  # noqa: F401 (fresh_plans: autouse)
from conftest import randn

torch = pytest.importorskip("torch")

H, HK, D = 4, 2, 16


@pytest.fixture
def general_path(monkeypatch):
    """Counts the calls that went through validation (the general path)."""
    seen = []
    count_calls(monkeypatch, _validate, "attention", lambda: seen.append(1))
    return seen


def same(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert (x is None) == (y is None)
            if x is not None:
                same(x, y)
        return
    assert type(a) is type(b) and tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype
    assert (a.stride() == b.stride()) if torch.is_tensor(a) else (a.strides == b.strides)  # the same layout too
    a, b = (x.double().numpy() if torch.is_tensor(x) else x.astype(np.float64) for x in (a, b))
    np.testing.assert_array_equal(a, b)


def hits():
    return _core.plan_cache_info()["hits"]


def twice(call):
    """call() on the general path, then from the plan (which must be used): both results, which must be equal."""
    first = call()
    before = hits()
    second = call()
    assert hits() == before + 1, "the second call did not run from the plan"
    same(first, second)
    return second


def general(call):
    """call() with no plan stored: what the general path gives."""
    _core.clear_plans()
    return call()


LENS = (3, 5, 1)


def varlen_tensors(rng, kind, lens=LENS, heads_kv=HK):
    total = sum(lens)
    cu = as_kind(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32), kind)
    q = as_kind(randn(rng, (total, H, D)), kind)
    k, v = (as_kind(randn(rng, (total, heads_kv, D)), kind) for _ in range(2))
    return q, k, v, cu, max(lens)


def paged_tensors(rng, kind, lens=LENS, page=16):
    pages = 2 * len(lens) + 2  # two pages per sequence and two no sequence uses
    k, v = (as_kind(randn(rng, (pages, page, HK, D)), kind) for _ in range(2))
    table = np.zeros((len(lens), 2), np.int32)
    perm = rng.permutation(pages)
    for b in range(len(lens)):
        table[b] = perm[2 * b:2 * b + 2]
    return k, v, as_kind(table, kind)


FORMS = ["dense", "qkvpacked", "kvpacked", "varlen", "varlen_qkvpacked", "varlen_kvpacked", "varlen_paged"]


def form_call(rng, form, kind):
    """A function (options) -> a call of the public function of `form` on fixed inputs."""
    if form in ("dense", "qkvpacked", "kvpacked"):
        hk = H if form == "qkvpacked" else HK
        q = as_kind(randn(rng, (2, 5, H, D)), kind)
        k, v = (as_kind(randn(rng, (2, 5 if form == "qkvpacked" else 7, hk, D)), kind) for _ in range(2))
        stack = (lambda xs, ax: np.stack(xs, ax)) if kind == "numpy" else (lambda xs, ax: torch.stack(xs, ax))
        if form == "dense":
            return lambda **o: fa.flash_attn_func(q, k, v, backend="cpu", **o)
        if form == "qkvpacked":
            qkv = stack([q, k, v], 2)
            return lambda **o: fa.flash_attn_qkvpacked_func(qkv, backend="cpu", **o)
        kv = stack([k, v], 2)
        return lambda **o: fa.flash_attn_kvpacked_func(q, kv, backend="cpu", **o)
    q, k, v, cu, m = varlen_tensors(rng, kind, heads_kv=H if form == "varlen_qkvpacked" else HK)
    stack = (lambda xs, ax: np.stack(xs, ax)) if kind == "numpy" else (lambda xs, ax: torch.stack(xs, ax))
    if form == "varlen":
        return lambda **o: fa.flash_attn_varlen_func(q, k, v, cu, cu, m, m, backend="cpu", **o)
    if form == "varlen_qkvpacked":
        qkv = stack([q, k, v], 1)
        return lambda **o: fa.flash_attn_varlen_qkvpacked_func(qkv, cu, m, backend="cpu", **o)
    if form == "varlen_kvpacked":
        kv = stack([k, v], 1)
        return lambda **o: fa.flash_attn_varlen_kvpacked_func(q, kv, cu, cu, m, m, backend="cpu", **o)
    kp, vp, table = paged_tensors(rng, kind)
    return lambda **o: fa.flash_attn_varlen_func(q, kp, vp, cu, cu, m, m, block_table=table, backend="cpu", **o)


def options(kind, which, batch):
    slopes = np.linspace(0.1, 0.9, H).astype(np.float32)
    return {
        "plain": dict(causal=True),
        "alibi": dict(causal=True, alibi_slopes=as_kind(slopes, kind)),
        "alibi_rows": dict(alibi_slopes=as_kind(np.tile(slopes, (batch, 1)) * np.arange(1, batch + 1)[:, None]
                                                .astype(np.float32), kind)),
        "dropout": dict(causal=True, dropout_p=0.3, seed=(7, 11)),
        "probs": dict(causal=True, return_attn_probs=True),
        "probs_rule": dict(return_attn_probs=FLASH_ATTN_PROBS),
        "window": dict(window_size=(2, 1), softcap=3.0, softmax_scale=0.4),
    }[which]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("which", ["plain", "alibi", "alibi_rows", "dropout", "probs", "probs_rule", "window"])
def test_every_form_from_the_plan_equals_the_general_path(rng, general_path, kind, form, which):
    call = form_call(rng, form, kind)
    opts = options(kind, which, 2 if form in ("dense", "qkvpacked", "kvpacked") else len(LENS))
    got = twice(lambda: call(**opts))
    assert len(general_path) == 1
    if which in ("probs", "probs_rule"):
        assert isinstance(got, tuple) and len(got) == 3 and (got[2] is None) == (which == "probs_rule")


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_dropout_without_a_seed_draws_from_the_global_rng_on_every_call(rng, kind):
    call = form_call(rng, "varlen", kind)
    seed = torch.manual_seed if kind == "torch" else np.random.seed
    seed(3)
    first = call(dropout_p=0.5)
    seed(3)
    want = call(dropout_p=0.5)  # from the plan, the same draw as the general path's
    same(first, want)
    assert not np.array_equal(np.asarray(call(dropout_p=0.5)), np.asarray(want))  # the next draw differs
    with pytest.raises(TypeError, match="seed"):  # seed is checked on every call, as by the general path
        call(dropout_p=0.5, seed="x")


def test_varlen_data_is_read_on_every_call(rng, general_path):
    """cu_seqlens values, max_seqlen and the packed row count are data: new values run from the same plan and give
    the general path's result."""
    q, k, v, cu, m = varlen_tensors(rng, "torch", lens=(4, 4, 4))
    run = lambda q, k, v, cu, m: fa.flash_attn_varlen_func(q, k, v, cu, cu, m, m, causal=True, backend="cpu")  # noqa
    run(q, k, v, cu, m)
    for lens in ((2, 7, 3), (12, 0, 0), (1, 1, 10)):
        cu.copy_(torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)))
        before = hits()
        got = run(q, k, v, cu, max(lens) + 1)
        assert hits() == before + 1
        same(got, general(lambda: run(q, k, v, cu, max(lens) + 1)))
    q2, k2, v2, cu2, m2 = varlen_tensors(rng, "torch", lens=(6, 9, 2))  # more rows: the same form
    run(q2, k2, v2, cu2, m2)
    before = hits()
    same(run(q2, k2, v2, cu2, m2), general(lambda: run(q2, k2, v2, cu2, m2)))


def test_varlen_values_the_validation_refuses_raise_its_messages(rng):
    q, k, v, cu, m = varlen_tensors(rng, "numpy")
    fa.flash_attn_varlen_func(q, k, v, cu, cu, m, m, backend="cpu")
    fa.flash_attn_varlen_func(q, k, v, cu, cu, m, m, backend="cpu")
    assert hits() == 1
    bad = cu.copy()
    bad[1], bad[2] = bad[2], bad[1]
    with pytest.raises(ValueError, match=r"cu_seqlens_q: must be non-decreasing"):
        fa.flash_attn_varlen_func(q, k, v, bad, cu, m, m, backend="cpu")
    with pytest.raises(ValueError, match=r"max_seqlen_k: 4 is less than the longest sequence"):
        fa.flash_attn_varlen_func(q, k, v, cu, cu, m, m - 1, backend="cpu")
    with pytest.raises(ValueError, match=r"cu_seqlens_k: last entry 9 exceeds the 8 rows of k"):
        fa.flash_attn_varlen_func(q, k[:8], v[:8], cu, cu, m, m, backend="cpu")
    with pytest.raises(ValueError, match=r"v: total_k 8 must equal k's 9"):
        fa.flash_attn_varlen_func(q, k, v[:8], cu, cu, m, m, backend="cpu")
    with pytest.raises(ValueError, match=r"max_seqlen_q: must be >= 0"):
        fa.flash_attn_varlen_func(q, k, v, cu, cu, -1, m, backend="cpu")
    # rows past cu_seqlens_q[-1] belong to no sequence: zeros, as the general path makes them
    longer = np.concatenate([q, q[:2]])
    out = fa.flash_attn_varlen_func(longer, k, v, cu, cu, m, m, backend="cpu")
    out = fa.flash_attn_varlen_func(longer, k, v, cu, cu, m, m, backend="cpu")
    assert not out[-2:].any()


def test_paged_varlen_pages_are_checked_on_every_call(rng):
    q, _, _, cu, m = varlen_tensors(rng, "numpy")
    kp, vp, table = paged_tensors(rng, "numpy")
    call = lambda t: fa.flash_attn_varlen_func(q, kp, vp, cu, cu, m, m, block_table=t, backend="cpu")  # noqa
    call(table)
    moved = table.copy()
    moved[0, 0] = [p for p in range(kp.shape[0]) if p not in table][0]  # sequence 0 reads another page
    before = hits()
    got = call(moved)
    assert hits() == before + 1
    same(got, general(lambda: call(moved)))
    call(table)
    bad = table.copy()
    bad[1, 0] = kp.shape[0]
    with pytest.raises(ValueError, match=r"block_table: entry %d is not a page index" % kp.shape[0]):
        call(bad)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_no_stale_plan_after_a_change_of_any_key_component(rng, general_path, kind):
    """Each call changes one thing the key holds (or data the plan must not remember) and must give what the general
    path gives for it: a stale plan would return the earlier call's result or run it with the earlier arguments."""
    qn, kn, vn = randn(rng, (2, 5, H, D)), randn(rng, (2, 7, HK, D)), randn(rng, (2, 7, HK, D))
    q, k, v = (as_kind(x, kind) for x in (qn, kn, vn))
    base = dict(causal=True, backend="cpu")
    fa.flash_attn_func(q, k, v, **base)
    slopes = as_kind(np.linspace(0.2, 0.8, H).astype(np.float32), kind)
    changes = [
        ("another seqlen_q", (q[:, :3], k, v), base),
        ("another dtype", tuple(as_kind(x.astype(np.float64), kind) for x in (qn, kn, vn)), base),
        ("causal off", (q, k, v), dict(base, causal=False)),
        ("a window", (q, k, v), dict(base, window_size=(1, 0))),
        ("softcap", (q, k, v), dict(base, softcap=2.0)),
        ("softmax_scale", (q, k, v), dict(base, softmax_scale=0.1)),
        ("alibi", (q, k, v), dict(base, alibi_slopes=slopes)),
        ("other alibi values", (q, k, v), dict(base, alibi_slopes=slopes * 3)),
        ("dropout", (q, k, v), dict(base, dropout_p=0.5, seed=1)),
        ("another dropout seed", (q, k, v), dict(base, dropout_p=0.5, seed=2)),
        ("probabilities", (q, k, v), dict(base, return_attn_probs=True)),
        ("deterministic", (q, k, v), dict(base, deterministic=True)),
        ("the simulator", (q, k, v), dict(base, backend="sim")),
    ]
    for what, tensors, opts in changes:
        calls = len(general_path)
        got = fa.flash_attn_func(*tensors, **opts)
        got_again = fa.flash_attn_func(*tensors, **opts)  # from the plan just stored (data changes: the same plan)
        want = general(lambda: fa.flash_attn_func(*tensors, **opts))
        same(got, want)
        same(got_again, want)
        assert len(general_path) >= calls + 1, what  # validated again: a new form
    # the same tensor objects with new contents, and reallocated at another address: read again on every call
    fa.flash_attn_func(q, k, v, **base)
    if kind == "torch":
        k.copy_(torch.from_numpy(randn(rng, (2, 7, HK, D))))
        v.set_(torch.from_numpy(randn(rng, (2, 7, HK, D))))  # another storage, same shape
        q.resize_(2, 4, H, D)  # resized in place
    else:
        k[...] = randn(rng, (2, 7, HK, D))
        q = q[:, :4].copy()
    before = hits()
    got = fa.flash_attn_func(q, k, v, **base)
    same(got, general(lambda: fa.flash_attn_func(q, k, v, **base)))
    assert kind == "numpy" or hits() == before  # resized: a new form, validated again


def test_varlen_keys_and_queries_with_their_own_cu_seqlens(rng, general_path):
    """One array for cu_seqlens_q and cu_seqlens_k is read once; another array for the keys is another form, whose
    values are read on every call as well."""
    q, k, v, cu, m = varlen_tensors(rng, "torch", lens=(4, 4, 4))
    run = lambda cu_k, m_k: fa.flash_attn_varlen_func(q, k, v, cu, cu_k, m, m_k, backend="cpu")  # noqa: E731
    twice(lambda: run(cu, m))
    cu_k = torch.tensor([0, 2, 9, 12], dtype=torch.int32)
    calls = len(general_path)
    got = run(cu_k, 7)
    assert len(general_path) == calls + 1  # a new form
    same(got, general(lambda: run(cu_k, 7)))
    run(cu_k, 7)
    cu_k.copy_(torch.tensor([0, 6, 7, 12], dtype=torch.int32))
    before = hits()
    got = run(cu_k, 6)
    assert hits() == before + 1
    same(got, general(lambda: run(cu_k, 6)))
