"""The in-place KV-cache append and PyTorch's autograd: the caches are written through their memory, so the call
bumps their version counters as an in-place op would (autograd then notices a saved cache that changed instead of
computing wrong gradients), and refuses with PyTorch's RuntimeError what PyTorch refuses to modify in place:
inference tensors outside inference mode, and tensors that require grad while grad mode is on."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa

torch = pytest.importorskip("torch")

B, S, H, D = 2, 32, 2, 16


def _step(kc, vc, **kw):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, 1, H, D, generator=g) for _ in range(3))
    return fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=torch.tensor([3, 7], dtype=torch.int32),
                                      backend="cpu", **kw)


def test_append_bumps_version_counters():
    kc, vc = torch.zeros(B, S, H, D), torch.zeros(B, S, H, D)
    k0, v0 = kc._version, vc._version
    _step(kc, vc)
    assert kc._version > k0 and vc._version > v0
    # views share their base's counter: a cache given as a slice of a bigger buffer bumps the buffer
    buf = torch.zeros(B + 1, S, H, D)
    b0 = buf._version
    _step(buf[1:], torch.zeros(B, S, H, D))
    assert buf._version > b0


def test_autograd_sees_a_saved_cache_that_was_appended_to():
    kc, vc = torch.zeros(B, S, H, D), torch.zeros(B, S, H, D)
    w = torch.randn(B, S, H, D, requires_grad=True)
    loss = (w * kc).sum()  # mul saves kc for w's gradient
    _step(kc, vc)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inference_tensors_only_inside_inference_mode():
    with torch.inference_mode():
        kc, vc = torch.zeros(B, S, H, D), torch.zeros(B, S, H, D)
    with pytest.raises(RuntimeError, match="k_cache: Inplace update to inference tensor outside InferenceMode"):
        _step(kc, vc)
    assert not kc.any() and not vc.any()  # refused before writing
    with torch.inference_mode():
        _step(kc, vc)
    assert kc[0, 3].any() and vc[1, 7].any()


@pytest.mark.parametrize("make,match", [
    (lambda: torch.zeros(B, S, H, D, requires_grad=True), "k_cache: a leaf Variable that requires grad"),
    (lambda: torch.zeros(B + 1, S, H, D, requires_grad=True)[1:], "k_cache: a view of a leaf Variable"),
    (lambda: torch.zeros(B, S, H, D, requires_grad=True) * 1.0, "k_cache: a tensor that requires grad"),
])
def test_tensors_requiring_grad_are_refused_under_grad_mode(make, match):
    kc, vc = make(), torch.zeros(B, S, H, D)
    with pytest.raises(RuntimeError, match=match):
        _step(kc, vc)
    assert not kc.detach().any() and not vc.any()
    with torch.no_grad():  # as torch allows in-place writes to such tensors under no_grad
        before = kc._version
        _step(kc, vc)
        assert kc._version > before and kc.detach()[0, 3].any()


def test_numpy_and_reading_without_append_are_unaffected():
    kc = np.zeros((B, S, H, D), np.float32)
    _step(torch.from_numpy(kc), torch.zeros(B, S, H, D))
    assert kc[0, 3].any()
    leaf = torch.zeros(B, S, H, D, requires_grad=True)  # only read: nothing is written, nothing refused
    q = torch.randn(B, 1, H, D)
    fa.flash_attn_with_kvcache(q, leaf, leaf.detach().clone(), cache_seqlens=4, backend="cpu")
