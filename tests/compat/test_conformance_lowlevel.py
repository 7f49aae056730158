"""The semi-private functions of flash_attn.flash_attn_interface (issue 16, item 6), as flash_attn 2.8.3 has them:
``_flash_attn_forward``, ``_flash_attn_backward``, ``_flash_attn_varlen_forward``, ``_flash_attn_varlen_backward`` and
the ``_wrapped_*`` torch.ops handles (what ring-flash-attn and diffusers' attention dispatcher import).

Names, argument names and order, defaults and return tuples are checked against the 2.8.3 source as written down
here; the numbers against flash_attn_cy's public (differentiable) functions, which the rest of the suite checks
against the float64 reference.
"""
from __future__ import annotations

import inspect

import pytest

torch = pytest.importorskip("torch")

import flash_attn_cy as fa  # noqa: E402
from flash_attn_cy.flash_attn_compat import flash_attn_interface as fai  # noqa: E402

G = torch.Generator().manual_seed(6)

# flash_attn 2.8.3, flash_attn/flash_attn_interface.py: (name, default) in order; None = no default
SIGNATURES = {
    "_flash_attn_forward": [
        ("q", None), ("k", None), ("v", None), ("dropout_p", None), ("softmax_scale", None), ("causal", None),
        ("window_size_left", None), ("window_size_right", None), ("softcap", None), ("alibi_slopes", None),
        ("return_softmax", None)],
    "_flash_attn_varlen_forward": [
        ("q", None), ("k", None), ("v", None), ("cu_seqlens_q", None), ("cu_seqlens_k", None),
        ("max_seqlen_q", None), ("max_seqlen_k", None), ("dropout_p", None), ("softmax_scale", None),
        ("causal", None), ("window_size_left", -1), ("window_size_right", -1), ("softcap", 0.0),
        ("alibi_slopes", "None"), ("return_softmax", False), ("block_table", "None"), ("leftpad_k", "None"),
        ("seqused_k", "None"), ("zero_tensors", False)],
    "_flash_attn_backward": [
        ("dout", None), ("q", None), ("k", None), ("v", None), ("out", None), ("softmax_lse", None), ("dq", None),
        ("dk", None), ("dv", None), ("dropout_p", None), ("softmax_scale", None), ("causal", None),
        ("window_size_left", None), ("window_size_right", None), ("softcap", None), ("alibi_slopes", None),
        ("deterministic", None), ("rng_state", "None")],
    "_flash_attn_varlen_backward": [
        ("dout", None), ("q", None), ("k", None), ("v", None), ("out", None), ("softmax_lse", None), ("dq", None),
        ("dk", None), ("dv", None), ("cu_seqlens_q", None), ("cu_seqlens_k", None), ("max_seqlen_q", None),
        ("max_seqlen_k", None), ("dropout_p", None), ("softmax_scale", None), ("causal", None),
        ("window_size_left", None), ("window_size_right", None), ("softcap", None), ("alibi_slopes", None),
        ("deterministic", None), ("rng_state", "None"), ("zero_tensors", False)],
}


def _t(*shape, dtype=torch.float16):
    return torch.randn(*shape, generator=G).to(dtype)


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_names_arguments_and_defaults_of_2_8_3(name):
    schema = getattr(fai, "_wrapped" + name)._schemas[""]
    got = [(a.name, None if a.default_value is None and not a.has_default_value() else
            ("None" if a.default_value is None else a.default_value)) for a in schema.arguments]
    assert got == SIGNATURES[name]
    # the plain name is the op itself, called like a function (as flash_attn's custom_op-decorated one)
    assert list(inspect.signature(getattr(fai, name)._init_fn).parameters) == [n for n, _ in SIGNATURES[name]]
    if "backward" in name:
        assert [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write] == \
            ["dq", "dk", "dv"]


def test_importable_through_the_alias():
    import importlib
    import sys

    assert fa.install_as_flash_attn()
    try:
        m = importlib.import_module("flash_attn.flash_attn_interface")
        for name in ("_flash_attn_forward", "_flash_attn_backward", "_flash_attn_varlen_forward",
                     "_flash_attn_varlen_backward", "_wrapped_flash_attn_forward", "_wrapped_flash_attn_backward",
                     "_get_block_size_n"):
            assert getattr(m, name) is getattr(fai, name), name
        assert m.round_multiple(130, 128) == 256 and m.round_multiple(128, 128) == 128
        x = torch.zeros(3, 4)
        assert m.maybe_contiguous(x) is x and m.maybe_contiguous(x.t()).stride(-1) == 1
        assert m.maybe_contiguous(None) is None
    finally:
        from flash_attn_cy.flash_attn_compat._alias import uninstall_flash_attn_alias
        uninstall_flash_attn_alias()
        assert "flash_attn" not in sys.modules


def _public_grads(q, k, v, dout, **kw):
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out = fa.flash_attn_func(qg, kg, vg, **kw)
    out.backward(dout)
    return out.detach(), qg.grad, kg.grad, vg.grad


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_dense_forward_and_in_place_backward_match_the_public_path(dropout_p):
    b, sq, sk, h, hk, d = 2, 37, 45, 4, 2, 32
    q, k, v, dout = _t(b, sq, h, d), _t(b, sk, hk, d), _t(b, sk, hk, d), _t(b, sq, h, d)
    alibi = torch.rand(h, generator=G) * 0.3
    args = (dropout_p, 0.2, True, 7, 0, 0.0, alibi)
    out, lse, s_dmask, rng_state = fai._wrapped_flash_attn_forward(q, k, v, *args, False)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (b, h, sq) and lse.dtype == torch.float32
    assert s_dmask.shape == (0,)  # return_softmax=False: flash_attn's empty tensor
    assert rng_state.shape == (2,) and rng_state.dtype == torch.int64
    seed = tuple(int(x) for x in rng_state) if dropout_p else None
    kw = dict(dropout_p=dropout_p, softmax_scale=0.2, causal=True, window_size=(7, 0), alibi_slopes=alibi,
              seed=seed)
    out_ref, dq_ref, dk_ref, dv_ref = _public_grads(q, k, v, dout, **kw)
    assert torch.equal(out, out_ref)
    # gradients land IN the given tensors, here strided views of one packed buffer as flash_attn's qkvpacked does
    dkv = torch.full((b, sk, 2, hk, d), float("nan"), dtype=q.dtype)
    dq = torch.full_like(q, float("nan"))
    softmax_d = fai._wrapped_flash_attn_backward(dout, q, k, v, out, lse, dq, dkv[:, :, 0], dkv[:, :, 1], *args,
                                                 False, rng_state)
    assert torch.equal(dq, dq_ref) and torch.equal(dkv[:, :, 0], dk_ref) and torch.equal(dkv[:, :, 1], dv_ref)
    assert softmax_d.shape == (b, h, 128) and softmax_d.dtype == torch.float32
    want_d = (dout.float() * out.float()).sum(-1).transpose(1, 2)
    torch.testing.assert_close(softmax_d[..., :sq], want_d)
    assert torch.all(softmax_d[..., sq:] == 0)


def test_return_softmax_needs_dropout_and_gives_flash_scaled_s_dmask():
    q, k, v = _t(1, 9, 2, 16), _t(1, 11, 2, 16), _t(1, 11, 2, 16)
    with pytest.raises(RuntimeError, match="return_softmax"):
        fai._flash_attn_forward(q, k, v, 0.0, 0.25, False, -1, -1, 0.0, None, True)
    out, lse, s_dmask, rng_state = fai._flash_attn_forward(q, k, v, 0.3, 0.25, False, -1, -1, 0.0, None, True)
    assert s_dmask.shape == (1, 2, 9, 11)
    assert torch.allclose(s_dmask.abs().amax(-1), torch.ones(1, 2, 9))  # exp(score - row max): row max is 1


@pytest.mark.parametrize("dropout_p", [0.0, 0.15])
def test_varlen_forward_and_backward_match_the_public_path(dropout_p):
    h, hk, d = 4, 1, 32
    cu_q = torch.tensor([0, 5, 5, 21], dtype=torch.int32)
    cu_k = torch.tensor([0, 9, 12, 40], dtype=torch.int32)
    q, k, v, dout = _t(23, h, d), _t(40, hk, d), _t(40, hk, d), _t(23, h, d)  # 2 packed rows after the last seq
    out, lse, s_dmask, rng_state = fai._wrapped_flash_attn_varlen_forward(q, k, v, cu_q, cu_k, 16, 28, dropout_p,
                                                                          0.3, True)
    assert lse.shape == (h, 23) and s_dmask.shape == (0,)
    seed = tuple(int(x) for x in rng_state) if dropout_p else None
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out_ref = fa.flash_attn_varlen_func(qg, kg, vg, cu_q, cu_k, 16, 28, dropout_p=dropout_p, softmax_scale=0.3,
                                        causal=True, seed=seed)
    out_ref.backward(dout)
    assert torch.equal(out, out_ref.detach())
    dq, dk, dv = (torch.full_like(x, float("nan")) for x in (q, k, v))
    softmax_d = fai._wrapped_flash_attn_varlen_backward(dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, 16, 28,
                                                        dropout_p, 0.3, True, -1, -1, 0.0, None, False, rng_state)
    assert torch.equal(dq, qg.grad) and torch.equal(dk, kg.grad) and torch.equal(dv, vg.grad)
    assert softmax_d.shape == (h, 23 + 128 * 3)


def test_varlen_forward_leftpad_and_seqused_say_not_supported():
    q = _t(4, 2, 16)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="seqused_k"):
        fai._flash_attn_varlen_forward(q, q, q, cu, cu, 4, 4, 0.0, 0.25, False, seqused_k=torch.tensor([4]))


def test_ring_attention_composes_chunks_through_softmax_lse():
    """What ring-flash-attn does: attend to KV chunks one at a time and merge by the returned log-sum-exp."""
    b, s, h, d = 1, 24, 2, 32
    q, k, v = _t(b, s, h, d, dtype=torch.float32), _t(b, 2 * s, h, d, dtype=torch.float32), \
        _t(b, 2 * s, h, d, dtype=torch.float32)
    parts = [fai._flash_attn_forward(q, k[:, i * s:(i + 1) * s], v[:, i * s:(i + 1) * s], 0.0, d ** -0.5, False,
                                     -1, -1, 0.0, None, False)[:2] for i in range(2)]
    lse = torch.logaddexp(parts[0][1], parts[1][1])  # (b, h, s)
    merged = sum(o * torch.exp(l_ - lse).transpose(1, 2).unsqueeze(-1) for o, l_ in parts)
    torch.testing.assert_close(merged, fa.flash_attn_func(q, k, v), rtol=2e-5, atol=2e-6)
