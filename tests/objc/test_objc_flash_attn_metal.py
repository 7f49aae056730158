"""flash_attn_cy._flash_attn_metal: the seed project's surface (initialize, compile_shaders, forward)."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy
from flash_attn_cy import _core, _flash_attn_metal as fam
from flash_attn_cy.reference import attention_ref

from _tolerance import assert_close_to_ref

METAL = _core.backend_available("metal")[0]


def test_initialize_picks_a_usable_backend_once() -> None:
    name = fam.initialize()
    assert name == ("metal" if METAL else "cpu")
    assert fam.initialize() == name and fam.backend() == name


def test_compile_shaders_type_errors() -> None:
    with pytest.raises(TypeError, match="source must be a str"):
        fam.compile_shaders(b"kernel void k() {}")
    with pytest.raises(ValueError, match="NUL"):
        fam.compile_shaders("kernel void k() {}\x00")


@pytest.mark.skipif(METAL, reason="checks the error without Metal")
def test_compile_shaders_without_metal_says_why() -> None:
    with pytest.raises(RuntimeError) as info:
        fam.compile_shaders("kernel void k(device float *x [[buffer(0)]]) { x[0] = 1; }")
    msg = str(info.value)
    assert "compile_shaders needs Metal" in msg and "simulator" in msg
    assert _core.backend_available("metal")[1] in msg  # the shim's own reason is passed through


@pytest.mark.metal
@pytest.mark.skipif(not METAL, reason="needs an Apple GPU with the Metal backend")
def test_compile_shaders_on_a_mac() -> None:  # pragma: no cover - Mac only
    names = fam.compile_shaders("#include <metal_stdlib>\nusing namespace metal;\n"
                                "kernel void b_k(device float *x [[buffer(0)]]) { x[0] = 1; }\n"
                                "kernel void a_k(device float *x [[buffer(0)]]) { x[0] = 2; }\n")
    assert names == ["a_k", "b_k"]
    with pytest.raises(ValueError, match="error"):
        fam.compile_shaders("kernel void broken( {")


def _need_interface():
    if not hasattr(flash_attn_cy, "flash_attn_func"):
        pytest.skip("flash_attn_cy.flash_attn_func is not in this build yet")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_reference(dtype: str, causal: bool) -> None:
    _need_interface()
    rng = np.random.default_rng(7 + causal)
    q = rng.standard_normal((2, 13, 3, 24)).astype(dtype)
    k = rng.standard_normal((2, 17, 3, 24)).astype(dtype)
    v = rng.standard_normal((2, 17, 3, 24)).astype(dtype)
    out = fam.forward(q, k, v, None, causal)
    assert out.shape == q.shape and out.dtype == q.dtype and isinstance(out, np.ndarray)
    ref64 = attention_ref(q, k, v, causal=causal)
    ref_lowp = attention_ref(q, k, v, causal=causal, compute_dtype=q.dtype)
    assert_close_to_ref(out, ref64, ref_lowp)


def test_forward_scale_and_torch() -> None:
    _need_interface()
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 9, 2, 16)).astype(np.float32) for _ in range(3))
    out = fam.forward(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), softmax_scale=0.3)
    assert isinstance(out, torch.Tensor)
    ref64 = attention_ref(q, k, v, softmax_scale=0.3)
    assert_close_to_ref(out.numpy(), ref64, attention_ref(q, k, v, softmax_scale=0.3, compute_dtype=np.float32))


def test_forward_rejects_bad_input() -> None:
    x = np.zeros((2, 4, 2, 8), np.float32)
    with pytest.raises(ValueError, match=r"q must be a 4-d array \[batch, seqlen, heads, headdim\]"):
        fam.forward(x[0], x, x)
    with pytest.raises(ValueError, match="v must be a 4-d"):
        fam.forward(x, x, [1, 2])
    with pytest.raises(TypeError, match="is_causal"):
        fam.forward(x, x, x, None, "yes")
