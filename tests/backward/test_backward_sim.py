"""The Metal backward kernels (kernels/fa_bwd.metal) executed by the simulator, against float64 torch autograd of the
reference with the project's tolerance rule, under two thread schedules (races and reads of uninitialised
threadgroup memory show up as differences between schedules, out-of-bounds accesses as faults).

Every specialization (fp32/fp16/bf16 x head dim buckets 64/80/96/128/256) runs once; the feature grid covers causal
with rows that see no key, sliding windows, ALiBi, softcap, GQA/MQA, varlen, seqused_k and dropout.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _tolerance import assert_close_to_ref  # noqa: E402
from conftest import available_backends, randn, to_torch  # noqa: E402
from test_backward import TORCH_DTYPES, forward_with_lse  # noqa: E402
from test_dropout import keep_mask  # noqa: E402

from flash_attn_cy import _arrays, _core  # noqa: E402
from flash_attn_cy.reference import attention_ref_torch  # noqa: E402
from _sim_math import sim_math  # noqa: E402,F401  (every test: IEEE and fast math)

pytestmark = pytest.mark.usefixtures("sim_math")

SCHEDULES = 2
NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@pytest.fixture(autouse=True)
def _need_sim():
    if "sim" not in available_backends():
        pytest.skip("the sim backend is not available in this build")


def sim_backward(dtype, dout, q, k, v, out, lse, *, varlen=False, **kw):
    """dq, dk, dv from the Metal kernels under the simulator, via the Cython entry (sim_schedules exposed)."""
    grads = [np.zeros_like(x) for x in (q, k, v)]
    view = lambda x, name, **o: _arrays.core_view(x, name, lead_axis=varlen, **o)  # noqa: E731
    kw.setdefault("softmax_scale", q.shape[-1] ** -0.5)
    _core.backward("sim", NAMES[dtype], view(dout, "dout"), view(q, "q"), view(k, "k"), view(v, "v"),
                   view(out, "out"), view(lse, "softmax_lse"), view(grads[0], "dq", in_place=True),
                   view(grads[1], "dk", in_place=True), view(grads[2], "dv", in_place=True),
                   sim_schedules=SCHEDULES, **kw)
    return grads


def ref_grads(q, k, v, dout, compute_dtype=None, **kw):
    tq, tk, tv = (to_torch(x).requires_grad_() for x in (q, k, v))
    out = attention_ref_torch(tq, tk, tv, compute_dtype=compute_dtype, **kw)
    out.backward(to_torch(dout[:out.shape[0]]).to(out.dtype))
    return [t.grad.detach().to(torch.float64).numpy() for t in (tq, tk, tv)]


def check(rng, dtype, q_shape, k_shape, *, fwd_kw=None, core_kw=None, ref_kw=None):
    """Forward on the CPU backend (out, lse), backward on the simulator, gradients vs the reference."""
    q, k, v = randn(rng, q_shape, dtype), randn(rng, k_shape, dtype), randn(rng, k_shape, dtype)
    dout = randn(rng, q_shape, dtype)
    out, lse = forward_with_lse(q, k, v, **(fwd_kw or {}))
    varlen = "cu_seqlens_q" in (core_kw or {})
    grads = sim_backward(dtype, dout, q, k, v, out, lse, varlen=varlen, **(core_kw or {}))
    g64 = ref_grads(q, k, v, dout, **(ref_kw or {}))
    glow = ref_grads(q, k, v, dout, compute_dtype=TORCH_DTYPES[dtype], **(ref_kw or {}))
    for name, ours, r64, rlow, like in zip(("dq", "dk", "dv"), grads, g64, glow, (q, k, v)):
        assert_close_to_ref(ours, r64, rlow, dtype=like.dtype, what=name)
    return grads


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("d", [64, 80, 96, 128, 256])
def test_every_specialization(rng, dtype, d):
    check(rng, dtype, (1, 11, 2, d), (1, 13, 1, d), fwd_kw=dict(causal=True), core_kw=dict(window_right=0),
          ref_kw=dict(causal=True))


@pytest.mark.parametrize("d", [1, 40, 100])
def test_odd_head_dims_use_the_next_bucket(rng, d):
    check(rng, "fp32", (1, 9, 2, d), (1, 12, 2, d))


def test_causal_rows_without_keys_and_tile_edges(rng):
    # 70 queries on 20 keys: the first 50 rows see nothing; 2 query blocks of 32 and a partial one
    check(rng, "fp32", (1, 70, 2, 32), (1, 20, 2, 32), fwd_kw=dict(causal=True), core_kw=dict(window_right=0),
          ref_kw=dict(causal=True))


def test_window_alibi_softcap_gqa(rng):
    slopes = np.array([[0.1, 0.2, 0.4, 0.8], [0.3, 0.3, 0.05, 0.6]], np.float32)
    opts = dict(window_size=(9, 4), softcap=3.0, alibi_slopes=slopes)
    check(rng, "fp16", (2, 41, 4, 64), (2, 50, 2, 64), fwd_kw=opts,
          core_kw=dict(window_left=9, window_right=4, softcap=3.0, alibi_slopes=slopes), ref_kw=opts)


def test_mqa_long_keys(rng):
    check(rng, "bf16", (1, 8, 4, 64), (1, 100, 1, 64))


def test_varlen(rng):
    cu_q, cu_k = np.array([0, 5, 17, 17, 40], np.int32), np.array([0, 9, 9, 30, 61], np.int32)
    varlen = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=23, max_seqlen_k=31)
    check(rng, "fp32", (40, 4, 24), (61, 2, 24), fwd_kw=dict(causal=True, **varlen),
          core_kw=dict(window_right=0, **varlen), ref_kw=dict(causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k))


def test_seqused_k(rng):
    # keys past seqused_k are not attended and get zero gradients
    used = np.array([7, 19], np.int32)
    q, k, v = randn(rng, (2, 10, 2, 16)), randn(rng, (2, 19, 2, 16)), randn(rng, (2, 19, 2, 16))
    dout = randn(rng, q.shape)
    out, lse, _ = _fwd_seqused(q, k, v, used)
    grads = sim_backward("fp32", dout, q, k, v, out, lse, seqused_k=used)
    g64 = ref_grads(q, k, v, dout, seqused_k=used)
    glow = ref_grads(q, k, v, dout, compute_dtype=torch.float32, seqused_k=used)
    for name, ours, r64, rlow in zip(("dq", "dk", "dv"), grads, g64, glow):
        assert_close_to_ref(ours, r64, rlow, dtype="float32", what=name)
    assert not grads[1][0, 7:].any() and not grads[2][0, 7:].any()


def _fwd_seqused(q, k, v, used):
    out = np.zeros_like(q)
    lse = np.zeros((q.shape[0], q.shape[2], q.shape[1]), np.float32)
    _core.forward("cpu", "float32", q, k, v, out, lse, softmax_scale=q.shape[-1] ** -0.5, seqused_k=used)
    return out, lse, None


def test_dropout_same_mask_as_cpu(rng):
    p, seed = 0.3, (123456789, 42)
    q, k, v = randn(rng, (1, 19, 2, 64)), randn(rng, (1, 23, 1, 64)), randn(rng, (1, 23, 1, 64))
    dout = randn(rng, q.shape)
    out, lse, _ = _core_forward_dropout(q, k, v, p, seed)
    sim = sim_backward("fp32", dout, q, k, v, out, lse, dropout_p=p, seed=seed[0], offset=seed[1])
    keep = keep_mask(seed[0], seed[1], 1, 2, 19, 23, p)

    def grads(compute_dtype):
        xs = [to_torch(x).requires_grad_() for x in (q, k, v)]
        o = attention_ref_torch(*xs, dropout_mask=keep, dropout_p=p, compute_dtype=compute_dtype)
        o.backward(to_torch(dout).to(o.dtype))
        return [x.grad.to(torch.float64).numpy() for x in xs]

    g64, glow = grads(None), grads(torch.float32)
    for name, ours, r64, rlow in zip(("dq", "dk", "dv"), sim, g64, glow):
        assert_close_to_ref(ours, r64, rlow, dtype="float32", what=name)


def _core_forward_dropout(q, k, v, p, seed):
    out = np.zeros_like(q)
    lse = np.zeros((q.shape[0], q.shape[2], q.shape[1]), np.float32)
    _core.forward("cpu", "float32", q, k, v, out, lse, softmax_scale=q.shape[-1] ** -0.5, dropout_p=p, seed=seed[0],
                  offset=seed[1])
    return out, lse, None


def test_plan_has_three_launches_and_no_quadratic_scratch(rng):
    import json

    q, k = randn(rng, (2, 300, 4, 64)), randn(rng, (2, 500, 2, 64))
    out, lse = np.zeros_like(q), np.zeros((2, 4, 300), np.float32)
    grads = [np.zeros_like(x) for x in (q, k, k)]
    plan = _core.describe_plan("backward", "sim", "float32", q, q, k, k, out, lse, *grads, softmax_scale=0.125)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    names = [launch["kernel"] for launch in plan["launches"]]
    # dQ before dK/dV: the dQ kernel refines rows with huge logits, whose results the dK/dV kernel reads
    assert names == ["fa_bwd_pre_f32", "fa_bwd_dq_f32_d64", "fa_bwd_dkdv_f32_d64"]
    # D (one float per row and head) and LSE2 with a refined row's reference (5 floats: the reference score in two
    # parts, its ALiBi distance, log2 of the row sum): O(seqlen) only
    assert sum(plan.get("scratch_bytes", [0])) <= 6 * 4 * (2 * 300) * 4 + 16
