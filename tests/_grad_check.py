"""The gradient check shared by the backward tests (tests/backward/) and the tests of other features that also check
gradients (tests/core/test_mask_band.py): flash_attn_cy's forward + backward through the public API against torch
autograd of the float64 reference, under the project's tolerance rule (the low-precision budget from the same
reference computed in the input dtype)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from _tolerance import assert_close_to_ref  # noqa: E402
from conftest import randn, to_torch  # noqa: E402

import flash_attn_cy.interface as fa  # noqa: E402
from flash_attn_cy import backward  # noqa: E402
from flash_attn_cy.reference import attention_ref_torch  # noqa: E402

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def ref_grads(q, k, v, dout, compute_dtype=None, **kw):
    """(dq, dk, dv) of the torch reference by autograd; compute_dtype None = float64, else the low-precision twin."""
    tq, tk, tv = (to_torch(x).requires_grad_() for x in (q, k, v))
    out = attention_ref_torch(tq, tk, tv, compute_dtype=compute_dtype, **kw)
    out.backward(to_torch(dout[:out.shape[0]]).to(out.dtype))  # varlen: the reference drops rows past the last seq
    return [t.grad.detach().to(torch.float64).numpy() for t in (tq, tk, tv)]


def forward_with_lse(q, k, v, backend="cpu", **kw):
    """Our forward (out, softmax_lse) through the public API."""
    if "cu_seqlens_q" in kw:
        out, lse, _ = fa.flash_attn_varlen_func(q, k, v, return_attn_probs=True, backend=backend, **kw)
    else:
        out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend=backend, **kw)
    return out, lse


def check_grads(rng, dtype, q_shape, k_shape, backend="cpu", ref_kw=None, **kw):
    """Random q/k/v/dout, our forward + backward, compared with the reference gradients under the tolerance rule."""
    q, k, v = randn(rng, q_shape, dtype), randn(rng, k_shape, dtype), randn(rng, k_shape, dtype)
    dout = randn(rng, q_shape, dtype)
    out, lse = forward_with_lse(q, k, v, backend=backend, **kw)
    grads = backward(dout, q, k, v, out, lse, backend=backend, **kw)
    rkw = dict(kw)
    for name in ("max_seqlen_q", "max_seqlen_k", "deterministic"):
        rkw.pop(name, None)
    rkw.update(ref_kw or {})
    g64 = ref_grads(q, k, v, dout, **rkw)
    glow = ref_grads(q, k, v, dout, compute_dtype=TORCH_DTYPES[dtype], **rkw)
    for name, ours, r64, rlow, like in zip(("dq", "dk", "dv"), grads, g64, glow, (q, k, v)):
        assert ours.shape == like.shape and ours.dtype == like.dtype, name
        assert_close_to_ref(ours, r64, rlow, dtype=like.dtype, what=name)
    return grads
