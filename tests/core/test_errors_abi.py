"""The C-side checks (csrc/fa_check.cpp) behind the Python validation: calling `_core` directly with inconsistent
metadata must raise a Python exception naming the problem, never read or write out of bounds."""
from __future__ import annotations

import numpy as np
import pytest

from flash_attn_cy import _core


def t(*shape):
    return np.zeros(shape, np.float32)


def fwd(**over):
    args = dict(q=t(2, 5, 4, 8), k=t(2, 7, 2, 8), v=t(2, 7, 2, 8), out=t(2, 5, 4, 8), softmax_lse=t(2, 4, 5))
    args.update(over)
    kw = {"softmax_scale": 0.3}
    kw.update(args.pop("kw", {}))
    return lambda: _core.forward("cpu", "float32", args["q"], args["k"], args["v"], args["out"],
                                 args["softmax_lse"], **kw)


def varlen(**kw_over):
    kw = dict(softmax_scale=0.3, cu_seqlens_q=np.array([0, 2, 5], np.int32), cu_seqlens_k=np.array([0, 3, 7], np.int32),
              max_seqlen_q=3, max_seqlen_k=4)
    kw.update(kw_over)
    return lambda: _core.forward("cpu", "float32", t(1, 5, 4, 8), t(1, 7, 2, 8), t(1, 7, 2, 8), t(1, 5, 4, 8),
                                 t(1, 4, 5), **kw)


CASES = [
    ("window", fwd(kw=dict(window_left=-2)), ValueError, "window_size"),
    ("softcap", fwd(kw=dict(softcap=-1.0)), ValueError, "softcap"),
    ("dropout", fwd(kw=dict(dropout_p=1.0)), ValueError, "dropout_p"),
    ("scale-nan", fwd(kw=dict(softmax_scale=float("nan"))), ValueError, "softmax_scale"),
    ("gqa", fwd(k=t(2, 7, 3, 8), v=t(2, 7, 3, 8)), ValueError, "multiple"),
    ("out-shape", fwd(out=t(2, 5, 4, 9)), ValueError, "out"),
    ("lse-shape", fwd(softmax_lse=t(2, 4, 6)), ValueError, "softmax_lse"),
    ("dtype", fwd(q=np.zeros((2, 5, 4, 8), np.float64)), TypeError, "q"),
    ("out-readonly", fwd(out=np.broadcast_to(t(1, 5, 4, 8), (2, 5, 4, 8))), TypeError, "out"),
    ("out-aliasing", fwd(out=np.lib.stride_tricks.as_strided(t(2, 5, 4, 8), strides=(0, 32, 4, 4))), ValueError,
     "overlap"),
    ("last-axis", fwd(q=t(2, 5, 8, 4).transpose(0, 1, 3, 2)), ValueError, "contiguous"),
    ("batch", fwd(k=t(3, 7, 2, 8), v=t(3, 7, 2, 8)), ValueError, "batch"),
    ("kv-shape", fwd(v=t(2, 6, 2, 8)), ValueError, "v"),
    ("headdim", fwd(q=t(2, 5, 4, 300), out=t(2, 5, 4, 300), k=t(2, 7, 2, 300), v=t(2, 7, 2, 300)), ValueError,
     "head dimension"),
    ("alibi-shape", fwd(kw=dict(alibi_slopes=t(1, 3))), ValueError, "alibi_slopes"),
    ("unknown-kw", fwd(kw=dict(bogus=1)), TypeError, "bogus"),
    ("backend", lambda: _core.forward("gpu", "float32", t(1, 1, 1, 8), t(1, 1, 1, 8), t(1, 1, 1, 8), t(1, 1, 1, 8),
                                      softmax_scale=1.0), ValueError, "backend"),
    ("empty", fwd(q=t(2, 0, 4, 8), out=t(2, 0, 4, 8), softmax_lse=t(2, 4, 0)), ValueError, "empty"),
    ("cu-start", varlen(cu_seqlens_q=np.array([1, 2, 5], np.int32)), ValueError, "cu_seqlens_q"),
    ("cu-decreasing", varlen(cu_seqlens_k=np.array([0, 4, 3], np.int32)), ValueError, "non-decreasing"),
    ("cu-total", varlen(cu_seqlens_q=np.array([0, 2, 6], np.int32), max_seqlen_q=4), ValueError, "cu_seqlens_q"),
    ("cu-max", varlen(max_seqlen_q=2), ValueError, "max_seqlen_q"),
    ("cu-k-len", varlen(cu_seqlens_k=np.array([0, 7], np.int32)), ValueError, "cu_seqlens_k"),
    ("seqused", fwd(kw=dict(seqused_k=np.array([3, 8], np.int32))), ValueError, "cache_seqlens"),
    ("leftpad", fwd(kw=dict(seqused_k=np.array([3, 5], np.int32), leftpad_k=np.array([0, 3], np.int32))),
     ValueError, "cache"),
    ("batch-idx", fwd(k=t(3, 7, 2, 8), v=t(3, 7, 2, 8), kw=dict(cache_batch_idx=np.array([0, 3], np.int32))),
     ValueError, "cache_batch_idx"),
    ("block-table", fwd(k=t(3, 16, 2, 8), v=t(3, 16, 2, 8), kw=dict(block_table=np.array([[0], [3]], np.int32),
                                                                      seqused_k=np.array([3, 3], np.int32))),
     ValueError, "block_table"),
    ("page-size", fwd(k=t(3, 8, 2, 8), v=t(3, 8, 2, 8), kw=dict(block_table=np.array([[0], [1]], np.int32))),
     ValueError, "page"),
]


@pytest.mark.parametrize("call,exc,match", [pytest.param(c, e, m, id=i) for i, c, e, m in CASES])
def test_core_rejects(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_kvcache_append_checks():
    q, kc, vc = t(2, 1, 4, 8), t(2, 16, 2, 8), t(2, 16, 2, 8)
    kn = t(2, 3, 2, 8)
    with pytest.raises(ValueError, match="capacity"):
        _core.kvcache_append("cpu", "float32", q, kc, vc, kn, kn, seqused_k=np.array([14, 2], np.int32))
    with pytest.raises(ValueError, match="cache_seqlens"):
        _core.kvcache_append("cpu", "float32", q, kc, vc, kn, kn)
    with pytest.raises(ValueError, match="rotary"):
        _core.kvcache_append("cpu", "float32", q, kc, vc, kn, kn, seqused_k=np.array([1, 2], np.int32),
                             rotary_cos=t(3, 2), rotary_sin=t(3, 2))
    with pytest.raises(ValueError, match="k and v"):
        _core.kvcache_append("cpu", "float32", q, kc, vc, kn, None, seqused_k=np.array([1, 2], np.int32))


def test_describe_plan_kind():
    with pytest.raises(ValueError, match="kind"):
        _core.describe_plan("sideways")


def test_device_tensor_needs_metal():
    d = _core.DeviceTensor(1, 0, 1024, (1, 1, 1, 8), (8, 8, 8, 1))
    with pytest.raises(ValueError, match="metal"):
        _core.forward("cpu", "float32", d, d, d, d, softmax_scale=1.0)


def test_device_tensor_bounds_checked_before_the_backend():
    """A Metal buffer view larger than its buffer is refused by the C checks (here reached with backend 'metal',
    which on a machine without Metal would otherwise fail only for being unavailable)."""
    small = _core.DeviceTensor(0x1000, 0, 64, (1, 4, 1, 8), (32, 8, 8, 1))      # needs 4*8*4 = 128 bytes
    ok = _core.DeviceTensor(0x2000, 0, 4096, (1, 4, 1, 8), (32, 8, 8, 1))
    with pytest.raises(ValueError, match="Metal buffer"):
        _core.forward("metal", "float32", small, ok, ok, ok, softmax_scale=1.0)
    lse = _core.DeviceTensor(0x3000, 0, 8, (1, 1, 4), (4, 4, 1))  # needs 16 bytes
    with pytest.raises(ValueError, match="softmax_lse"):
        _core.forward("metal", "float32", ok, ok, ok, ok, lse, softmax_scale=1.0)
