"""The sim backend runs exactly the plan the C ABI builds (issue 18 items 2 and 6).

The C ABI builds one plan per call (csrc/fa_abi.cpp) and hands it to the simulator executor (csrc/sim_backend.cpp),
which only carries it out. Here the executor's launches are caught at its launch hook (csrc/sim_profile_hook.h, the
one flash_attn_cy.sim.profile uses; this hook records and does not run them) and compared, launch for launch, with
`describe_plan`'s JSON of the same call: kernel, grid, threadgroup, the [[buffer(n)]] indices bound, and the constant
block's index and bytes. tests/objc/test_objc_e2e.py shows the same for the Metal shim, and that both executors get
the very plan object the ABI built.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from _metal_support import host_view, rand, require_sim
from flash_attn_cy import _core

# csrc/sim_profile_hook.h: fasim_launch_hook, declared once for ctypes in flash_attn_cy.sim._profile
from flash_attn_cy.sim._profile import _HOOK_T  # noqa: E402


class _Recorder:
    """The sim executor's launches, as its launch hook receives them."""

    def __init__(self):
        self.launches = []
        self.hook = _HOOK_T(self._launch)

    def _launch(self, kernel, grid, threads, nbuf, bidx, bdata, blen, bwr, nbytes, cidx, cdata, clen, nconst, kidx,
                kname, ktype, kvalue, kbytes, schedules, cancel, useful, call_id, out, outlen):
        try:
            self.launches.append({
                "kernel": kernel.decode(), "grid": [grid[i] for i in range(3)],
                "threads": [threads[i] for i in range(3)],
                "indices": sorted(bidx[i] for i in range(nbuf)),
                "constants": [(cidx[i], ctypes.string_at(cdata[i], clen[i]).hex()) for i in range(nbytes)],
                "call": int(call_id)})
            ctypes.memmove(out, b"\0", 1)  # no faults: the launch is recorded, not run
            return 0
        except BaseException as e:  # noqa: BLE001 - nothing may unwind into the C caller
            text = f"{type(e).__name__}: {e}".encode()[: max(0, outlen - 1)] + b"\0"
            ctypes.memmove(out, text, len(text))
            return -1

    def __enter__(self):
        _core._sim_set_launch_hook(ctypes.cast(self.hook, ctypes.c_void_p).value)
        return self

    def __exit__(self, *exc):
        _core._sim_set_launch_hook(0)


def _planned(plan):
    return [{"kernel": l["kernel"], "grid": l["grid"], "threads": l["threads"],
             "indices": sorted(b["index"] for b in l["bindings"]),
             "constants": [(l["constants_index"], l["constants_hex"])] if l["constants_size"] else []}
            for l in plan["launches"]]


def _check(plan, rec):
    ran = [{k: v for k, v in l.items() if k != "call"} for l in rec.launches]
    assert ran == _planned(plan)
    assert len({l["call"] for l in rec.launches}) == 1  # one call, one plan


def _qkv(rng, b, sq, sk, hq, hkv, d, dtype="fp32"):
    return rand(rng, (b, sq, hq, d), dtype), rand(rng, (b, sk, hkv, d), dtype), rand(rng, (b, sk, hkv, d), dtype)


def _dtype(x):
    return {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}.get(x.dtype, "bfloat16")


@pytest.fixture(autouse=True)
def _sim():
    require_sim()


@pytest.mark.parametrize("case", ["prefill_causal", "decode_split", "probs", "fp16_window"])
def test_forward_runs_the_described_plan(case, rng):
    shapes = {"prefill_causal": (2, 37, 45, 4, 2, 64), "decode_split": (2, 1, 700, 8, 2, 64),
              "probs": (1, 9, 13, 2, 2, 32), "fp16_window": (1, 40, 40, 2, 1, 80)}[case]
    b, sq, sk, hq, hkv, d = shapes
    q, k, v = _qkv(rng, *shapes, dtype="fp16" if case == "fp16_window" else "fp32")
    out, lse = np.zeros_like(q), np.zeros((b, hq, sq), np.float32)
    opts = {"softmax_scale": 1 / math.sqrt(d)}
    if case == "prefill_causal":
        opts["window_right"] = 0
    if case == "decode_split":
        opts["num_splits"] = 3
    if case == "probs":
        opts["attn_probs"] = np.zeros((b, hq, sq, sk), np.float32)
    if case == "fp16_window":
        opts.update(window_left=8, window_right=3)
    args = (_dtype(q), host_view(q), host_view(k), host_view(v), host_view(out), lse)
    plan = _core.describe_plan("forward", "sim", *args, **opts)
    with _Recorder() as rec:
        _core.forward("sim", *args, **opts)
    _check(plan, rec)
    kernels = [l["kernel"] for l in plan["launches"]]
    if case == "decode_split":
        assert kernels[1] == "fa_merge_f32" and plan["scratch_bytes"][0] > 0
    if case == "probs":
        assert kernels[-1] == "fa_probs_f32"


def test_backward_runs_the_described_plan(rng):
    b, sq, sk, hq, hkv, d = 1, 21, 30, 4, 2, 32
    q, k, v = _qkv(rng, b, sq, sk, hq, hkv, d)
    out, lse = np.zeros_like(q), np.zeros((b, hq, sq), np.float32)
    _core.forward("cpu", "float32", q, k, v, out, lse, softmax_scale=0.2, window_right=0)
    dout = rand(rng, q.shape, "fp32")
    grads = (np.zeros_like(q), np.zeros_like(k), np.zeros_like(v))
    args = ("float32", dout, q, k, v, out, lse, *grads)
    plan = _core.describe_plan("backward", "sim", *args, softmax_scale=0.2, window_right=0)
    with _Recorder() as rec:
        _core.backward("sim", *args, softmax_scale=0.2, window_right=0)
    _check(plan, rec)
    assert len(plan["launches"]) >= 3  # preprocess, dQ, dK/dV


def test_kvcache_append_runs_the_described_plan(rng):
    b, cap, hq, hkv, d, new = 2, 24, 4, 2, 32, 3
    q = rand(rng, (b, 2, hq, d), "fp32")
    kc, vc = rand(rng, (b, cap, hkv, d), "fp32"), rand(rng, (b, cap, hkv, d), "fp32")
    kn, vn = rand(rng, (b, new, hkv, d), "fp32"), rand(rng, (b, new, hkv, d), "fp32")
    opts = {"seqused_k": np.array([3, 11], np.int32), "softmax_scale": 0.25}
    plan = _core.describe_plan("kvcache", "sim", "float32", q, kc, vc, kn, vn, **opts)
    with _Recorder() as rec:
        _core.kvcache_append("sim", "float32", q, kc, vc, kn, vn, **opts)
    _check(plan, rec)
    assert plan["launches"][0]["kernel"] == "fa_kvcache_append_f32"


def test_the_check_sees_a_different_plan(rng):
    # The comparison is not vacuous: the launches of a call with another split count are not this call's plan.
    b, sq, sk, hq, hkv, d = 1, 1, 900, 4, 1, 64
    q, k, v = _qkv(rng, b, sq, sk, hq, hkv, d)
    out, lse = np.zeros_like(q), np.zeros((b, hq, sq), np.float32)
    args = ("float32", q, k, v, out, lse)
    plan = _core.describe_plan("forward", "sim", *args, softmax_scale=0.125, num_splits=2)
    with _Recorder() as rec:
        _core.forward("sim", *args, softmax_scale=0.125, num_splits=4)
    with pytest.raises(AssertionError):
        _check(plan, rec)
