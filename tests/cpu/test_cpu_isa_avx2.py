"""The AVX2 kernel set of the CPU backend (csrc/cpu/*_avx2.cpp) and FLASH_ATTN_CY_CPU_ISA's choice of kernel set.

The forward and decode grids against the float64 reference run on AVX2 through the `isa` fixture (tests/_cpu_isa.py);
this file checks which set the override and the run-time detection pick (FLASH_ATTN_CY_CPU_HIDE, read once per
process, makes this machine act as one without AVX-512 or AVX2, in a subprocess), and huge logits on the AVX2 path.

Bitwise agreement: a machine without AVX-512 (auto) and FLASH_ATTN_CY_CPU_ISA=avx2 run the same kernels and agree
bit for bit. AVX2 and AVX-512 do not: bf16 (AVX-512 multiplies bf16 pairs with vdpbf16ps and rounds P to bf16,
AVX2 widens to fp32) and fp32/fp16 (the same products and exp2 polynomial, but AVX2 rounds s*scale before it
subtracts the row max, AVX-512 fuses the two, so P differs in the last bit); AVX2 and
portable do not either (std::exp2, other summation order).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _cpu_isa import cpu_isa_in_use, isa  # noqa: F401 (the fixture)
from _paths import TESTS
from _tolerance import assert_close_to_ref
from conftest import DTYPES, randn

fa = pytest.importorskip("flash_attn_cy")
ref = pytest.importorskip("flash_attn_cy.reference")

HERE = os.path.dirname(os.path.abspath(__file__))


def _best_isa(monkeypatch) -> str:
    monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA", raising=False)
    return cpu_isa_in_use()


def _cpu_can(monkeypatch, value: str) -> bool:
    order = ["portable", "avx2", "avx512"]
    return order.index(value) <= order.index(_best_isa(monkeypatch))


@pytest.mark.parametrize("value", ["portable", "avx2", "avx512"])
def test_override_picks_the_kernel_set(monkeypatch, value):
    if not _cpu_can(monkeypatch, value):
        pytest.skip(f"this CPU cannot run the {value} kernels")
    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", value)
    desc = fa.backends()["cpu"]["description"]
    assert cpu_isa_in_use() == value, desc
    assert "forced by FLASH_ATTN_CY_CPU_ISA" in desc


@pytest.mark.parametrize("value", ["AVX2", "sse4", "avx-512", "sve"])
def test_unknown_value_keeps_the_best_set(monkeypatch, value):
    best = _best_isa(monkeypatch)
    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", value)
    assert cpu_isa_in_use() == best
    assert "forced" not in fa.backends()["cpu"]["description"]


# A fresh interpreter with some CPU features hidden: prints the kernel set in use and, with OUT, the outputs of a
# forward and a decode call per dtype.
CHILD = r"""
import json, sys, warnings
import numpy as np
warnings.simplefilter("always")
caught = []
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import flash_attn_cy as fa
    caught = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
sys.path[:0] = [{here!r}, {tests!r}]
from _cpu_isa import cpu_isa_in_use
from test_cpu_isa_avx2 import run_cases
res = dict(isa=cpu_isa_in_use(), desc=fa.backends()["cpu"]["description"], warnings=caught)
if {out!r}:
    np.savez({out!r}, **run_cases())
print(json.dumps(res))
"""


def run_cases() -> dict:
    """A forward (lane layout, causal, GQA) and a decode call per dtype, fixed inputs and 2 threads."""
    fa.set_num_threads(2)
    rng = np.random.default_rng(7)
    outs = {}
    for dt in ("fp32", "fp16", "bf16"):
        q, k, v = randn(rng, (1, 150, 4, 72), dt), randn(rng, (1, 190, 2, 72), dt), randn(rng, (1, 190, 2, 72), dt)
        outs[f"fwd_{dt}"] = np.asarray(fa.flash_attn_func(q, k, v, causal=True, backend="cpu")).view(np.uint8)
        qd = randn(rng, (2, 1, 8, 64), dt)
        kc, vc = randn(rng, (2, 700, 2, 64), dt), randn(rng, (2, 700, 2, 64), dt)
        outs[f"dec_{dt}"] = np.asarray(fa.flash_attn_with_kvcache(qd, kc, vc, backend="cpu")).view(np.uint8)
    return outs


def _child(hide: str, isa_value, out: str = "") -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["FLASH_ATTN_CY_CPU_HIDE"] = hide
    env.pop("FLASH_ATTN_CY_CPU_ISA", None)
    if isa_value is not None:
        env["FLASH_ATTN_CY_CPU_ISA"] = isa_value
    r = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, tests=str(TESTS), out=out)], env=env, capture_output=True,
                       text=True, timeout=300, cwd=HERE)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_without_avx512_the_avx2_kernels_are_chosen_and_match_forced_avx2(monkeypatch, tmp_path):
    if not _cpu_can(monkeypatch, "avx2"):
        pytest.skip("this CPU has no AVX2+FMA+F16C")
    out = str(tmp_path / "auto.npz")
    res = _child("avx512", None, out)
    assert res["isa"] == "avx2", res
    assert res["warnings"] == [], res
    got = np.load(out)
    # the same kernels here, forced: bit-identical results
    monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", "avx2")
    want = run_cases()
    for name, w in want.items():
        assert np.array_equal(got[name], w), name


def test_without_avx2_the_portable_kernels_are_chosen(monkeypatch):
    res = _child("avx2", None)
    assert res["isa"] == "portable", res
    assert res["warnings"] == [], res


@pytest.mark.parametrize("hide,value,fallback", [("avx512", "avx512", "avx2"), ("avx2", "avx2", "portable"),
                                                 ("avx2", "avx512", "portable")])
def test_forcing_a_set_the_cpu_lacks_falls_back_with_a_warning(monkeypatch, hide, value, fallback):
    if not _cpu_can(monkeypatch, fallback):
        pytest.skip(f"this CPU cannot run the {fallback} kernels")
    res = _child(hide, value)
    assert res["isa"] == fallback, res
    assert f"FLASH_ATTN_CY_CPU_ISA={value} ignored: this CPU cannot run those kernels" in res["desc"]
    assert len(res["warnings"]) == 1, res
    assert f"FLASH_ATTN_CY_CPU_ISA={value!r}: this CPU cannot run the {value} kernels" in res["warnings"][0]


# Huge logits: with softmax_scale 1e10 the row max m is ~1e11 in log2 units, whose ulp (8192) is the size of the
# residue a fused s*scale - m can leave for the max key itself; exp2 of that must not overflow (it would make O inf or
# NaN). Such logits make every row's softmax one-hot, so the float64 reference is exact and any error shows.
# The AVX-512 kernels are left out here: their exp2 overflow is fixed and tested elsewhere.
HUGE = [("fp32", 1.0, 1e10), ("fp16", 1.0, 1e9), ("bf16", 1e5, None), ("bf16", 1.0, 1e10)]


def _check(out, q, k, v, dtype, **kw):
    # The low-precision reference is computed in fp32 (as the kernels compute scores): in fp16/bf16 these logits
    # overflow or lose the argmax, which would make the allowed error meaningless. The floor is the input dtype's.
    out64 = ref.attention_ref(q, k, v, **kw)
    out_lp = ref.attention_ref(q, k, v, compute_dtype=np.float32, **kw)
    assert np.isfinite(np.asarray(out, dtype=np.float64)).all()
    assert_close_to_ref(out, out64, out_lp, dtype=DTYPES[dtype])


@pytest.mark.parametrize("isa", ["avx2", "portable"], indirect=True)
@pytest.mark.parametrize("dtype,qscale,softmax_scale", HUGE)
@pytest.mark.parametrize("causal", [False, True])
def test_huge_logits_forward(rng, isa, dtype, qscale, softmax_scale, causal):
    q = randn(rng, (2, 97, 4, 64), dtype, scale=qscale)
    k, v = randn(rng, (2, 131, 2, 64), dtype), randn(rng, (2, 131, 2, 64), dtype)
    kw = dict(softmax_scale=softmax_scale, causal=causal)
    _check(fa.flash_attn_func(q, k, v, backend="cpu", **kw), q, k, v, dtype, **kw)


@pytest.mark.parametrize("isa", ["avx2", "portable"], indirect=True)
@pytest.mark.parametrize("dtype,qscale,softmax_scale", HUGE)
def test_huge_logits_decode(rng, isa, dtype, qscale, softmax_scale):
    q = randn(rng, (3, 1, 8, 128), dtype, scale=qscale)
    kc, vc = randn(rng, (3, 600, 2, 128), dtype), randn(rng, (3, 600, 2, 128), dtype)
    out = fa.flash_attn_with_kvcache(q, kc, vc, softmax_scale=softmax_scale, backend="cpu")
    _check(out, q, kc, vc, dtype, softmax_scale=softmax_scale)
