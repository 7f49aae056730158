"""Acceptance tests for gradients: torch autograd through the public functions, the NumPy-level
flash_attn_cy.backward(...), deterministic=True, dropout reproducibility. Gradients are checked against torch float64
autograd of an independent attention (tests/_acc_ref.py) with the BRIEF.md rule, the low-precision budget coming from
the same autograd computed in the input dtype (flash-attention's own test recipe)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import flash_attn_cy
from flash_attn_cy import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                           flash_attn_varlen_func)

from _acc_ref import assert_rule, attn64, t64, varlen64

FLOORS = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


def _attn_lowp(q, k, v, **kw):
    """The same math as attn64, in the inputs' dtype (fp32 softmax for 16-bit, as flash-attention's ref does)."""
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = kw.get("scale") or d ** -0.5
    kk = k.repeat_interleave(h // hk, dim=2)
    vv = v.repeat_interleave(h // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float() * scale, kk.float())
    if kw.get("softcap", 0) > 0:
        s = kw["softcap"] * torch.tanh(s / kw["softcap"])
    from _acc_ref import visible
    s = s.masked_fill(~visible(sq, sk, kw.get("causal", False), kw.get("window", (-1, -1))), float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0).to(q.dtype)
    return torch.einsum("bhqk,bkhd->bqhd", p, vv)


def _grads(fn, inputs, dout):
    ins = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*ins)
    out.backward(dout)
    return out, [x.grad for x in ins]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,kw", [
    ((2, 17, 29, 4, 2, 40), {"causal": True}),
    ((1, 31, 9, 2, 1, 7), {"window": (4, 2), "softcap": 3.0}),
    ((1, 1, 23, 3, 3, 96), {}),
])
def test_autograd_matches_float64_autograd(dtype, shape, kw):
    torch.manual_seed(sum(shape))
    b, sq, sk, h, hk, d = shape
    q, k, v = torch.randn(b, sq, h, d, dtype=dtype), torch.randn(b, sk, hk, d, dtype=dtype), \
        torch.randn(b, sk, hk, d, dtype=dtype)
    dout = torch.randn(b, sq, h, d, dtype=dtype)
    api_kw = {"causal": kw.get("causal", False), "window_size": kw.get("window", (-1, -1)),
              "softcap": kw.get("softcap", 0.0)}
    out, (dq, dk, dv) = _grads(lambda a, b_, c: flash_attn_func(a, b_, c, backend="cpu", **api_kw), (q, k, v), dout)
    _, g64 = _grads(lambda a, b_, c: attn64(a, b_, c, **kw)[0], (t64(q), t64(k), t64(v)), t64(dout))
    _, glow = _grads(lambda a, b_, c: _attn_lowp(a, b_, c, **kw), (q, k, v), dout)
    for name, got, exact, low, like in zip("qkv", (dq, dk, dv), g64, glow, (q, k, v)):
        assert got.dtype == dtype and got.shape == like.shape, name
        floor_dt = FLOORS.get(dtype, None) or __import__("ml_dtypes").bfloat16
        assert_rule(got, exact, t64(low).detach().numpy(), floor_dt, "d" + name)


def test_packed_autograd_gives_packed_grads():
    torch.manual_seed(0)
    qkv = torch.randn(1, 13, 3, 2, 24, dtype=torch.float64, requires_grad=True)
    out = flash_attn_qkvpacked_func(qkv, causal=True, backend="cpu")
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape and qkv.grad.dtype == torch.float64
    ref = qkv.detach().clone().requires_grad_(True)
    attn64(ref[:, :, 0], ref[:, :, 1], ref[:, :, 2], causal=True)[0].sum().backward()
    # packed gradients are exactly the split ones stacked, and float64 gradients are float64-accurate
    q_, k_, v_ = (qkv.detach()[:, :, i].clone().requires_grad_(True) for i in range(3))
    flash_attn_func(q_, k_, v_, causal=True, backend="cpu").sum().backward()
    assert torch.equal(qkv.grad, torch.stack([q_.grad, k_.grad, v_.grad], 2))
    torch.testing.assert_close(qkv.grad, ref.grad, atol=1e-10, rtol=0)

    q = torch.randn(2, 5, 4, 8, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(2, 9, 2, 2, 8, dtype=torch.float64, requires_grad=True)
    flash_attn_kvpacked_func(q, kv, backend="cpu").pow(2).sum().backward()
    q2, kv2 = q.detach().clone().requires_grad_(True), kv.detach().clone().requires_grad_(True)
    attn64(q2, kv2[:, :, 0], kv2[:, :, 1])[0].pow(2).sum().backward()
    torch.testing.assert_close(kv.grad, kv2.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(q.grad, q2.grad, atol=1e-10, rtol=0)


def test_gradcheck_fp64_alibi_gqa():
    torch.manual_seed(1)
    q = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 6, 2, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 6, 2, 5, dtype=torch.float64, requires_grad=True)
    slopes = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float32)
    fn = lambda a, b, c: flash_attn_func(a, b, c, causal=True, softcap=5.0, alibi_slopes=slopes, backend="cpu")  # noqa
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6)


def test_varlen_autograd():
    torch.manual_seed(2)
    cu = torch.tensor([0, 3, 3, 12], dtype=torch.int32)
    q = torch.randn(12, 2, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(12, 1, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(12, 1, 16, dtype=torch.float64, requires_grad=True)
    out = flash_attn_varlen_func(q, k, v, cu, cu, 9, 9, causal=True, backend="cpu")
    (out * torch.arange(16, dtype=torch.float64)).sum().backward()
    ins = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    ref, _ = varlen64(*ins, cu.numpy(), cu.numpy(), causal=True)
    (ref * torch.arange(16, dtype=torch.float64)).sum().backward()
    for got, want in zip((q.grad, k.grad, v.grad), ins):
        torch.testing.assert_close(got, want.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_numpy_backward_function(rng, backend):
    b, sq, sk, h, d = 1, 11, 19, 2, 33
    q = rng.standard_normal((b, sq, h, d)).astype(np.float32)
    k = rng.standard_normal((b, sk, h, d)).astype(np.float32)
    v = rng.standard_normal((b, sk, h, d)).astype(np.float32)
    dout = rng.standard_normal((b, sq, h, d)).astype(np.float32)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend=backend)
    dq, dk, dv = flash_attn_cy.backward(dout, q, k, v, out, lse, causal=True, backend=backend)  # issue 9's spelling
    _, g64 = _grads(lambda a, b_, c: attn64(a, b_, c, causal=True)[0], (t64(q), t64(k), t64(v)), t64(dout))
    tq = [torch.from_numpy(x) for x in (q, k, v)]
    _, glow = _grads(lambda a, b_, c: _attn_lowp(a, b_, c, causal=True), tq, torch.from_numpy(dout))
    for name, got, exact, low in zip("qkv", (dq, dk, dv), g64, glow):
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        assert_rule(got, exact, t64(low).detach().numpy(), np.float32, "d" + name)


def test_deterministic_backward_is_bit_identical():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 150, 4, 64, requires_grad=True) for _ in range(3))
    grads = []
    for _ in range(3):
        for x in (q, k, v):
            x.grad = None
        flash_attn_func(q, k, v, causal=True, deterministic=True, backend="cpu").sum().backward()
        grads.append([x.grad.clone() for x in (q, k, v)])
    for g in grads[1:]:
        for a, b in zip(g, grads[0]):
            assert torch.equal(a, b)


def test_dropout_reproducible_with_manual_seed():
    q, k, v = (torch.randn(1, 33, 2, 16, requires_grad=True) for _ in range(3))
    res = []
    for _ in range(2):
        torch.manual_seed(123)
        for x in (q, k, v):
            x.grad = None
        out = flash_attn_func(q, k, v, dropout_p=0.3, backend="cpu")
        out.sum().backward()
        res.append((out.detach().clone(), q.grad.clone()))
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])
    with torch.no_grad():
        plain = flash_attn_func(q, k, v, backend="cpu")
    assert not torch.equal(res[0][0], plain)  # dropout did something
    out_eval = flash_attn_func(q.detach(), k.detach(), v.detach(), dropout_p=0.0, backend="cpu")
    torch.testing.assert_close(out_eval, plain)
