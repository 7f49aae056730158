"""The benchmark library shared by `bench` and the asv suite (flash_attn_cy/_bench): the sides of a case compute the
same attention on the same values (so a ratio compares equal work), the host-cost run leaves the thread counts as it
found them, and `bench --group` runs an asv group's cases. Nothing here is timed for speed."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

import flash_attn_cy
from flash_attn_cy import _bench, _bench_cli
from flash_attn_cy._bench import cases, sides

torch = pytest.importorskip("torch")


def _as_flash_layout(out, shape, sdpa: bool):
    """A side's output as a float64 array in flash_attn's layout ([b, s, h, d]; varlen: [total, h, d]); ``sdpa``: it
    is SDPA's [b, h, s, d] (varlen: padded to the longest sequence). A side returning the probabilities too returns
    (out, ...)."""
    out = out[0] if isinstance(out, tuple) else out
    x = out.detach().to(torch.float64).numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float64)
    if sdpa:
        x = x.transpose(0, 2, 1, 3)
        if shape.mode == "varlen":
            x = np.concatenate([x[i, :n] for i, n in enumerate(shape.lengths)])
    return x


def _both(shape):
    ours = _as_flash_layout(sides.make_side("cpu", shape)(), shape, sdpa=False)
    theirs = _as_flash_layout(sides.make_side("torch", shape)(), shape, sdpa=True)
    assert ours.shape == theirs.shape, shape.label()
    return ours, theirs


@pytest.mark.parametrize("name,shape", cases.host_cost_shapes((1, 4)), ids=lambda x: getattr(x, "label", lambda: x)())
def test_host_cost_sides_compute_the_same_attention(name, shape):
    torch.manual_seed(0)  # dropout: both sides draw from torch's generator (a fixed draw: no flaky comparison)
    ours, theirs = _both(shape)
    if shape.option == "dropout":  # two RNGs: each side drops weights (its result moves off the plain one), unequal
        plain, _ = _both(dataclasses.replace(shape, option=""))
        assert np.isfinite(ours).all() and np.isfinite(theirs).all()
        assert shape.seqlen_k == 1 or (not np.allclose(ours, plain) and not np.allclose(theirs, plain)), name
        return
    assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-5), (name, np.abs(ours - theirs).max())


@pytest.mark.parametrize("shape", [
    cases.Shape(2, 4, 33, 33, 16, "fp32", True, heads_kv=2),
    cases.Shape(1, 4, 1, 40, 16, "fp32", True, "decode", heads_kv=1),
    cases.Shape(3, 2, 24, 24, 16, "fp32", True, "varlen", lengths=(24, 7, 13)),
], ids=lambda s: s.label())
def test_forward_sides_compute_the_same_attention(shape):
    """The sides of the bench's own modes: padded + masked SDPA against packed varlen, GQA, decode."""
    ours, theirs = _both(shape)
    assert np.allclose(ours, theirs, rtol=1e-4, atol=1e-5), np.abs(ours - theirs).max()


def test_a_side_without_the_feature_is_not_applicable():
    window = cases.Shape(1, 2, 16, 16, 16, "fp32", True, window=(4, 0))
    with pytest.raises(NotImplementedError, match="no sliding window"):
        sides.make_side("torch", window)
    assert sides.make_side("cpu", window)() is not None


def test_host_cost_runs_on_one_thread_and_restores_the_counts(monkeypatch):
    monkeypatch.setattr(_bench.timing, "SETTLE_SECONDS", 0.0)
    before = (flash_attn_cy.get_num_threads(), torch.get_num_threads())
    seen = []
    real = sides.make_side

    def spy(impl, shape):
        seen.append((flash_attn_cy.get_num_threads(), torch.get_num_threads()))
        return real(impl, shape)

    monkeypatch.setattr(sides, "make_side", spy)
    rows = _bench.run_host_cost(seqlens=(3,), min_time=0.0, min_reps=1)
    assert [r.name for r in rows] == list(cases.HOST_COST_CALLS)
    assert all(r.ms["cpu"] > 0 and r.ms["torch"] > 0 for r in rows)
    assert set(seen) == {(1, 1)}
    assert (flash_attn_cy.get_num_threads(), torch.get_num_threads()) == before


def test_flops_follow_one_rule_for_every_mode():
    full = cases.Shape(1, 2, 64, 64, 16, "fp32", False)
    assert full.flops() == 4 * 2 * 16 * 64 * 64
    # windows and causal non-square attention count the pairs the mask keeps
    win = dataclasses.replace(full, causal=True, window=(7, 0))
    assert win.flops() == 4 * 2 * 16 * cases.visible_pairs(64, 64, True, (7, 0))
    assert cases.visible_pairs(4, 6, True) == 3 + 4 + 5 + 6
    # varlen: the sum over the sequences; backward 2.5x the forward
    var = cases.Shape(2, 2, 64, 64, 16, "fp32", False, "varlen", lengths=(64, 10))
    assert var.flops() == 4 * 2 * 16 * (64 * 64 + 10 * 10)
    assert dataclasses.replace(full, mode="bwd").flops() == 2.5 * full.flops()


def _args(**kw):
    base = dict(group=None, quick=False, seqlens=None, headdims=None, causal=None, batch=None, heads=None,
                backward=False, decode=False, kv_heads=0)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("group", _bench_cli.CLI_GROUPS)
def test_bench_group_runs_the_asv_groups_cases(group):
    shapes, backends, comparisons = _bench_cli._cases(_args(group=group), ["cpu"], ["torch"], ["fp32"])
    assert shapes == _bench.GROUPS[group].shapes()
    impls = _bench.GROUPS[group].impls
    assert backends == (["sim"] if impls == "sim" else ["cpu"])
    assert comparisons == (["torch"] if impls == "all" else [])
