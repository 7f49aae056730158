"""The simulator's model of Metal's fast math (issue 19 section 3) and the softcap kernels under it (issue 17 item 13).

Metal compiles kernels with fast math by default. FLASH_ATTN_CY_SIM_FAST_MATH=1 (or `sim run --fast-math`) makes the
simulator apply the MSL specification's fast-math bounds (Table 8.2) to exp/exp2/log/log2/divide/rsqrt/sin/cos...,
compute tanh as (t-1)/(t+1) with t = exp(2x), flush denormals, and report NaN/Inf or out-of-range arguments as
`fast-math-hazard` faults (csrc/sim/include/fasim_fast_math.h).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from _tolerance import assert_close_to_ref
from conftest import available_backends, randn

import flash_attn_cy
import flash_attn_cy.interface as fa
from flash_attn_cy.reference import attention_ref

sim = pytest.importorskip("flash_attn_cy.sim")

SRC = """
#include <metal_stdlib>
using namespace metal;
kernel void f_tanh(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], uint t [[thread_position_in_grid]]) {
    y[t] = tanh(x[t]);
}
kernel void f_precise_tanh(device const float* x [[buffer(0)]], device float* y [[buffer(1)]],
                           uint t [[thread_position_in_grid]]) {
    y[t] = precise::tanh(x[t]);
}
kernel void f_exp2(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], uint t [[thread_position_in_grid]]) {
    y[t] = exp2(x[t]);
}
kernel void f_log(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], uint t [[thread_position_in_grid]]) {
    y[t] = log(x[t]);
}
kernel void f_sin(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], uint t [[thread_position_in_grid]]) {
    y[t] = sin(x[t]);
}
kernel void f_divide(device const float* x [[buffer(0)]], device float* y [[buffer(1)]], uint t [[thread_position_in_grid]]) {
    y[t] = divide(1.0f, x[t]);
}
kernel void f_half_exp(device const half* x [[buffer(0)]], device half* y [[buffer(1)]], uint t [[thread_position_in_grid]]) {
    y[t] = exp(x[t]);
}
"""


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setenv("FLASH_ATTN_CY_SIM_FAST_MATH", "1")


@pytest.fixture
def ieee(monkeypatch):
    monkeypatch.delenv("FLASH_ATTN_CY_SIM_FAST_MATH", raising=False)


def run1(kernel, x, dtype=np.float32):
    x = np.asarray(x, dtype=dtype)
    return sim.run(SRC, kernel, 1, len(x), {0: x, 1: np.zeros(len(x), dtype)}, schedules=1)


def hazards(res):
    return [f for f in res.faults if f.kind == "fast-math-hazard"]


def test_fast_tanh_overflows_like_metal(fast):
    res = run1("f_tanh", [0.5, 50.0])
    assert len(hazards(res)) == 1 and "tanh(50)" in hazards(res)[0].message, res.faults
    assert "precise::tanh" in hazards(res)[0].message  # the message says what to use instead


def test_ieee_mode_is_the_default(ieee):
    res = run1("f_tanh", [0.5, 50.0])
    assert not res.faults and res.buffers[1][1] == 1.0


def test_precise_tanh_is_safe_under_fast_math(fast):
    x = np.array([-1e30, -50.0, -0.5, 0.0, 1e-3, 0.5, 44.0, 50.0, 1e30], np.float32)
    res = run1("f_precise_tanh", x)
    assert not res.faults
    np.testing.assert_allclose(res.buffers[1], np.tanh(x.astype(np.float64)), rtol=2e-7, atol=0)


def test_exp2_error_stays_within_table_8_2_and_is_applied(fast):
    x = np.linspace(-20.0, 20.0, 257).astype(np.float32)
    got = run1("f_exp2", x).buffers[1].astype(np.float64)
    exact = np.exp2(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    bound = 3 + np.floor(np.abs(2 * x.astype(np.float64)))
    assert np.all(np.abs(got - exact) <= (bound + 0.5) * ulp)
    assert np.mean(np.abs(got - exact) > ulp) > 0.9  # the error is modelled, not IEEE results


@pytest.mark.parametrize("kernel,x,what", [
    ("f_exp2", [1.0, 200.0], "exp2(200)"),       # overflow: inf under fast math is undefined
    ("f_exp2", [1.0, float("inf")], "exp2(inf)"),  # a non-finite argument
    ("f_log", [1.0, 0.0], "log(0)"),              # log of x <= 0 is undefined
    ("f_log", [1.0, -2.0], "log(-2)"),
    ("f_sin", [1.0, 4.0], "sin(4)"),              # fast sin is bounded only on [-pi, pi]
    ("f_divide", [2.0, 1e-39], "[2^-126, 2^126]"),   # divisor outside [2^-126, 2^126]
])
def test_hazards_are_reported(fast, kernel, x, what):
    res = run1(kernel, x)
    assert len(hazards(res)) == 1, res.faults
    msg = hazards(res)[0].message
    assert what in msg and "thread (1,0,0)" in msg and "Table 8.2" in msg and ".metal:" in msg, msg


def test_denormal_results_are_flushed(fast, monkeypatch):
    assert run1("f_exp2", [-130.0]).buffers[1][0] == 0.0
    monkeypatch.delenv("FLASH_ATTN_CY_SIM_FAST_MATH")
    assert run1("f_exp2", [-130.0]).buffers[1][0] > 0.0  # IEEE: 2^-130 is a denormal


def test_half_functions_stay_precise(fast):
    # Table 8.3: half precision has no fast variant
    x = np.array([0.5, -3.0, 8.0], np.float16)
    res = run1("f_half_exp", x, np.float16)
    assert not res.faults
    np.testing.assert_array_equal(res.buffers[1], np.exp(x.astype(np.float32)).astype(np.float16))


def test_cli_fast_math_flag(tmp_path):
    src = tmp_path / "k.metal"
    src.write_text(SRC)
    np.save(tmp_path / "x.npy", np.array([0.5, 50.0], np.float32))
    base = [sys.executable, "-P", "-m", "flash_attn_cy.sim", "run", str(src), "--kernel", "f_tanh", "--grid", "1",
            "--threadgroup", "2", "--buffer", f"0={tmp_path / 'x.npy'}", "--buffer", "1=zeros:float32:2",
            "--schedules", "1"]
    env = {k: v for k, v in os.environ.items() if k != "FLASH_ATTN_CY_SIM_FAST_MATH"}
    plain = subprocess.run(base, capture_output=True, text=True, env=env)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    fastm = subprocess.run(base + ["--fast-math"], capture_output=True, text=True, env=env)
    assert fastm.returncode == 1 and "fast-math-hazard: " in fastm.stdout, fastm.stdout + fastm.stderr
    assert "tanh(50)" in fastm.stdout


# ---- the project's kernels: softcap with logits far above 45 / softcap, under fast math ----

def need_sim():
    if "sim" not in available_backends():
        pytest.skip("the sim backend is not available in this build")


@pytest.mark.parametrize("sq,sk,hq,hk", [(40, 70, 2, 1), (1, 90, 4, 1), (7, 60, 8, 1)],
                         ids=["prefill", "vector_decode", "fragment_decode"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_softcap_large_logits_forward_fast_math(rng, fast, sq, sk, hq, hk, dtype):
    need_sim()
    q = randn(rng, (2, sq, hq, 64), dtype)
    k, v = randn(rng, (2, sk, hk, 64), dtype), randn(rng, (2, sk, hk, 64), dtype)
    kw = dict(softcap=0.05, softmax_scale=2.0)  # |score / softcap| up to ~500: fast tanh would be NaN
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="sim", **kw)
    ref, ref_lse = attention_ref(q, k, v, return_lse=True, **kw)
    low = attention_ref(q, k, v, compute_dtype=out.dtype, **kw)
    assert_close_to_ref(out, ref, low, what="out")


def test_softcap_large_logits_kvcache_split_fast_math(rng, fast):
    need_sim()
    q = randn(rng, (2, 1, 4, 64), "fp32")
    kc, vc = randn(rng, (2, 300, 1, 64), "fp32"), randn(rng, (2, 300, 1, 64), "fp32")
    seqlens = np.array([250, 300], np.int32)
    kw = dict(softcap=0.05, softmax_scale=2.0)
    out = flash_attn_cy.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, num_splits=3, backend="sim", **kw)
    for b in range(2):
        n = int(seqlens[b])
        ref = attention_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], **kw)
        low = attention_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], compute_dtype=np.float32, **kw)
        assert_close_to_ref(out[b:b + 1], ref, low, what=f"out[{b}]")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_softcap_large_logits_backward_fast_math(rng, fast, dtype):
    need_sim()
    from _grad_check import check_grads
    check_grads(rng, dtype, (1, 37, 2, 64), (1, 45, 1, 64), backend="sim", softcap=0.05, softmax_scale=2.0)
