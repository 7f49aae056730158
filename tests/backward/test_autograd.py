"""PyTorch autograd through flash_attn_cy: gradients, packed variants, gradcheck, saved tensors, torch.compile."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _tolerance import assert_close_to_ref  # noqa: E402
from flash_attn_cy.reference import attention_ref_torch  # noqa: E402

import flash_attn_cy.interface as fa  # noqa: E402


def _leaf(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_attn_func_grads(dtype):
    q, k, v = _leaf(2, 33, 4, 24, dtype=dtype, seed=1), _leaf(2, 41, 2, 24, dtype=dtype, seed=2), \
        _leaf(2, 41, 2, 24, dtype=dtype, seed=3)
    dout = torch.randn(2, 33, 4, 24, generator=torch.Generator().manual_seed(4)).to(dtype)
    out = fa.flash_attn_func(q, k, v, causal=True, softcap=4.0)
    out.backward(dout)
    grads = [x.grad for x in (q, k, v)]
    for x, g in zip((q, k, v), grads):
        assert g.shape == x.shape and g.dtype == x.dtype

    def ref(compute_dtype):
        xs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        o = attention_ref_torch(*xs, causal=True, softcap=4.0, compute_dtype=compute_dtype)
        o.backward(dout.to(o.dtype))
        return [x.grad.to(torch.float64) for x in xs]

    g64, glow = ref(None), ref(dtype)
    for name, ours, r64, rlow in zip(("dq", "dk", "dv"), grads, g64, glow):
        assert_close_to_ref(ours.to(torch.float64), r64, rlow.numpy().astype(np.float32) if dtype == torch.float32
                            else rlow, dtype=str(dtype).replace("torch.", ""), what=name)


def test_packed_variants_give_packed_grads():
    qkv = _leaf(2, 19, 3, 2, 16, seed=5)
    out = fa.flash_attn_qkvpacked_func(qkv, causal=True)
    dout = torch.randn_like(out)
    out.backward(dout)
    q, k, v = (qkv.detach()[:, :, i].clone().requires_grad_() for i in range(3))
    fa.flash_attn_func(q, k, v, causal=True).backward(dout)
    assert qkv.grad.shape == qkv.shape
    for i, x in enumerate((q, k, v)):
        torch.testing.assert_close(qkv.grad[:, :, i], x.grad, rtol=0, atol=0)

    q = _leaf(2, 19, 4, 16, seed=6)
    kv = _leaf(2, 23, 2, 2, 16, seed=7)
    fa.flash_attn_kvpacked_func(q, kv).sum().backward()
    assert kv.grad.shape == kv.shape and q.grad.shape == q.shape and kv.grad.abs().sum() > 0


def test_varlen_packed_grads():
    cu_q = torch.tensor([0, 5, 12], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 16], dtype=torch.int32)
    qkv = _leaf(12, 3, 2, 8, seed=8)
    out = fa.flash_attn_varlen_qkvpacked_func(qkv, cu_q, 7, causal=True)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape
    q, kv = _leaf(12, 2, 8, seed=9), _leaf(16, 2, 1, 8, seed=10)
    fa.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, 7, 9).sum().backward()
    assert kv.grad.shape == kv.shape and torch.isfinite(kv.grad).all()


GRADCHECK_CASES = {
    "causal": dict(causal=True),
    "window": dict(window_size=(2, 1)),
    "alibi": dict(alibi_slopes=torch.tensor([0.3, 0.9])),
    "softcap": dict(softcap=1.5),
    "dropout": dict(dropout_p=0.3, seed=1234),
    "everything": dict(causal=True, softcap=2.0, alibi_slopes=torch.tensor([0.5, 0.25]), dropout_p=0.2, seed=99),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_float64(case):
    # GQA in every case: 2 query heads on 1 kv head; seqlen_q != seqlen_k
    kw = GRADCHECK_CASES[case]
    q, k, v = _leaf(1, 4, 2, 3, dtype=torch.float64, seed=11), _leaf(1, 5, 1, 3, dtype=torch.float64, seed=12), \
        _leaf(1, 5, 1, 3, dtype=torch.float64, seed=13)
    assert torch.autograd.gradcheck(lambda q, k, v: fa.flash_attn_func(q, k, v, backend="cpu", **kw), (q, k, v))


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_gradcheck_varlen_float64(dropout_p):
    cu_q = torch.tensor([0, 3, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 6], dtype=torch.int32)
    q, k, v = _leaf(7, 2, 3, dtype=torch.float64, seed=14), _leaf(6, 1, 3, dtype=torch.float64, seed=15), \
        _leaf(6, 1, 3, dtype=torch.float64, seed=16)

    def f(q, k, v):
        return fa.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 4, dropout_p=dropout_p, causal=True, seed=5,
                                         backend="cpu")

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_only_linear_memory_is_saved():
    # saved for backward: q, k, v, out, lse, rng state (and small metadata) - nothing of size seqlen_q x seqlen_k
    sq = sk = 96
    q, k, v = _leaf(1, sq, 2, 4, seed=17), _leaf(1, sk, 2, 4, seed=18), _leaf(1, sk, 2, 4, seed=19)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = fa.flash_attn_func(q, k, v, dropout_p=0.1, seed=1)
    assert saved and max(saved) < sq * sk
    out.sum().backward()


def test_no_graph_without_grad():
    q = _leaf(1, 8, 2, 8, seed=20)
    with torch.no_grad():
        out = fa.flash_attn_func(q, q, q)
    assert out.grad_fn is None and not out.requires_grad


def _compile_matches_eager(step):
    # aot_eager: dynamo tracing (fullgraph: no graph break allowed) + AOT autograd through the fake kernels, without
    # the cost of inductor code generation
    import torch._dynamo

    torch._dynamo.reset()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    q, k, v = _leaf(1, 17, 2, 8, seed=21), _leaf(1, 19, 1, 8, seed=22), _leaf(1, 19, 1, 8, seed=23)
    compiled(q, k, v).backward()
    got = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    step(q, k, v).backward()
    for a, x in zip(got, (q, k, v)):
        torch.testing.assert_close(a, x.grad, rtol=0, atol=0)


def test_torch_compile_fullgraph_custom_ops():
    from flash_attn_cy.autograd import attention_with_grad

    def step(q, k, v):
        out, _, _ = attention_with_grad(q, k, v, causal=True, softcap=3.0, backend="cpu")
        return out.square().sum()

    _compile_matches_eager(step)


def test_torch_compile_fullgraph_public_api():
    _compile_matches_eager(lambda q, k, v: fa.flash_attn_func(q, k, v, causal=True, backend="cpu").square().sum())


def test_torch_compile_fullgraph_default_backend():
    _compile_matches_eager(lambda q, k, v: fa.flash_attn_func(q, k, v, causal=True).square().sum())


def test_custom_ops_registered_with_fakes():
    from flash_attn_cy import autograd  # noqa: F401  (registers the ops)

    q = torch.empty(2, 5, 4, 8, device="meta")
    k = torch.empty(2, 7, 2, 8, device="meta")
    out, lse, probs = torch.ops.flash_attn_cy.fwd(q, k, k, None, None, None, torch.zeros(2, dtype=torch.int64,
                                                  device="meta"), 5, 7, 0.0, 0.3, -1, -1, 0.0, False, False, "cpu")
    assert out.shape == q.shape and lse.shape == (2, 4, 5) and lse.dtype == torch.float32
    torch.library.opcheck(torch.ops.flash_attn_cy.bwd.default,
                          (torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4), torch.randn(1, 5, 1, 4),
                           torch.randn(1, 5, 1, 4), torch.randn(1, 3, 2, 4), torch.randn(1, 2, 3),
                           None, None, None, torch.zeros(2, dtype=torch.int64), 3, 5, 0.0, 0.5, -1, -1, 0.0,
                           False, "cpu"),
                          test_utils=("test_schema", "test_faketensor"))
