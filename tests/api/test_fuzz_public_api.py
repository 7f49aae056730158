"""Property-based fuzz (hypothesis) over every public function's arguments: a valid call is drawn, then up to two of
its arguments are replaced by hostile values (wrong types, shapes, dtypes, kinds, empty or huge sizes, NaN/inf
scalars, out-of-range indices, reversed strides, ...). Whatever comes in, the call must never crash or hang: it
returns a result that matches the float64 reference under the project's tolerance rule (hostile but legal values,
e.g. a reversed view or an int64 index array), or raises a clean ValueError / TypeError / NotImplementedError whose
message names one of the function's arguments.

Runs in CI with a fixed budget: derandomized (the same examples every run) and few examples per function, so the
whole file takes well under 30 s on 2 cores."""
from __future__ import annotations

import inspect
import re
import threading

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import flash_attn_cy as fa  # noqa: E402
from flash_attn_cy import bert_padding as bp  # noqa: E402
from flash_attn_cy import reference as R  # noqa: E402

from _tolerance import assert_close_to_ref  # noqa: E402
from conftest import DTYPES  # noqa: E402

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
ARGUMENT_ERRORS = (ValueError, TypeError, NotImplementedError)
HANG_S = 60.0


def _run(fn, args, kwargs):
    """fn(*args, **kwargs) in a thread: ('ok', result) or ('error', exception); a call still running after HANG_S
    fails the test as a hang."""
    box = {}

    def target():
        try:
            box["ok"] = fn(*args, **kwargs)
        except BaseException as e:  # judged below
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG_S)
    assert not t.is_alive(), f"{fn.__name__} hung with {sorted(kwargs)}"
    return ("error", box["error"]) if "error" in box else ("ok", box["ok"])


def _judge_error(fn, e, extra_names=()):
    """A clean exception of an argument-error type whose message names an argument of fn."""
    assert isinstance(e, ARGUMENT_ERRORS), f"{fn.__name__}: {type(e).__name__}: {e}"
    names = [n for n in inspect.signature(fn).parameters if n not in ("args", "kwargs")] + list(extra_names)
    msg = str(e)
    assert any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg) for n in names), \
        f"{fn.__name__}: message names no argument: {type(e).__name__}: {msg}"


# ---- hostile values ---------------------------------------------------------------------------------------------

def _tensor_mutations(a):
    """Replacements for a float array argument: (label, value). Some are legal (a reversed view, a torch tensor
    when the others are NumPy is not)."""
    out = [("none", None), ("int", 3), ("str", "x"), ("list", a.tolist() if a.size < 64 else [1.0]),
           ("ndim-1", a[..., 0]), ("ndim+1", a[None]), ("int32", a.astype(np.int32)),
           ("complex", a.astype(np.complex64)), ("bool", a > 0), ("float64", a.astype(np.float64)),
           ("torch", torch.from_numpy(np.ascontiguousarray(a if a.dtype.kind != "V" and a.dtype.name != "bfloat16" else a.astype(np.float32)))), ("reversed", a[::-1]),
           ("empty", a[:0])]
    if a.ndim > 1:
        out.append(("transposed", np.swapaxes(a, 0, -2)))
    if a.shape[-1] > 1:
        out.append(("narrow", a[..., :-1]))
    if a.ndim > 1 and a.shape[1] > 1:
        out.append(("short", a[:, :-1]))
    out.append(("wide", np.concatenate([a, a], axis=-1)))
    return out


INTS = [-1, -7, 0, 1, 2, 2 ** 31, 2 ** 63, 1.5, True, None, "3", np.int64(2)]
FLOATS = [float("nan"), float("inf"), -1.0, 0.0, 1e-30, 1e30, "a", None, True, np.float32(0.5), 3]
BOOLS = [0, 1, 2, "yes", None, np.bool_(True)]
WINDOWS = [(-2, 0), (0,), (1, 2, 3), "ab", (1.5, 2), (2 ** 40, 0), (-1, 2 ** 31), None, [3, 4], (np.int64(2), 1)]
BACKENDS = ["cpu", "gpu", None, 3]


def _index_mutations(a):
    """Replacements for an int32 index array (cu_seqlens, cache_seqlens, block_table, ...)."""
    a = np.asarray(a)
    out = [("none", None), ("float", a.astype(np.float32)), ("int64", a.astype(np.int64)), ("list", a.tolist()),
           ("neg", a - 5), ("huge", a + 2 ** 30), ("int64-huge", a.astype(np.int64) + 2 ** 40),
           ("ndim+1", a[None]), ("torch", torch.from_numpy(a.astype(np.int64)))]
    if a.size > 1:
        out += [("reversed", a[::-1].copy()), ("short", a[:-1])]
    return out


def _scalar_pool(kind):
    return {"int": INTS, "float": FLOATS, "bool": BOOLS, "window": WINDOWS, "backend": BACKENDS}[kind]


def _mutate(draw, args, kinds):
    """Replace up to two arguments (by name) with hostile values; returns the new dict and the labels."""
    args = dict(args)
    names = [n for n in kinds if n in args]
    labels = []
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        kind = kinds[name]
        if kind == "tensor":
            if args[name] is None:
                continue
            options = _tensor_mutations(np.asarray(args[name]))
        elif kind == "index":
            if args[name] is None:
                continue
            options = _index_mutations(args[name])
        else:
            options = [(repr(x), x) for x in _scalar_pool(kind)]
        label, value = draw(st.sampled_from(options))
        args[name] = value
        labels.append(f"{name}={label}")
    return args, labels


def _arr(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


def _close(out, ref64, reflow):
    out = out.float().numpy() if torch.is_tensor(out) and out.dtype == torch.bfloat16 else np.asarray(out)
    assert_close_to_ref(out, np.asarray(ref64, np.float64), reflow)


def _try_ref(fn, *a, **kw):
    """The reference on the same arguments, or None where the reference cannot take them (then only the absence of
    a crash is checked)."""
    try:
        return fn(*a, **kw)
    except Exception:
        return None


# ---- dense, packed and varlen forward ------------------------------------------------------------------------------

FWD_KINDS = dict(q="tensor", k="tensor", v="tensor", dropout_p="float", softmax_scale="float", causal="bool",
                 window_size="window", softcap="float", alibi_slopes="tensor", deterministic="bool",
                 return_attn_probs="bool", backend="backend")


@st.composite
def dense_calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dt = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    b, sq, sk, hk, g = (draw(st.integers(1, m)) for m in (2, 12, 12, 2, 2))
    d = draw(st.sampled_from([1, 8, 16]))
    args = dict(q=_arr(rng, (b, sq, hk * g, d), dt), k=_arr(rng, (b, sk, hk, d), dt), v=_arr(rng, (b, sk, hk, d), dt),
                dropout_p=0.0, softmax_scale=draw(st.sampled_from([None, 0.3])), causal=draw(st.booleans()),
                window_size=(draw(st.integers(-1, 13)), draw(st.integers(-1, 13))),
                softcap=draw(st.sampled_from([0.0, 5.0])),
                alibi_slopes=draw(st.sampled_from([None, rng.uniform(0, 1, hk * g).astype(np.float32)])),
                deterministic=False, return_attn_probs=False, backend="cpu")
    args, labels = _mutate(draw, args, FWD_KINDS)
    return args, labels


def _ref_opts(a):
    return dict(softmax_scale=a["softmax_scale"], causal=a["causal"], window_size=a["window_size"],
                softcap=a["softcap"], alibi_slopes=a["alibi_slopes"])


def _check_forward(fn, call_args, q, k, v, ref_kw, extra_names=()):
    status, res = _run(fn, (), call_args)
    if status == "error":
        _judge_error(fn, res, extra_names)
        return
    out = res[0] if isinstance(res, tuple) else res
    if call_args.get("dropout_p") not in (0, 0.0, None, False):
        assert np.asarray(out).shape == np.asarray(q).shape
        return
    dt = np.asarray(q).dtype if not torch.is_tensor(q) else {torch.float32: np.float32, torch.float64: np.float64}.get(
        q.dtype)
    ref = _try_ref(R.attention_ref, q, k, v, **ref_kw)
    low = _try_ref(R.attention_ref, q, k, v, compute_dtype=dt, **ref_kw) if dt is not None else None
    if ref is None or low is None:
        return
    _close(out, ref, low)


@FUZZ
@given(dense_calls())
def test_fuzz_flash_attn_func(call):
    a, labels = call
    _check_forward(fa.flash_attn_func, a, a["q"], a["k"], a["v"], _ref_opts(a))


@FUZZ
@given(dense_calls())
def test_fuzz_packed_funcs(call):
    a, labels = call
    opts = {n: a[n] for n in FWD_KINDS if n not in ("q", "k", "v")}
    q, k, v = (np.asarray(a[n]) if a[n] is not None and not isinstance(a[n], (int, str)) else a[n] for n in "qkv")
    try:  # the packed forms of whatever q, k, v were drawn (hostile ones do not stack: they go in as they are)
        kv = np.stack([k, v], axis=2)
    except Exception:
        kv = k
    _check_forward(fa.flash_attn_kvpacked_func, dict(opts, q=a["q"], kv=kv), a["q"], a["k"], a["v"], _ref_opts(a))
    try:
        qkv = np.stack([q, k, v], axis=2)
    except Exception:
        qkv = q
    _check_forward(fa.flash_attn_qkvpacked_func, dict(opts, qkv=qkv), q, k, v, _ref_opts(a))


VARLEN_KINDS = dict(FWD_KINDS, cu_seqlens_q="index", cu_seqlens_k="index", max_seqlen_q="int", max_seqlen_k="int")


@st.composite
def varlen_calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dt = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    lq = draw(st.lists(st.integers(0, 9), min_size=1, max_size=3))
    lk = draw(st.lists(st.integers(0, 9), min_size=len(lq), max_size=len(lq)))
    hk, g = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    d = draw(st.sampled_from([8, 16]))
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    args = dict(q=_arr(rng, (int(cq[-1]), hk * g, d), dt), k=_arr(rng, (int(ck[-1]), hk, d), dt),
                v=_arr(rng, (int(ck[-1]), hk, d), dt), cu_seqlens_q=cq, cu_seqlens_k=ck,
                max_seqlen_q=max(lq), max_seqlen_k=max(lk), dropout_p=0.0, softmax_scale=None,
                causal=draw(st.booleans()), window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                deterministic=False, return_attn_probs=False, backend="cpu")
    return _mutate(draw, args, VARLEN_KINDS)


@FUZZ
@given(varlen_calls())
def test_fuzz_varlen_funcs(call):
    a, labels = call
    ref_kw = dict(_ref_opts(a), cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=a["cu_seqlens_k"])
    _check_forward(fa.flash_attn_varlen_func, a, a["q"], a["k"], a["v"], ref_kw)
    opts = {n: a[n] for n in VARLEN_KINDS if n not in ("q", "k", "v")}
    try:
        kv = np.stack([np.asarray(a["k"]), np.asarray(a["v"])], axis=1)
    except Exception:
        kv = a["k"]
    _check_forward(fa.flash_attn_varlen_kvpacked_func, dict(opts, q=a["q"], kv=kv), a["q"], a["k"], a["v"], ref_kw)
    same = {n: opts[n] for n in opts if n not in ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")}
    try:
        qkv = np.stack([np.asarray(a["q"])] * 3, axis=1)
    except Exception:
        qkv = a["q"]
    ref_self = dict(_ref_opts(a), cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=a["cu_seqlens_q"])
    q = a["q"]
    _check_forward(fa.flash_attn_varlen_qkvpacked_func,
                   dict(same, qkv=qkv, cu_seqlens=a["cu_seqlens_q"], max_seqlen=a["max_seqlen_q"]), q, q, q,
                   ref_self)


# ---- KV cache -----------------------------------------------------------------------------------------------------

KV_KINDS = dict(q="tensor", k_cache="tensor", v_cache="tensor", k="tensor", v="tensor", rotary_cos="tensor",
                rotary_sin="tensor", cache_seqlens="index", cache_batch_idx="index", cache_leftpad="index",
                block_table="index", softmax_scale="float", causal="bool", window_size="window", softcap="float",
                rotary_interleaved="bool", num_splits="int", return_softmax_lse="bool", backend="backend")


@st.composite
def kvcache_calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dt = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    b, hk, g, sq, new = (draw(st.integers(lo, hi)) for lo, hi in ((1, 2), (1, 2), (1, 2), (1, 3), (0, 2)))
    d = draw(st.sampled_from([8, 16]))
    paged = draw(st.booleans())
    if paged:
        pages, cap = 2 * b, 32
        kc, vc = _arr(rng, (pages, 16, hk, d), dt), _arr(rng, (pages, 16, hk, d), dt)
        table = rng.permutation(pages).astype(np.int32).reshape(b, 2)
    else:
        cap = 20
        kc, vc = _arr(rng, (b, cap, hk, d), dt), _arr(rng, (b, cap, hk, d), dt)
        table = None
    seqlens = rng.integers(0, cap - new + 1, b).astype(np.int32)
    rot = draw(st.booleans()) and new > 0
    args = dict(q=_arr(rng, (b, sq, hk * g, d), dt), k_cache=kc, v_cache=vc,
                k=_arr(rng, (b, new, hk, d), dt) if new else None, v=_arr(rng, (b, new, hk, d), dt) if new else None,
                rotary_cos=_arr(rng, (cap + 4, d // 4), dt) if rot else None,
                rotary_sin=_arr(rng, (cap + 4, d // 4), dt) if rot else None,
                cache_seqlens=seqlens, cache_batch_idx=None if paged else rng.permutation(b).astype(np.int32),
                cache_leftpad=None, block_table=table, softmax_scale=None, causal=draw(st.booleans()),
                window_size=(-1, -1), softcap=0.0, rotary_interleaved=draw(st.booleans()), num_splits=0,
                return_softmax_lse=False, backend="cpu")
    return _mutate(draw, args, KV_KINDS)


@FUZZ
@given(kvcache_calls())
def test_fuzz_flash_attn_with_kvcache(call):
    a, labels = call
    before = {n: (np.array(a[n], copy=True) if isinstance(a[n], np.ndarray) else a[n]) for n in a}
    status, res = _run(fa.flash_attn_with_kvcache, (), a)
    if status == "error":
        _judge_error(fa.flash_attn_with_kvcache, res)
        return
    out = res[0] if isinstance(res, tuple) else res
    kw = {n: before[n] for n in ("rotary_cos", "rotary_sin", "cache_seqlens", "cache_batch_idx", "cache_leftpad",
                                 "block_table", "softmax_scale", "causal", "window_size", "softcap",
                                 "rotary_interleaved")}
    q = before["q"]
    ref = _try_ref(R.kvcache_ref, q, before["k_cache"], before["v_cache"], before["k"], before["v"], **kw)
    dt = np.asarray(q).dtype if isinstance(q, np.ndarray) else None
    low = _try_ref(R.kvcache_ref, q, before["k_cache"], before["v_cache"], before["k"], before["v"],
                   compute_dtype=dt, **kw) if dt is not None else None
    if ref is None or low is None:
        return
    _close(out, ref[0], low[0])


# ---- backward -----------------------------------------------------------------------------------------------------

BWD_KINDS = dict(dout="tensor", q="tensor", k="tensor", v="tensor", out="tensor", softmax_lse="tensor",
                 dq="tensor", softmax_scale="float", causal="bool", window_size="window", softcap="float",
                 deterministic="bool", backend="backend")


@st.composite
def backward_calls(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    b, sq, sk, h = (draw(st.integers(1, m)) for m in (2, 10, 10, 2))
    d = draw(st.sampled_from([8, 16]))
    q, k, v = (_arr(rng, (b, s, h, d), np.float64) for s in (sq, sk, sk))
    causal = draw(st.booleans())
    out, lse, _ = fa.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True, backend="cpu")
    args = dict(dout=_arr(rng, out.shape, np.float64), q=q, k=k, v=v, out=out, softmax_lse=lse, dq=None,
                softmax_scale=None, causal=causal, window_size=(-1, -1), softcap=0.0, deterministic=True,
                backend="cpu")
    return _mutate(draw, args, BWD_KINDS)


@FUZZ
@given(backward_calls())
def test_fuzz_backward(call):
    a, labels = call
    status, res = _run(fa.backward, (), a)
    if status == "error":
        _judge_error(fa.backward, res)
        return
    q, k, v, dout = (a[n] for n in ("q", "k", "v", "dout"))
    if not all(isinstance(x, np.ndarray) and x.dtype == np.float64 for x in (q, k, v, dout)) or labels:
        return  # only the unmutated float64 case has an exact autograd reference below; the rest: no crash
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x)).requires_grad_() for x in (q, k, v))
    ref = R.attention_ref_torch(tq, tk, tv, causal=a["causal"])
    ref.backward(torch.from_numpy(dout))
    for got, want in zip(res, (tq.grad, tk.grad, tv.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-9, atol=1e-9)


# ---- bert_padding ---------------------------------------------------------------------------------------------------

@st.composite
def padding_calls(draw):
    b, s, f = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31)))
    hidden = torch.randn(b, s, f, generator=g)
    mask = torch.rand(b, s, generator=g) > 0.4
    bad = draw(st.sampled_from([None, "mask-float", "mask-shape", "hidden-numpy", "mask-none", "hidden-1d",
                                "indices-oob", "indices-float", "batch-neg", "seqlen-small", "mask-int64"]))
    return hidden, mask, bad


@FUZZ
@given(padding_calls())
def test_fuzz_bert_padding(call):
    hidden, mask, bad = call
    h_arg, m_arg = hidden, mask
    if bad == "mask-float":
        m_arg = mask.float() * 0.5
    elif bad == "mask-shape":
        m_arg = mask[:, :-1] if mask.shape[1] > 1 else mask[None]
    elif bad == "hidden-numpy":
        h_arg = hidden.numpy()
    elif bad == "mask-none":
        m_arg = None
    elif bad == "hidden-1d":
        h_arg = hidden.flatten()
    elif bad == "mask-int64":
        m_arg = mask.long()
    status, res = _run(bp.unpad_input, (h_arg, m_arg), {})
    if status == "error":
        _judge_error(bp.unpad_input, res)
        return
    packed, indices, cu, max_len, used = res
    want = hidden.reshape(-1, hidden.shape[-1])[mask.flatten()]
    assert torch.equal(packed, want) and int(cu[-1]) == want.shape[0]
    batch, seqlen, idx = hidden.shape[0], hidden.shape[1], indices
    if bad == "indices-oob":
        idx = indices + batch * seqlen
    elif bad == "indices-float":
        idx = indices.float()
    elif bad == "batch-neg":
        batch = -1
    elif bad == "seqlen-small":
        seqlen = 0
    status, res = _run(bp.pad_input, (packed, idx, batch, seqlen), {})
    if status == "error":
        _judge_error(bp.pad_input, res)
        return
    if bad not in ("batch-neg", "seqlen-small"):
        assert torch.equal(res, hidden * mask[..., None])
    status, res = _run(bp.index_first_axis, (hidden.reshape(-1, hidden.shape[-1]), idx), {})
    if status == "error":
        _judge_error(bp.index_first_axis, res)
    status, res = _run(bp.index_put_first_axis, (packed, idx, batch * seqlen), {})
    if status == "error":
        _judge_error(bp.index_put_first_axis, res)


# ---- the reference itself -------------------------------------------------------------------------------------------

@FUZZ
@given(dense_calls())
def test_fuzz_reference(call):
    """The reference is public too: hostile arguments give a clean argument error (or a result), never a crash."""
    a, labels = call
    status, res = _run(R.attention_ref, (a["q"], a["k"], a["v"]), _ref_opts(a))
    if status == "error":
        _judge_error(R.attention_ref, res)
