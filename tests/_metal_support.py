"""Helpers shared by the Metal-kernel tests (tests/metal/test_metal_*.py, tests/kvcache/test_metal_kvcache.py,
tests/reliability/test_long_sequences_metal.py; no tests here): drive the sim backend through `_core` (so the tests can
ask for several thread schedules) and build inputs in the ABI's layouts."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pytest

from flash_attn_cy import _core
from flash_attn_cy.reference import attention_ref, to_float64
from _tolerance import assert_close_to_ref

try:
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover
    bfloat16 = None

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def np_dtype(name: str):
    return {"fp32": np.float32, "fp16": np.float16, "bf16": bfloat16}[name]


def host_view(x: np.ndarray) -> np.ndarray:
    """The buffer `_core` expects: 16-bit types as uint16 bits."""
    return x.view(np.uint16) if x.dtype.itemsize == 2 else x


def require_sim():
    ok, why = _core.backend_available("sim")
    if not ok:
        pytest.skip(f"sim backend unavailable: {why}")


def sim_forward(q, k, v, *, lse_shape, schedules: int = 2, backend: str = "sim", **options):
    """Run the forward on `backend` via `_core.forward`; returns (out, lse). q/k/v are 4-d ABI layouts."""
    out = np.zeros(q.shape, dtype=q.dtype)
    lse = np.zeros(lse_shape, dtype=np.float32)
    options.setdefault("softmax_scale", 1.0 / math.sqrt(q.shape[-1]))
    if backend == "sim":
        options["sim_schedules"] = schedules
    _core.forward(backend, dtype_name(q.dtype), host_view(q), host_view(k), host_view(v), host_view(out), lse,
                  **options)
    return out, lse


def describe_forward(q, k, v, lse_shape=None, **options):
    """The forward dispatch plan (parsed JSON) for these inputs."""
    out = np.zeros(q.shape, dtype=q.dtype)
    lse = None if lse_shape is None else np.zeros(lse_shape, dtype=np.float32)
    options.setdefault("softmax_scale", 1.0 / math.sqrt(q.shape[-1]))
    return _core.describe_plan("forward", "sim", dtype_name(q.dtype), host_view(q), host_view(k), host_view(v),
                               host_view(out), lse, **options)


def dtype_name(dt) -> str:
    dt = np.dtype(dt)
    if dt == np.float32:
        return "float32"
    if dt == np.float16:
        return "float16"
    return "bfloat16"


# ---- Philox4x32-10 dropout mask, written independently of kernels/fa_philox.h from its documented mapping ----
_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def _philox(c0, c1, c2, c3, k0: int, k1: int):
    c = [np.asarray(x, dtype=np.uint64) for x in (c0, c1, c2, c3)]
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for _ in range(10):
        p0 = np.uint64(_M0) * c[0]
        p1 = np.uint64(_M1) * c[2]
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & _MASK32, p1 & _MASK32,
             ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & _MASK32, p0 & _MASK32]
        k0 = (k0 + np.uint64(_W0)) & _MASK32
        k1 = (k1 + np.uint64(_W1)) & _MASK32
    return c


def dropout_keep_mask(seed: int, offset: int, batch: int, nheads: int, seqlen_q: int, seqlen_k: int,
                      p: float) -> np.ndarray:
    """Boolean keep mask (batch, nheads, seqlen_q, seqlen_k): element (b, h, i, j) kept iff word j % 4 of
    Philox(counter = (j / 4, i, b * nheads + h, lo(offset) ^ hi(offset) * W0), key = (lo(seed), hi(seed)))
    is >= floor(p * 2^32)."""
    threshold = min(int(math.floor(p * 2.0 ** 32)), 2 ** 32 - 1)
    b, h, i, j = np.meshgrid(np.arange(batch), np.arange(nheads), np.arange(seqlen_q), np.arange(seqlen_k),
                             indexing="ij")
    c3 = (offset & 0xFFFFFFFF) ^ (((offset >> 32) * _W0) & 0xFFFFFFFF)
    words = _philox(j >> 2, i, b * nheads + h, np.full(j.shape, c3), seed & 0xFFFFFFFF, seed >> 32)
    w = np.choose(j & 3, words)
    return w >= threshold


def lse_close(got, ref64, *, atol: float):
    """LSE agreement: same +inf rows, finite rows within atol (fp32 LSE of the scaled scores)."""
    got = np.asarray(got, dtype=np.float64)
    ref = to_float64(ref64)
    assert np.array_equal(np.isposinf(got), np.isposinf(ref)), "rows without keys must have LSE = +inf"
    fin = np.isfinite(ref)
    if fin.any():
        err = float(np.max(np.abs(got[fin] - ref[fin])))
        assert err <= atol, f"lse: max error {err:.3g} > {atol:.3g}"


def rand(rng: np.random.Generator, shape, dtype: str, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np_dtype(dtype))


def optional(x: Optional[np.ndarray]):
    return None if x is None else np.ascontiguousarray(x)


def check_varlen_causal(rng, seqs_q, seqs_k, *, hq: int, hkv: int, d: int, num_splits: int, kind=None, **run):
    """fp16 causal attention over packed (varlen) sequences of these lengths on the simulator against the float64
    reference (tolerance from the fp16 reference's error) and the LSE. `kind` (vector / fragment / prefill), when
    given, must be the attention kernel the plan picks; `run` goes to sim_forward (backend, schedules)."""
    dtype = "fp16"
    cu_q = np.concatenate([[0], np.cumsum(seqs_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(seqs_k)]).astype(np.int32)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    q, k, v = rand(rng, (tq, hq, d), dtype), rand(rng, (tk, hkv, d), dtype), rand(rng, (tk, hkv, d), dtype)
    scale = d ** -0.5
    opts = dict(softmax_scale=scale, window_left=-1, window_right=0, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                max_seqlen_q=max(seqs_q), max_seqlen_k=max(seqs_k), num_splits=num_splits)
    if kind is not None:
        plan = describe_forward(q[None], k[None], v[None], lse_shape=(1, hq, tq), **opts)
        assert plan["launches"][0]["attention"]["kind"] == kind
    out, lse = sim_forward(q[None], k[None], v[None], lse_shape=(1, hq, tq), **run, **opts)
    kw = dict(softmax_scale=scale, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    ref64, lse64 = attention_ref(q, k, v, return_lse=True, **kw)
    ref_lowp = attention_ref(q, k, v, compute_dtype=np.float16, **kw)
    assert_close_to_ref(out[0], ref64, ref_lowp)
    lse_close(lse[0], lse64, atol=1e-4)
