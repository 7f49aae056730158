"""torch.compile(fullgraph=True) through the public functions beyond the plain dense-with-grad case
(test_autograd.py): inference without grad, dropout seeded from torch's generator, ALiBi slopes as tensors and the
varlen family. fullgraph=True makes any graph break an error; backend="aot_eager" runs dynamo and AOT autograd
through the fake kernels without inductor's code generation, and must agree with eager bit for bit."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import flash_attn_cy as fa  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _leaves(*shapes, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_(grad) for s in shapes]


def _grads_after(fn, xs):
    for x in xs:
        x.grad = None
    fn(*xs).backward()
    return [x.grad.clone() for x in xs]


def test_inference_without_grad_traces_in_one_graph():
    q, k, v = _leaves((2, 13, 4, 16), (2, 17, 2, 16), (2, 17, 2, 16), seed=1, grad=False)

    def step(q, k, v):
        return fa.flash_attn_func(q, k, v, causal=True, softcap=5.0)

    got = _compiled(step)(q, k, v)
    assert not got.requires_grad
    torch.testing.assert_close(got, step(q, k, v), rtol=0, atol=0)
    with torch.no_grad():
        q2 = q.clone().requires_grad_()
        torch.testing.assert_close(_compiled(step)(q2, k, v), step(q, k, v), rtol=0, atol=0)


def test_dropout_seeded_by_torch_generator_traces_and_reproduces_eager():
    xs = _leaves((1, 11, 2, 8), (1, 15, 2, 8), (1, 15, 2, 8), seed=2)

    def step(q, k, v):
        return fa.flash_attn_func(q, k, v, dropout_p=0.3, causal=True).square().sum()

    torch.manual_seed(123)
    got = _grads_after(_compiled(step), xs)
    torch.manual_seed(123)
    want = _grads_after(step, xs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(g.abs().sum() > 0 for g in got)


@pytest.mark.parametrize("per_batch", [False, True], ids=["(nheads,)", "(batch, nheads)"])
def test_alibi_slopes_tensor_traces(per_batch):
    xs = _leaves((2, 9, 4, 8), (2, 12, 4, 8), (2, 12, 4, 8), seed=3)
    slopes = torch.rand(2, 4) if per_batch else torch.rand(4)

    def step(q, k, v):
        return fa.flash_attn_func(q, k, v, alibi_slopes=slopes, causal=True).square().sum()

    got = _grads_after(_compiled(step), xs)
    want = _grads_after(step, xs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_alibi_slopes_of_wrong_dtype_still_rejected_when_compiling():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(Exception, match="alibi_slopes: dtype must be float32"):
        _compiled(lambda q: fa.flash_attn_func(q, q, q, alibi_slopes=torch.ones(2, dtype=torch.float64)))(q)


def test_varlen_traces_with_grad_and_matches_eager():
    cu = torch.tensor([0, 5, 5, 19], dtype=torch.int32)  # one empty sequence
    xs = _leaves((19, 4, 8), (19, 2, 8), (19, 2, 8), seed=4)

    def step(q, k, v):
        return fa.flash_attn_varlen_func(q, k, v, cu, cu, 14, 14, causal=True).square().sum()

    got = _grads_after(_compiled(step), xs)
    want = _grads_after(step, xs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_varlen_qkvpacked_traces_without_grad():
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    (qkv,) = _leaves((10, 3, 2, 8), seed=5, grad=False)
    fn = lambda x: fa.flash_attn_varlen_qkvpacked_func(x, cu, 7, causal=True)  # noqa: E731
    torch.testing.assert_close(_compiled(fn)(qkv), fn(qkv), rtol=0, atol=0)


def test_varlen_bad_cu_seqlens_values_are_caught_when_the_graph_runs():
    # the tracer cannot see tensor values: the C layer checks them when the compiled graph executes
    x = torch.randn(20, 2, 8)
    bad = torch.tensor([0, 9, 7, 20], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        _compiled(lambda a: fa.flash_attn_varlen_func(a, a, a, bad, bad, 13, 13))(x)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        _compiled(lambda a: fa.flash_attn_varlen_func(a, a, a, cu, cu, 5, 13))(x)


def _decode_inputs(seed=6):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(q=r(2, 1, 4, 16), k_cache=r(2, 32, 2, 16), v_cache=r(2, 32, 2, 16), k=r(2, 1, 2, 16),
                v=r(2, 1, 2, 16), rotary_cos=r(40, 4), rotary_sin=r(40, 4))


def test_kvcache_decode_step_traces_and_updates_the_cache_in_place():
    x = _decode_inputs()
    lens = torch.tensor([3, 9], dtype=torch.int32)

    def step(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin):
        return fa.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens=lens,
                                          causal=True, rotary_interleaved=False, return_softmax_lse=True)

    mine = {n: t.clone() for n, t in x.items()}
    want = {n: t.clone() for n, t in x.items()}
    out, lse = _compiled(step)(**mine)
    out_e, lse_e = step(**want)
    torch.testing.assert_close(out, out_e, rtol=0, atol=0)
    torch.testing.assert_close(lse, lse_e, rtol=0, atol=0)
    for name in ("k_cache", "v_cache"):  # the new rows landed in the caller's caches
        torch.testing.assert_close(mine[name], want[name], rtol=0, atol=0)
        assert not torch.equal(mine[name], x[name])


def test_kvcache_decode_loop_with_int_cache_seqlens():
    x = _decode_inputs(seed=7)
    mine = {n: t.clone() for n, t in x.items()}
    fn = lambda q, kc, vc, k, v, n: fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=n, causal=True)  # noqa
    step = _compiled(fn)
    for n in range(4, 7):
        got = step(mine["q"], mine["k_cache"], mine["v_cache"], mine["k"], mine["v"], n)
        want = fn(x["q"], x["k_cache"], x["v_cache"], x["k"], x["v"], n)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(mine["k_cache"], x["k_cache"], rtol=0, atol=0)


def test_kvcache_bad_cache_seqlens_caught_when_the_graph_runs():
    x = _decode_inputs(seed=8)
    bad = torch.tensor([3, 40], dtype=torch.int32)  # beyond the 32-row cache
    with pytest.raises(ValueError, match="cache_seqlens"):
        _compiled(lambda q, kc, vc, k, v: fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=bad))(
            x["q"], x["k_cache"], x["v_cache"], x["k"], x["v"])


def test_kvcache_op_declares_its_mutations():
    from flash_attn_cy import _kvcache_op  # noqa: F401  (registers the op)

    x = _decode_inputs(seed=9)
    args = (x["q"], x["k_cache"], x["v_cache"], x["k"], x["v"], None, None, torch.tensor([3, 9], dtype=torch.int32),
            -1, None, None, None, None, None, True, -1, 0, 0.0, True, 0, "cpu")
    torch.library.opcheck(torch.ops.flash_attn_cy.kvcache.default, args, test_utils=("test_schema", "test_faketensor"))


def test_dynamic_shapes_with_float_arguments_trace_in_one_graph():
    """torch.compile(dynamic=True) passes Python floats (softmax_scale, softcap, dropout_p) as symbolic floats: the
    validation must not break the graph (math.isfinite on a symbolic float used to), and a bad value is still an
    error naming the argument."""
    def step(q, k, v, scale, cap):
        return fa.flash_attn_func(q, k, v, causal=True, softmax_scale=scale, softcap=cap, window_size=(3, -1))

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for seqlen in (5, 9):
        xs = _leaves((2, seqlen, 2, 16), (2, seqlen + 3, 1, 16), (2, seqlen + 3, 1, 16), seed=seqlen)
        got = _grads_after(lambda q, k, v: compiled(q, k, v, 0.3, 2.0).square().sum(), xs)
        want = _grads_after(lambda q, k, v: step(q, k, v, 0.3, 2.0).square().sum(), xs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    with pytest.raises(Exception, match="softcap: must be a finite float"):
        compiled(*_leaves((1, 4, 1, 8), (1, 4, 1, 8), (1, 4, 1, 8), grad=False), 0.3, float("inf"))


class _Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return fa.flash_attn_func(q, k, v, causal=True, softcap=3.0)


def test_torch_jit_trace_records_the_attention():
    """torch.jit.trace sees only torch ops: the result used to be computed through NumPy views into a torch.empty,
    so the traced graph returned uninitialised memory. Now the custom op is recorded and the trace recomputes."""
    q, k, v = _leaves((1, 7, 4, 16), (1, 9, 2, 16), (1, 9, 2, 16), seed=5, grad=False)
    traced = torch.jit.trace(_Attention(), (q, k, v))
    for seqlen_q, seqlen_k, seed in ((7, 9, 6), (12, 20, 7)):  # other values, and other shapes
        x = _leaves((1, seqlen_q, 4, 16), (1, seqlen_k, 2, 16), (1, seqlen_k, 2, 16), seed=seed, grad=False)
        torch.testing.assert_close(traced(*x), _Attention()(*x), rtol=0, atol=0)
    xs = _leaves((1, 7, 4, 16), (1, 9, 2, 16), (1, 9, 2, 16), seed=8)
    got = _grads_after(lambda *a: traced(*a).square().sum(), xs)
    want = _grads_after(lambda *a: _Attention()(*a).square().sum(), xs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_torch_export_with_a_dynamic_seqlen():
    """torch.export with a dynamic sequence length: the seqlen used to be pinned by an int() on the way to the custom
    op ("You marked s as dynamic but your code specialized it to be a constant")."""
    q, k, v = _leaves((1, 7, 4, 16), (1, 7, 2, 16), (1, 7, 2, 16), seed=9, grad=False)
    seqlen = torch.export.Dim("seqlen", min=2, max=1024)
    program = torch.export.export(_Attention(), (q, k, v), dynamic_shapes=({1: seqlen}, {1: seqlen}, {1: seqlen}))
    x = _leaves((1, 33, 4, 16), (1, 33, 2, 16), (1, 33, 2, 16), seed=10, grad=False)
    torch.testing.assert_close(program.module()(*x), _Attention()(*x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repeated_calls_compile_once(dtype):
    """No guard on state that the first call changes: a lazily filled dtype table used to force a second compile
    of every function on its second call."""
    from torch._dynamo.utils import counters

    counters.clear()
    q, k, v = (x.to(dtype) for x in _leaves((1, 24, 2, 16), (1, 24, 2, 16), (1, 24, 2, 16), seed=3, grad=False))
    fn = _compiled(lambda q, k, v: fa.flash_attn_func(q, k, v, causal=True))
    for _ in range(3):
        fn(q, k, v)
    assert counters["stats"]["unique_graphs"] == 1
