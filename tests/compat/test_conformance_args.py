"""flash_attn 2.x argument forms and return values that code written for flash_attn relies on (issue 16, items 1-4).

- window_size in every length-2 form flash_attn accepts (it only indexes [0] and [1]); softmax_scale, dropout_p and
  softcap as Python, NumPy or 0-d tensor numbers: through every public function, the drop-in and the low-level
  backward;
- varlen attention over a paged cache (block_table) runs its forward for inputs that require grad, and only a
  backward raises, naming block_table;
- KV-cache capacity errors with a block_table name block_table and the pages needed;
- the drop-in's return_attn_probs follows flash_attn: S_dmask only with dropout (2.7+: an empty tensor otherwise).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flash_attn_cy as fa  # noqa: E402
from flash_attn_cy.flash_attn_compat import flash_attn_interface as fai  # noqa: E402

G = torch.Generator().manual_seed(16)


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=G).to(dtype)


WINDOW = (5, 2)
WINDOW_FORMS = {
    "list": [5, 2],
    "numpy-ints": (np.int64(5), np.int32(2)),
    "0d-tensors": (torch.tensor(5), torch.tensor(2, dtype=torch.int32)),
    "1d-numpy": np.array([5, 2]),
    "1d-tensor": torch.tensor([5, 2]),  # upstream's tests pass torch.randint(0, seqlen_k, (2,))
    "1d-tensor-int32": torch.tensor([5, 2], dtype=torch.int32),
}


def _calls():
    """(name, fn(window_size=..., **kw)) for every public attention entry point on one fixed input."""
    b, sq, sk, h, hk, d = 2, 9, 13, 4, 2, 16
    q, k, v = _t(b, sq, h, d), _t(b, sk, hk, d), _t(b, sk, hk, d)
    qkv = _t(b, sq, 3, h, d)
    kv = torch.stack([k, v], dim=2)
    cu_q = torch.tensor([0, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 13], dtype=torch.int32)
    qv, kvv = q[0], k[0]
    kc, vc = torch.zeros(b, 32, hk, d), torch.zeros(b, 32, hk, d)
    kc[:, :sk], vc[:, :sk] = k, v
    mods = (("", fa), ("flash_attn.", fai))
    calls = []
    for prefix, m in mods:
        calls += [
            (prefix + "flash_attn_func", lambda m=m, **kw: m.flash_attn_func(q, k, v, **kw)),
            (prefix + "flash_attn_qkvpacked_func", lambda m=m, **kw: m.flash_attn_qkvpacked_func(qkv, **kw)),
            (prefix + "flash_attn_kvpacked_func", lambda m=m, **kw: m.flash_attn_kvpacked_func(q, kv, **kw)),
            (prefix + "flash_attn_varlen_func",
             lambda m=m, **kw: m.flash_attn_varlen_func(qv, kvv, kvv, cu_q, cu_k, 5, 7, **kw)),
            (prefix + "flash_attn_varlen_qkvpacked_func",
             lambda m=m, **kw: m.flash_attn_varlen_qkvpacked_func(qkv[0], cu_q, 5, **kw)),
            (prefix + "flash_attn_varlen_kvpacked_func",
             lambda m=m, **kw: m.flash_attn_varlen_kvpacked_func(qv, kv[0], cu_q, cu_k, 5, 7, **kw)),
            (prefix + "flash_attn_with_kvcache",
             lambda m=m, **kw: m.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=sk, **kw)),
        ]
    return calls


CALLS = _calls()


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
def test_window_size_every_flash_attn_form(name, call):
    want = call(window_size=WINDOW)
    for form, w in WINDOW_FORMS.items():
        got = call(window_size=w)
        assert torch.equal(got, want), f"{name}: window_size as {form}"


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
def test_scalars_as_numpy_and_0d_tensors(name, call):
    want = call(softmax_scale=0.25, softcap=3.0, window_size=WINDOW)
    for scale, cap in [(np.float32(0.25), np.float64(3.0)), (torch.tensor(0.25), torch.tensor(3.0)),
                       (np.array(0.25), torch.tensor(3, dtype=torch.int64))]:
        got = call(softmax_scale=scale, softcap=cap, window_size=torch.tensor(WINDOW))
        assert torch.equal(got, want), f"{name}: softmax_scale={scale!r}, softcap={cap!r}"


@pytest.mark.parametrize("p", [np.float64(0.3), torch.tensor(0.3), np.array(0.3, dtype=np.float32)])
def test_dropout_p_as_numpy_and_0d_tensor(p):
    q, k, v = _t(1, 11, 2, 16), _t(1, 11, 2, 16), _t(1, 11, 2, 16)
    want = fa.flash_attn_func(q, k, v, dropout_p=float(p), seed=(7, 0))
    assert torch.equal(fa.flash_attn_func(q, k, v, dropout_p=p, seed=(7, 0)), want)


def test_window_and_scalars_through_the_low_level_backward():
    q, k, v = _t(1, 10, 2, 16), _t(1, 12, 2, 16), _t(1, 12, 2, 16)
    out, lse, _ = fa.flash_attn_func(q, k, v, softmax_scale=0.3, window_size=WINDOW, return_attn_probs=True)
    dout = _t(1, 10, 2, 16)
    want = fa.backward(dout, q, k, v, out, lse, softmax_scale=0.3, window_size=WINDOW)
    got = fa.backward(dout, q, k, v, out, lse, softmax_scale=torch.tensor(0.3), window_size=torch.tensor(WINDOW))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("bad,exc", [
    (torch.tensor([5.0, 2.0]), TypeError),          # float entries
    (torch.tensor([5, 2, 1]), ValueError),          # three entries
    (np.array([[5, 2]]), ValueError),               # 2-d
    (torch.tensor([True, False]), TypeError),       # bools are not window sizes
    ((torch.tensor(5.5), 2), TypeError),
    ((5, np.array([2])), TypeError),
])
def test_window_size_bad_forms_name_the_argument(bad, exc):
    q = _t(1, 4, 2, 8)
    with pytest.raises(exc, match="window_size"):
        fa.flash_attn_func(q, q, q, window_size=bad)


@pytest.mark.parametrize("arg,bad", [("softmax_scale", torch.tensor([0.1, 0.2])), ("softcap", np.array([1.0])),
                                     ("dropout_p", torch.tensor(True)), ("softmax_scale", "0.1")])
def test_scalar_bad_forms_name_the_argument(arg, bad):
    q = _t(1, 4, 2, 8)
    with pytest.raises(TypeError, match=arg):
        fa.flash_attn_func(q, q, q, **{arg: bad})


# ---------------------------------------------------------------------------------------------------------------
# paged varlen with grad; capacity errors with a block_table

def _paged_case():
    h, hk, d, page = 4, 2, 16, 16
    q = _t(8, h, d)
    k_cache, v_cache = _t(5, page, hk, d), _t(5, page, hk, d)
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 20, 45], dtype=torch.int32)
    bt = torch.tensor([[4, 1], [0, 2]], dtype=torch.int32)
    return q, k_cache, v_cache, cu_q, cu_k, bt


@pytest.mark.parametrize("mod", [fa, fai], ids=["flash_attn_cy", "flash_attn"])
def test_paged_varlen_forward_runs_with_requires_grad_backward_names_block_table(mod):
    q, kc, vc, cu_q, cu_k, bt = _paged_case()
    with torch.no_grad():
        want = mod.flash_attn_varlen_func(q, kc, vc, cu_q, cu_k, 5, 25, causal=True, block_table=bt)
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, kc, vc))
    out = mod.flash_attn_varlen_func(qg, kg, vg, cu_q, cu_k, 5, 25, causal=True, block_table=bt)
    assert torch.equal(out.detach(), want)
    assert out.requires_grad  # part of the graph, as flash_attn's output is
    with pytest.raises(NotImplementedError, match="block_table"):
        out.sum().backward()


def test_paged_varlen_with_grad_and_dropout_returns_probs():
    q, kc, vc, cu_q, cu_k, bt = _paged_case()
    qg = q.clone().requires_grad_()
    out, lse, probs = fa.flash_attn_varlen_func(qg, kc, vc, cu_q, cu_k, 5, 25, dropout_p=0.2, block_table=bt,
                                                return_attn_probs=True, seed=(3, 0))
    with torch.no_grad():
        out2, lse2, probs2 = fa.flash_attn_varlen_func(q, kc, vc, cu_q, cu_k, 5, 25, dropout_p=0.2, block_table=bt,
                                                       return_attn_probs=True, seed=(3, 0))
    assert torch.equal(out.detach(), out2) and torch.equal(lse, lse2) and torch.equal(probs, probs2)


@pytest.mark.parametrize("mod", [fa, fai], ids=["flash_attn_cy", "flash_attn"])
def test_kvcache_capacity_error_names_block_table_and_pages(mod):
    q = _t(2, 1, 4, 16)
    kc, vc = torch.zeros(6, 16, 2, 16), torch.zeros(6, 16, 2, 16)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)  # 2 pages of 16 rows per sequence
    k_new = _t(2, 3, 2, 16)
    with pytest.raises(ValueError, match=r"block_table.*needs 3 pages.*2 pages per sequence"):
        mod.flash_attn_with_kvcache(q, kc, vc, k_new, k_new, cache_seqlens=torch.tensor([5, 30], dtype=torch.int32),
                                    block_table=bt)
    with pytest.raises(ValueError, match=r"cache_seqlens.*block_table.*2 pages x 16 rows"):
        mod.flash_attn_with_kvcache(q, kc, vc, k_new, k_new, cache_seqlens=torch.tensor([5, 40], dtype=torch.int32),
                                    block_table=bt)


# ---------------------------------------------------------------------------------------------------------------
# return_attn_probs through the drop-in

def _dropin_calls():
    return [c for c in CALLS if c[0].startswith("flash_attn.") and not c[0].endswith("kvcache")]


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("name,call", _dropin_calls(), ids=[c[0] for c in _dropin_calls()])
def test_dropin_s_dmask_only_with_dropout(name, call, grad):
    with torch.set_grad_enabled(grad):
        out, lse, s_dmask = call(return_attn_probs=True)
    # flash_attn: return_softmax = return_attn_probs and dropout_p > 0; without dropout the third value is None
    # (flash_attn 2.0-2.6, and issue 16 item 4; 2.7+'s kernel hands back an empty (0,) tensor there instead)
    assert s_dmask is None
    assert lse.dtype == torch.float32
    out2, lse2, s_dmask2 = call(return_attn_probs=True, dropout_p=0.25)
    assert s_dmask2.dim() == 4 and s_dmask2.numel() > 0


def test_dropin_s_dmask_is_flash_attn_scaled_softmax_with_dropout_sign():
    q, k, v = _t(1, 7, 2, 16), _t(1, 9, 2, 16), _t(1, 9, 2, 16)
    _, _, probs = fa.flash_attn_func(q, k, v, dropout_p=0.3, return_attn_probs=True, seed=(5, 0))
    torch.manual_seed(0)
    _, _, s_dmask = fai.flash_attn_func(q, k, v, dropout_p=0.3, return_attn_probs=True)
    # one scale per row: exp(score - row max), so the largest entry of each row is +-1 and |S| / |P| is constant
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 16 ** -0.5
    want = torch.exp(s - s.amax(-1, keepdim=True))
    torch.testing.assert_close(s_dmask.abs().double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(probs.abs() > 0, s_dmask.abs() > 0)


def test_native_api_keeps_probabilities_without_dropout():
    q, k, v = _t(1, 7, 2, 16), _t(1, 9, 2, 16), _t(1, 9, 2, 16)
    _, _, probs = fa.flash_attn_func(q, k, v, return_attn_probs=True)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 16 ** -0.5
    torch.testing.assert_close(probs.double(), torch.softmax(s, -1), rtol=1e-5, atol=1e-6)


def test_get_block_size_n_covers_a_whole_row():
    assert fai._get_block_size_n("cpu", 128, True, False) >= 2 ** 31 - 1


def test_kvcache_window_as_a_tensor_while_torch_compile_traces():
    """flash_attn_with_kvcache's traced path (torch.compile) takes the same window forms as the eager one."""
    q, kc, vc = _t(2, 1, 4, 16), _t(2, 32, 2, 16), _t(2, 32, 2, 16)
    lens = torch.tensor([9, 20], dtype=torch.int32)
    want = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, window_size=WINDOW, softcap=3.0)
    window = torch.tensor(WINDOW)
    fn = torch.compile(lambda q, kc, vc: fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, window_size=window,
                                                                    softcap=np.float32(3.0)), backend="eager")
    assert torch.equal(fn(q, kc, vc), want)
