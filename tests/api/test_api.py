"""Public API semantics: shapes and return values of every flash_attn-style function, NumPy and PyTorch in/out,
no copies of contiguous inputs, strided inputs, packed == unpacked, varlen == per-sequence dense, dropout outputs,
backends() and the thread setting. Numerics against flash_attn_cy.reference (float64) under the tolerance rule."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core, reference as R

from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn, to_torch

torch = pytest.importorskip("torch")

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def _check(out, lse, q, k, v, dtype, **kw):
    """out/lse vs the float64 reference, tolerance from the reference computed in `dtype`.

    float64 inputs: the C ABI carries an explicit softmax_scale as float32 (the default 1/sqrt(d) is recovered
    exactly) and the LSE as float32, so the float64 reference uses the float32-rounded explicit scale and the LSE is
    held to float32's rule."""
    if dtype == "fp64" and kw.get("softmax_scale") is not None:
        kw["softmax_scale"] = float(np.float32(kw["softmax_scale"]))
    ref, ref_lse = R.attention_ref(q, k, v, return_lse=True, **kw)
    low, low_lse = R.attention_ref(q, k, v, return_lse=True, compute_dtype=DTYPES[dtype], **kw)
    assert_close_to_ref(out, ref, low)
    if lse is not None:
        if dtype == "fp64":
            _, low_lse = R.attention_ref(q, k, v, return_lse=True, compute_dtype=np.float32, **kw)
        lse_dtype = "float32" if dtype == "fp64" else DTYPES[dtype]
        assert_close_to_ref(lse, ref_lse, low_lse, dtype=lse_dtype, what="softmax_lse")


def _check_probs(probs, q, k, lse, **mask):
    """Without dropout S_dmask is the softmax: exp(scale * q.k - lse) on visible keys, 0 elsewhere."""
    q64, k64 = R.to_float64(q), R.to_float64(k)
    group = q64.shape[2] // k64.shape[2]
    s = np.einsum("bqhd,bkhd->bhqk", q64, np.repeat(k64, group, axis=2)) * q64.shape[-1] ** -0.5
    vis = R.visible_mask(q64.shape[1], k64.shape[1], **mask)
    lse64 = R.to_float64(lse)
    with np.errstate(invalid="ignore"):
        expect = np.where(vis, np.exp(s - np.where(np.isinf(lse64), 0.0, lse64)[..., None]), 0.0)
    tol = 2e-2 if R.dtype_name(q) in ("float16", "bfloat16") else 1e-5
    np.testing.assert_allclose(R.to_float64(probs), expect, rtol=tol, atol=tol)


# ---- dense forward numerics over the feature set (small odd sizes) ----------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("sq,sk", [(13, 29), (29, 13), (1, 23), (23, 1)])
def test_func_matches_reference(rng, dtype, sq, sk):
    q = randn(rng, (2, sq, 4, 40), dtype)
    k = randn(rng, (2, sk, 2, 40), dtype)
    v = randn(rng, (2, sk, 2, 40), dtype)
    out, lse, probs = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    assert out.dtype == q.dtype and out.shape == q.shape and isinstance(out, np.ndarray)
    assert lse.dtype == np.float32 and lse.shape == (2, 4, sq)
    assert probs.shape == (2, 4, sq, sk) and probs.dtype == np.float32
    _check(out, lse, q, k, v, dtype, causal=True)
    _check_probs(probs, q, k, lse, causal=True)


@pytest.mark.parametrize("opts", [
    dict(window_size=(4, 2)),
    dict(window_size=(0, 0)),
    dict(window_size=(-1, 3), causal=False),
    dict(window_size=(6, -1), causal=True),
    dict(softcap=2.5),
    dict(softmax_scale=0.37),
    dict(alibi="heads"),
    dict(alibi="batch", causal=True),
    dict(softcap=1.5, alibi="heads", window_size=(7, 1)),
])
def test_func_features(rng, opts):
    opts = dict(opts)
    q, k, v = (randn(rng, (2, 17, 6, 24)), randn(rng, (2, 31, 3, 24)), randn(rng, (2, 31, 3, 24)))
    alibi = opts.pop("alibi", None)
    if alibi == "heads":
        opts["alibi_slopes"] = rng.uniform(0.05, 0.5, 6).astype(np.float32)
    elif alibi == "batch":
        opts["alibi_slopes"] = rng.uniform(0.05, 0.5, (2, 6)).astype(np.float32)
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="cpu", **opts)
    _check(out, lse, q, k, v, "fp32", **opts)


def test_default_scale_is_original_headdim(rng):
    q, k, v = (randn(rng, (1, 5, 2, 59)) for _ in range(3))
    out = fa.flash_attn_func(q, k, v, backend="cpu")
    explicit = fa.flash_attn_func(q, k, v, softmax_scale=59 ** -0.5, backend="cpu")
    np.testing.assert_array_equal(out, explicit)


def test_window_size_accepts_integer_scalars_of_numpy_and_torch(rng):
    # configs sometimes keep the window as a 0-d tensor or a NumPy integer
    q, k, v = (randn(rng, (1, 9, 2, 8)) for _ in range(3))
    want = fa.flash_attn_func(q, k, v, window_size=(3, 1), backend="cpu")
    for w in [(np.int64(3), np.int32(1)), (torch.tensor(3), np.array(1)), [3, torch.tensor(1, dtype=torch.int32)]]:
        np.testing.assert_array_equal(fa.flash_attn_func(q, k, v, window_size=w, backend="cpu"), want)
    for bad in [(torch.tensor(3.0), 1), (torch.tensor([3]), 1), (np.array([3]), 1)]:
        with pytest.raises(TypeError, match="window_size"):
            fa.flash_attn_func(q, k, v, window_size=bad, backend="cpu")


def test_rows_without_keys_give_zero_and_inf_lse(rng):
    q, k, v = randn(rng, (1, 7, 2, 16)), randn(rng, (1, 3, 2, 16)), randn(rng, (1, 3, 2, 16))
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    # bottom-right causal with sq=7 > sk=3: query rows 0..3 see nothing
    assert np.all(out[:, :4] == 0)
    assert np.all(np.isposinf(lse[:, :, :4]))
    _check(out, lse, q, k, v, "fp32", causal=True)


def test_empty_inputs(rng):
    q = randn(rng, (2, 0, 3, 8))
    k = randn(rng, (2, 5, 3, 8))
    out, lse, _ = fa.flash_attn_func(q, k, k, return_attn_probs=True)
    assert out.shape == (2, 0, 3, 8) and lse.shape == (2, 3, 0)
    q = randn(rng, (2, 4, 3, 8))
    k = randn(rng, (2, 0, 3, 8))
    out, lse, _ = fa.flash_attn_func(q, k, k, return_attn_probs=True)
    assert np.all(out == 0) and np.all(np.isposinf(lse))


# ---- NumPy / torch kinds, copies, strides ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
def test_torch_in_torch_out(rng, dtype):
    qn, kn, vn = randn(rng, (2, 9, 4, 32), dtype), randn(rng, (2, 11, 4, 32), dtype), randn(rng, (2, 11, 4, 32), dtype)
    q, k, v = to_torch(qn), to_torch(kn), to_torch(vn)
    out, lse, probs = fa.flash_attn_func(q, k, v, causal=True, return_attn_probs=True, backend="cpu")
    assert isinstance(out, torch.Tensor) and out.dtype == TORCH_DTYPES[dtype] and out.device.type == "cpu"
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32 and tuple(lse.shape) == (2, 4, 9)
    assert isinstance(probs, torch.Tensor) and tuple(probs.shape) == (2, 4, 9, 11) and probs.dtype == torch.float32
    out_np = fa.flash_attn_func(qn, kn, vn, causal=True, backend="cpu")
    np.testing.assert_array_equal(R.to_float64(out), R.to_float64(out_np))


def _spy_forward(monkeypatch):
    seen = {}
    real = _core.forward

    def spy(backend, dtype, q, k, v, out, lse=None, **kw):
        seen.update(q=q, k=k, v=v, out=out)
        return real(backend, dtype, q, k, v, out, lse, **kw)

    monkeypatch.setattr(_core, "forward", spy)
    return seen


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contiguous_inputs_are_not_copied(rng, monkeypatch, kind, dtype):
    qn, kn, vn = (randn(rng, (1, 6, 2, 16), dtype) for _ in range(3))
    q, k, v = (qn, kn, vn) if kind == "numpy" else (to_torch(qn), to_torch(kn), to_torch(vn))
    seen = _spy_forward(monkeypatch)
    out = fa.flash_attn_func(q, k, v, backend="cpu")
    for name, orig in (("q", q), ("k", k), ("v", v), ("out", out)):
        base = orig if kind == "numpy" else orig.view(torch.int16 if orig.element_size() == 2 else orig.dtype).numpy()
        assert np.shares_memory(seen[name], base), f"{name} was copied"


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_strided_inputs(rng, monkeypatch, kind):
    big = randn(rng, (2, 19, 5, 3, 40))  # [b, s, h, 3, d]-ish storage; slices below are strided
    q_np = big[:, ::2, :4, 0, :]     # strided rows and heads, last axis contiguous -> passed with strides
    k_np = big[:, 1:14, 1:3, 1, :]
    v_np = np.asfortranarray(big[:, 1:14, 1:3, 2, :])  # last axis not contiguous -> copied once
    ref_in = [np.ascontiguousarray(x) for x in (q_np, k_np, v_np)]
    if kind == "torch":
        bt = torch.from_numpy(big)
        q, k = bt[:, ::2, :4, 0, :], bt[:, 1:14, 1:3, 1, :]
        v = torch.from_numpy(big[:, 1:14, 1:3, 2, :].copy()).transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        q, k, v = q_np, k_np, v_np
    seen = _spy_forward(monkeypatch)
    out = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    assert np.shares_memory(seen["q"], big) and np.shares_memory(seen["k"], big)
    _check(out, None, *ref_in, "fp32", causal=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_torch_special_tensors_read_correctly(rng, dtype):
    # the fast path of the torch -> NumPy view must not skip what some tensors need: a lazily negated view (its
    # memory holds -x), a tensor that requires grad used under no_grad, an inference-mode tensor
    qn, kn, vn = (randn(rng, (1, 7, 2, 16), dtype) for _ in range(3))
    q, k, v = to_torch(qn), to_torch(kn), to_torch(vn)
    want = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    neg_k = (-k)._neg_view()  # values equal k, storage holds -k
    assert neg_k.is_neg()
    torch.testing.assert_close(fa.flash_attn_func(q, neg_k, v, causal=True, backend="cpu"), want, rtol=0, atol=0)
    with torch.no_grad():
        got = fa.flash_attn_func(q.clone().requires_grad_(), k, v, causal=True, backend="cpu")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.inference_mode():
        qi, ki, vi = q.clone(), k.clone(), v.clone()
        torch.testing.assert_close(fa.flash_attn_func(qi, ki, vi, causal=True, backend="cpu"), want, rtol=0, atol=0)


def test_inputs_not_modified(rng):
    q, k, v = (randn(rng, (2, 7, 2, 8)) for _ in range(3))
    copies = [x.copy() for x in (q, k, v)]
    fa.flash_attn_func(q, k, v, causal=True, softcap=2.0, backend="cpu")
    for a, b in zip((q, k, v), copies):
        np.testing.assert_array_equal(a, b)


def test_read_only_inputs(rng):
    q, k, v = (randn(rng, (1, 7, 2, 8)) for _ in range(3))
    for x in (q, k, v):
        x.flags.writeable = False
    out = fa.flash_attn_func(q, k, v, backend="cpu")
    _check(out, None, q, k, v, "fp32")


# ---- packed variants ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_packed_equal_unpacked(rng, kind):
    qkv = randn(rng, (2, 11, 3, 4, 24))
    q2 = randn(rng, (2, 7, 4, 24))
    kv = randn(rng, (2, 11, 2, 2, 24))
    if kind == "torch":
        qkv, q2, kv = to_torch(qkv), to_torch(q2), to_torch(kv)
    a = fa.flash_attn_qkvpacked_func(qkv, causal=True, return_attn_probs=True, backend="cpu")
    b = fa.flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], causal=True, return_attn_probs=True,
                           backend="cpu")
    np.testing.assert_array_equal(R.to_float64(a[0]), R.to_float64(b[0]))
    np.testing.assert_array_equal(R.to_float64(a[1]), R.to_float64(b[1]))
    c = fa.flash_attn_kvpacked_func(q2, kv, window_size=(3, 2), backend="cpu")
    d = fa.flash_attn_func(q2, kv[:, :, 0], kv[:, :, 1], window_size=(3, 2), backend="cpu")
    np.testing.assert_array_equal(R.to_float64(c), R.to_float64(d))


# ---- varlen --------------------------------------------------------------------------------------------------------

def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_reference(rng, dtype, causal):
    lq, lk = [5, 0, 13, 1], [9, 4, 13, 3]  # uneven, and an empty query sequence
    q = randn(rng, (sum(lq), 4, 32), dtype)
    k = randn(rng, (sum(lk), 2, 32), dtype)
    v = randn(rng, (sum(lk), 2, 32), dtype)
    cq, ck = _cu(lq), _cu(lk)
    out, lse, probs = fa.flash_attn_varlen_func(q, k, v, cq, ck, max(lq), max(lk), causal=causal,
                                                return_attn_probs=True, backend="cpu")
    assert out.shape == q.shape and lse.shape == (4, sum(lq)) and probs.shape == (4, 4, max(lq), max(lk))
    _check(out, lse, q, k, v, dtype, causal=causal, cu_seqlens_q=cq, cu_seqlens_k=ck)


def test_varlen_sequence_without_keys(rng):
    lq, lk = [3, 4], [5, 0]
    q, k, v = randn(rng, (7, 2, 8)), randn(rng, (5, 2, 8)), randn(rng, (5, 2, 8))
    out, lse, _ = fa.flash_attn_varlen_func(q, k, v, _cu(lq), _cu(lk), 4, 5, return_attn_probs=True, backend="cpu")
    assert np.all(out[3:] == 0) and np.all(np.isposinf(lse[:, 3:]))
    _check(out[None, :3], lse[None, :, :3], q[None, :3], k[None], v[None], "fp32")


def test_varlen_equals_dense_per_sequence(rng):
    lq, lk = [6, 11, 3], [8, 11, 17]
    q, k, v = randn(rng, (sum(lq), 2, 16)), randn(rng, (sum(lk), 2, 16)), randn(rng, (sum(lk), 2, 16))
    cq, ck = _cu(lq), _cu(lk)
    slopes = rng.uniform(0.1, 0.4, (3, 2)).astype(np.float32)
    out = fa.flash_attn_varlen_func(q, k, v, cq, ck, 11, 17, causal=True, alibi_slopes=slopes, backend="cpu")
    for b in range(3):
        dense = fa.flash_attn_func(q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]], v[None, ck[b]:ck[b + 1]],
                                   causal=True, alibi_slopes=slopes[b:b + 1], backend="cpu")
        np.testing.assert_allclose(out[cq[b]:cq[b + 1]], dense[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_varlen_packed_equal_unpacked(rng, kind):
    lens = [4, 9, 1]
    cu = _cu(lens)
    qkv = randn(rng, (sum(lens), 3, 2, 8))
    q = randn(rng, (sum(lens), 4, 8))
    kv = randn(rng, (sum(lens), 2, 2, 8))
    cu_arg = cu
    if kind == "torch":
        qkv, q, kv, cu_arg = to_torch(qkv), to_torch(q), to_torch(kv), torch.from_numpy(cu)
    a = fa.flash_attn_varlen_qkvpacked_func(qkv, cu_arg, 9, causal=True, backend="cpu")
    b = fa.flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_arg, cu_arg, 9, 9, causal=True, backend="cpu")
    np.testing.assert_array_equal(R.to_float64(a), R.to_float64(b))
    c = fa.flash_attn_varlen_kvpacked_func(q, kv, cu_arg, cu_arg, 9, 9, backend="cpu")
    d = fa.flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_arg, cu_arg, 9, 9, backend="cpu")
    np.testing.assert_array_equal(R.to_float64(c), R.to_float64(d))
    if kind == "torch":
        assert isinstance(a, torch.Tensor) and isinstance(c, torch.Tensor)


def test_varlen_paged_kv(rng):
    """flash_attn_varlen_func with block_table: k/v are pages (num_blocks, page, hk, d)."""
    page, nblocks = 16, 7
    lq, lk = [3, 5], [20, 33]
    kc, vc = randn(rng, (nblocks, page, 2, 16)), randn(rng, (nblocks, page, 2, 16))
    bt = np.array([[4, 1, 0], [6, 2, 5]], dtype=np.int32)
    q = randn(rng, (sum(lq), 2, 16))
    cq, ck = _cu(lq), _cu(lk)
    out = fa.flash_attn_varlen_func(q, kc, vc, cq, ck, 5, 33, causal=True, block_table=bt, backend="cpu")
    kd = np.concatenate([kc[bt[b]].reshape(-1, 2, 16)[:lk[b]] for b in range(2)])
    vd = np.concatenate([vc[bt[b]].reshape(-1, 2, 16)[:lk[b]] for b in range(2)])
    _check(out, None, q, kd, vd, "fp32", causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck)


# ---- dropout outputs -----------------------------------------------------------------------------------------------

def test_dropout_returns_probabilities_with_dropped_negated(rng):
    q, k, v = (randn(rng, (2, 24, 2, 16)) for _ in range(3))
    p = 0.3
    out, lse, s = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, seed=1234, backend="cpu")
    assert s is not None and s.shape == (2, 2, 24, 24) and s.dtype == np.float32
    keep = s >= 0
    frac_dropped = 1.0 - keep.mean()
    assert 0.2 < frac_dropped < 0.4
    ref, ref_lse = R.attention_ref(q, k, v, return_lse=True)
    # |S| is the un-dropped softmax; the LSE ignores dropout
    np.testing.assert_allclose(np.abs(s), np.exp(np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64),
                               k.astype(np.float64)) * 16 ** -0.5 - ref_lse[..., None]), rtol=1e-4, atol=1e-6)
    # the output uses exactly the returned mask
    ref_drop = R.attention_ref(q, k, v, dropout_p=p, dropout_mask=keep)
    np.testing.assert_allclose(out, ref_drop, rtol=1e-4, atol=1e-5)
    # same seed, same mask; other seed, other mask
    _, _, s2 = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, seed=1234, backend="cpu")
    _, _, s3 = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, seed=99, backend="cpu")
    np.testing.assert_array_equal(s, s2)
    assert not np.array_equal(s >= 0, s3 >= 0)


def test_dropout_seed_from_torch_generator(rng):
    q, k, v = (to_torch(randn(rng, (1, 16, 2, 8))) for _ in range(3))
    torch.manual_seed(7)
    a = fa.flash_attn_func(q, k, v, dropout_p=0.5, backend="cpu")
    torch.manual_seed(7)
    b = fa.flash_attn_func(q, k, v, dropout_p=0.5, backend="cpu")
    c = fa.flash_attn_func(q, k, v, dropout_p=0.5, backend="cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- backends, threads, autograd hook ------------------------------------------------------------------------------

def test_backends_listing():
    info = fa.backends()
    assert set(info) == {"cpu", "sim", "metal"}
    assert info["cpu"]["available"] is True
    for name, rec in info.items():
        assert isinstance(rec["available"], bool) and isinstance(rec["description"], str)
        if not rec["available"]:
            assert rec["reason"], f"{name} unavailable without a reason"
    assert "cpu" in fa.available_backends()


def test_backend_auto_and_explicit(rng):
    q = randn(rng, (1, 5, 2, 8))
    auto = fa.flash_attn_func(q, q, q)
    cpu = fa.flash_attn_func(q, q, q, backend="cpu")
    if not fa.backends()["metal"]["available"]:
        np.testing.assert_array_equal(auto, cpu)
    if not fa.backends()["metal"]["available"]:
        with pytest.raises(RuntimeError, match="metal"):
            fa.flash_attn_func(q, q, q, backend="metal")


def test_num_threads_setting(rng):
    before = fa.get_num_threads()
    q, k, v = (randn(rng, (2, 33, 2, 16)) for _ in range(3))
    try:
        fa.set_num_threads(1)
        assert fa.get_num_threads() == 1
        one = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
        fa.set_num_threads(2)
        assert fa.get_num_threads() == 2
        two = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
        np.testing.assert_array_equal(one, two)
    finally:
        fa.set_num_threads(0)
    assert fa.get_num_threads() >= 1
    assert before >= 1


def test_torch_requires_grad_returns_tensor(rng):
    q, k, v = (to_torch(randn(rng, (1, 6, 2, 8))).requires_grad_(True) for _ in range(3))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    assert isinstance(out, torch.Tensor) and out.shape == q.shape
    with torch.no_grad():
        ref = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    assert torch.equal(out.detach(), ref)


def test_signatures_match_flash_attn():
    import inspect
    expect = {
        "flash_attn_func": ["q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap",
                            "alibi_slopes", "deterministic", "return_attn_probs"],
        "flash_attn_qkvpacked_func": ["qkv", "dropout_p", "softmax_scale", "causal", "window_size", "softcap",
                                      "alibi_slopes", "deterministic", "return_attn_probs"],
        "flash_attn_kvpacked_func": ["q", "kv", "dropout_p", "softmax_scale", "causal", "window_size", "softcap",
                                     "alibi_slopes", "deterministic", "return_attn_probs"],
        "flash_attn_varlen_func": ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
                                   "dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
                                   "deterministic", "return_attn_probs", "block_table"],
        "flash_attn_varlen_qkvpacked_func": ["qkv", "cu_seqlens", "max_seqlen", "dropout_p", "softmax_scale",
                                             "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
                                             "return_attn_probs"],
        "flash_attn_varlen_kvpacked_func": ["q", "kv", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
                                            "max_seqlen_k", "dropout_p", "softmax_scale", "causal", "window_size",
                                            "softcap", "alibi_slopes", "deterministic", "return_attn_probs"],
        "flash_attn_with_kvcache": ["q", "k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin",
                                    "cache_seqlens", "cache_batch_idx", "cache_leftpad", "block_table",
                                    "softmax_scale", "causal", "window_size", "softcap", "rotary_interleaved",
                                    "alibi_slopes", "num_splits", "return_softmax_lse"],
    }
    defaults = dict(dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, block_table=None, k=None,
                    v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                    cache_leftpad=None, rotary_interleaved=True, num_splits=0, return_softmax_lse=False)
    for fname, names in expect.items():
        sig = inspect.signature(getattr(fa, fname))
        positional = [p.name for p in sig.parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert positional == names, fname
        for p in sig.parameters.values():
            if p.name in defaults and p.kind == p.POSITIONAL_OR_KEYWORD and (p.name not in ("k", "v") or
                                                                              fname == "flash_attn_with_kvcache"):
                assert p.default == defaults[p.name], (fname, p.name)
        kwonly = {p.name: p.default for p in sig.parameters.values() if p.kind == p.KEYWORD_ONLY}
        assert kwonly.get("backend") == "auto", fname


def test_varlen_rows_after_last_sequence_are_zero(rng):
    q, k, v = randn(rng, (9, 2, 8)), randn(rng, (7, 2, 8)), randn(rng, (7, 2, 8))
    cq, ck = _cu([3, 4]), _cu([3, 4])  # q rows 7, 8 belong to no sequence
    out, lse, _ = fa.flash_attn_varlen_func(q, k, v, cq, ck, 4, 4, return_attn_probs=True, backend="cpu")
    assert np.all(out[7:] == 0) and np.all(np.isposinf(lse[:, 7:]))
    _check(out[:7], lse[:, :7], q[:7], k, v, "fp32", cu_seqlens_q=cq, cu_seqlens_k=ck)


def test_varlen_dropout_probabilities(rng):
    lq, lk = [5, 3], [7, 9]
    q, k, v = randn(rng, (8, 2, 16)), randn(rng, (16, 2, 16)), randn(rng, (16, 2, 16))
    cq, ck = _cu(lq), _cu(lk)
    out, lse, s = fa.flash_attn_varlen_func(q, k, v, cq, ck, 5, 9, dropout_p=0.25, return_attn_probs=True,
                                            seed=3, backend="cpu")
    assert s.shape == (2, 2, 5, 9)
    keep = s >= 0
    for b in range(2):  # entries outside a sequence's (len_q, len_k) corner stay 0
        assert np.all(s[b, :, lq[b]:, :] == 0) and np.all(s[b, :, :, lk[b]:] == 0)
    ref = R.attention_ref(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, dropout_p=0.25, dropout_mask=keep)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_attn_probs_same_with_and_without_grad(rng):
    qn, kn, vn = (randn(rng, (1, 7, 2, 8)) for _ in range(3))
    q, k, v = (to_torch(x).requires_grad_(True) for x in (qn, kn, vn))
    for p in (0.0, 0.3):
        out_g, lse_g, s_g = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, seed=11, backend="cpu")
        with torch.no_grad():
            out, lse, s = fa.flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True, seed=11, backend="cpu")
        assert s_g is not None and torch.equal(s_g, s)
        assert torch.equal(out_g.detach(), out) and torch.equal(lse_g, lse)
