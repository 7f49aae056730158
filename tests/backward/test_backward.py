"""Backward pass (flash_attn_cy.backward) against float64 torch autograd of the plain reference.

Tolerance: the project's rule (tests/_tolerance.py): error <= 2 x the error of the same reference computed in the
input dtype + a small floor. Sizes are small but odd (tile boundaries at 64 are crossed, seqlen_q != seqlen_k).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# the gradient check lives in tests/_grad_check.py (tests of other features use it too); re-exported for the tests
# beside this file that import it from here
from _grad_check import TORCH_DTYPES, check_grads, forward_with_lse, ref_grads  # noqa: E402,F401
from conftest import randn, to_torch  # noqa: E402

from flash_attn_cy import backward  # noqa: E402

DENSE_CASES = {
    "plain_gqa": dict(shapes=((2, 37, 4, 40), (2, 53, 2, 40)), kw={}),
    "causal_sq_gt_sk": dict(shapes=((1, 70, 2, 64), (1, 20, 1, 64)), kw=dict(causal=True)),
    "window": dict(shapes=((1, 45, 2, 32), (1, 50, 2, 32)), kw=dict(window_size=(5, 3))),
    "window_left_only": dict(shapes=((1, 33, 1, 16), (1, 29, 1, 16)), kw=dict(window_size=(4, -1))),
    "softcap": dict(shapes=((1, 29, 2, 96), (1, 31, 2, 96)), kw=dict(softcap=3.0)),
    "alibi_per_batch": dict(shapes=((2, 21, 3, 128), (2, 26, 3, 128)),
                            kw=dict(alibi_slopes=np.array([[0.1, 0.5, 1.0], [0.2, 0.3, 0.05]], np.float32))),
    "headdim_1_mqa": dict(shapes=((1, 9, 3, 1), (1, 11, 1, 1)), kw={}),
    "headdim_256": dict(shapes=((1, 13, 2, 256), (1, 17, 2, 256)), kw=dict(causal=True)),
    "all_features_tiles": dict(shapes=((1, 130, 4, 24), (1, 150, 2, 24)),
                               kw=dict(causal=True, softcap=2.0, window_size=(70, -1),
                                       alibi_slopes=np.array([0.05, 0.1, 0.2, 0.4], np.float32),
                                       softmax_scale=0.3)),
    "all_features_deterministic": dict(shapes=((1, 130, 4, 24), (1, 150, 2, 24)),
                                       kw=dict(causal=True, softcap=2.0, window_size=(70, -1), deterministic=True,
                                               alibi_slopes=np.array([0.05, 0.1, 0.2, 0.4], np.float32))),
}


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_dense_grads(rng, dtype, case):
    c = DENSE_CASES[case]
    check_grads(rng, dtype, *c["shapes"], **c["kw"])


# Longer sequences: several groups of key blocks per work item (pass 1 pairs key blocks of 64), full interior tiles
# (the fused softmax-gradient kernel), and head dims that are not a multiple of the 16-lane vectors or span several
# 64-column chunks of the product kernels. Each runs on the selected kernels and on the portable ones
# (FLASH_ATTN_CY_CPU_ISA is read on every call).
LONG_CASES = {
    "full_tiles_d64": dict(shapes=((2, 257, 2, 64), (2, 320, 2, 64)), kw={}),
    "window_spans_key_groups_d72": dict(shapes=((1, 300, 2, 72), (1, 333, 1, 72)), kw=dict(window_size=(40, 20))),
    "causal_d160": dict(shapes=((1, 200, 2, 160), (1, 260, 2, 160)), kw=dict(causal=True)),
    "causal_deterministic_d128": dict(shapes=((1, 190, 2, 128), (1, 300, 2, 128)),
                                      kw=dict(causal=True, deterministic=True)),
}


def _force_cpu_isa(monkeypatch, isa):
    """Run on FLASH_ATTN_CY_CPU_ISA=isa ("selected": the CPU's best set); skip where this CPU cannot run it."""
    if isa == "selected":
        return
    from _cpu_isa import cpu_isa_in_use

    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", isa)
    if cpu_isa_in_use() != isa:
        pytest.skip(f"this CPU cannot run the {isa} kernels")


# amx-emulated: the AMX tile products (bf16) on the tiles' scalar model, on any CPU with AVX512-BF16.
@pytest.mark.parametrize("isa", ["selected", "portable", "amx-emulated"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("case", list(LONG_CASES))
def test_long_grads(rng, monkeypatch, isa, dtype, case):
    if isa == "amx-emulated" and dtype != "bf16":
        pytest.skip("the AMX products serve bf16 only: fp32 runs the AVX-512 kernels under amx")
    _force_cpu_isa(monkeypatch, isa)
    c = LONG_CASES[case]
    check_grads(rng, dtype, *c["shapes"], **c["kw"])


# bf16 on AVX512-BF16 (and on AMX tiles: "amx-emulated", the same products on the tiles' scalar model, whose
# operands are staged into whole 16 x 16 tiles for the same odd counts): dV, dK and dQ multiply bf16 pairs
# (csrc/cpu/backward accumulate_bf16). Its register tiles depend on the
# head dim (1-4 vectors of 16 columns per 64-column chunk, a masked tail, several chunks) and cover the rows of a
# product in tiles of R rows plus 8/4/2/1-row remainders: key counts and query counts below give every remainder,
# odd counts (a pair completed with zero) and tiles that start at odd query rows (windows).
BF16_TILE_CASES = [
    (8, 3, 1, {}), (16, 33, 29, dict(window_size=(4, -1))), (24, 66, 63, dict(causal=True)), (40, 1, 65, {}),
    (56, 70, 100, dict(window_size=(9, 2))), (72, 17, 7, {}), (100, 64, 64, {}), (136, 95, 77, dict(causal=True)),
    (200, 41, 130, {}), (256, 6, 23, dict(window_size=(3, 3))),
]


@pytest.mark.parametrize("isa", ["selected", "amx-emulated"])
@pytest.mark.parametrize("d,sq,sk,kw", BF16_TILE_CASES, ids=[f"d{c[0]}_sq{c[1]}_sk{c[2]}" for c in BF16_TILE_CASES])
def test_bf16_products_every_register_tile(rng, monkeypatch, isa, d, sq, sk, kw):
    _force_cpu_isa(monkeypatch, isa)
    check_grads(rng, "bf16", (1, sq, 2, d), (1, sk, 1, d), **kw)
    check_grads(rng, "bf16", (1, sq, 2, d), (1, sk, 1, d), deterministic=True, **kw)


def test_long_varlen_grads(rng):
    # sequences longer than a key-block pair, one without keys, causal; packed rows past the last sequence stay zero
    kw = dict(cu_seqlens_q=np.array([0, 150, 150, 170, 400], np.int32),
              cu_seqlens_k=np.array([0, 200, 330, 330, 530], np.int32), max_seqlen_q=230, max_seqlen_k=200)
    dq, dk, dv = check_grads(rng, "fp32", (405, 2, 32), (540, 1, 32), causal=True, **kw)
    assert not dq[400:].any() and not dk[530:].any() and not dv[530:].any()


def test_fp64_exact(rng):
    # fp64 gradients are accurate to float64 rounding (the backward refines the fp32 LSE); softmax_scale and softcap
    # travel as fp32 through the C ABI, so pick values exact in fp32.
    check_grads(rng, "fp64", (2, 19, 2, 8), (2, 23, 1, 8), causal=True, softcap=4.0, softmax_scale=0.25,
                alibi_slopes=np.array([0.25, 0.5], np.float32))


VARLEN = dict(cu_seqlens_q=np.array([0, 5, 17, 17, 40], np.int32), cu_seqlens_k=np.array([0, 9, 9, 30, 61], np.int32),
              max_seqlen_q=23, max_seqlen_k=31)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_grads(rng, dtype, causal):
    # sequence 1 has no keys (its rows are fully masked), sequence 2 no queries; 3 spare rows after the last sequence
    # (the deterministic two-pass schedule for one of the variants)
    dq, dk, dv = check_grads(rng, dtype, (43, 4, 24), (64, 2, 24), causal=causal, deterministic=causal, **VARLEN)
    assert not dq[40:].any() and not dk[61:].any() and not dv[61:].any()


def test_fully_masked_rows_zero_grads(rng):
    # causal with seqlen_q > seqlen_k: the first seqlen_q - seqlen_k rows see no key (lse = +inf)
    q, k, v = randn(rng, (1, 12, 2, 16)), randn(rng, (1, 5, 2, 16)), randn(rng, (1, 5, 2, 16))
    out, lse = forward_with_lse(q, k, v, causal=True)
    assert np.isinf(lse[:, :, :7]).all()
    dq, dk, dv = backward(randn(rng, q.shape), q, k, v, out, lse, causal=True)
    assert not dq[:, :7].any() and np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()


def test_strided_inputs_and_outputs(rng):
    # q/k/v as views of a packed qkv (non-contiguous), gradients written into strided views of a packed dqkv
    qkv = randn(rng, (2, 27, 3, 3, 16))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    dout = randn(rng, q.shape)
    out, lse = forward_with_lse(q, k, v, causal=True)
    dqkv = np.zeros_like(qkv)
    backward(dout, q, k, v, out, lse, causal=True, dq=dqkv[:, :, 0], dk=dqkv[:, :, 1], dv=dqkv[:, :, 2])
    ref = backward(dout, *(np.ascontiguousarray(x) for x in (q, k, v)), out, lse, causal=True)
    for i in range(3):
        np.testing.assert_array_equal(dqkv[:, :, i], ref[i])


def test_torch_tensors_in_and_out(rng):
    q, k, v = (to_torch(randn(rng, (1, 10, 2, 8))) for _ in range(3))
    out, lse = forward_with_lse(q, k, v)
    grads = backward(torch.ones_like(out), q, k, v, out, lse)
    assert all(isinstance(g, torch.Tensor) and g.shape == x.shape for g, x in zip(grads, (q, k, v)))


def test_deterministic_bits_do_not_depend_on_threads(rng):
    # deterministic=True: every work item owns its output rows, the result is the same bits whatever the thread count
    import flash_attn_cy

    q, k, v = randn(rng, (1, 150, 4, 32)), randn(rng, (1, 140, 2, 32)), randn(rng, (1, 140, 2, 32))
    dout = randn(rng, q.shape)
    out, lse = forward_with_lse(q, k, v, causal=True)
    before = flash_attn_cy._core.get_num_threads()
    try:
        flash_attn_cy._core.set_num_threads(1)
        one = backward(dout, q, k, v, out, lse, causal=True, deterministic=True)
        flash_attn_cy._core.set_num_threads(3)
        three = backward(dout, q, k, v, out, lse, causal=True, deterministic=True)
    finally:
        flash_attn_cy._core.set_num_threads(before)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments(rng):
    q = randn(rng, (1, 6, 2, 8))
    out, lse = forward_with_lse(q, q, q)
    with pytest.raises(ValueError, match="dout"):
        backward(q[:, :5], q, q, q, out, lse)
    with pytest.raises(ValueError, match="softmax_lse"):
        backward(q, q, q, q, out, lse[:, :1])
    with pytest.raises(TypeError, match="seed"):
        backward(q, q, q, q, out, lse, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        backward(q, q, q, q, out, lse, dropout_p=1.0, seed=1)
    with pytest.raises(TypeError, match="dtype"):
        backward(q.astype(np.float64), q, q, q, out, lse)
    with pytest.raises(ValueError, match="dq"):
        backward(q, q, q, q, out, lse, dq=np.empty((1, 6, 2, 4), np.float32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        backward(q[0], q[0], q[0], q[0], out[0], lse[0], cu_seqlens_q=np.array([0, 6], np.int32))


def test_varlen_rows_no_sequence_owns_are_zeroed_whatever_the_buffers_held(rng, backend):
    """Every backend writes every row a sequence owns (a sequence without keys and one without queries included);
    the rows after the last sequence get zeros from the Python layer, also in the caller's own dq/dk/dv."""
    if backend == "metal":
        pytest.skip("host NumPy buffers: cpu and sim")
    q, k, v = randn(rng, (43, 4, 24)), randn(rng, (64, 2, 24)), randn(rng, (64, 2, 24))
    out, lse = forward_with_lse(q, k, v, backend=backend, causal=True, **VARLEN)
    assert not out[40:].any() and np.isposinf(lse[:, 40:]).all()
    grads = [np.full_like(x, np.nan) for x in (q, k, v)]
    backward(randn(rng, out.shape), q, k, v, out, lse, causal=True, backend=backend, dq=grads[0], dk=grads[1],
             dv=grads[2], **VARLEN)
    dq, dk, dv = grads
    assert all(np.isfinite(g).all() for g in grads)
    assert not dq[40:].any() and not dk[61:].any() and not dv[61:].any()
