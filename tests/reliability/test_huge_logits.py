"""Huge logits (softmax_scale ~1e8 .. 1e30, or bf16 q ~1e5): every path agrees with the float64 reference.

What went wrong before (issue 17, item 6):
- AVX-512 forward: p = exp2(s * mul - m) was one FMA with the exact product, while the running max m is a rounded
  product; the difference (half an ulp of m: 32 at 1e9) went into exp2 -> weights of 2^32, inf, NaN.
- Backward, all CPU paths and the simulator: exp(score - lse) with a positive exponent (rounding of huge scores and
  of the fp32 LSE) -> inf in dV; the fp32 LSE too coarse for the backward's own scores (wrong P); and
  dS = P (dP - D) cancelling to rounding noise times softmax_scale where P ~ 1 (dQ errors in the hundreds where the
  exact gradient is 0).

Tolerance: the project's rule (tests/_tolerance.py) with the low-precision reference computed in the input dtype.
That reference forms q * softmax_scale in the dtype, which overflows at some of these scales (fp16 at 1e8); there the
baseline is the exact result rounded to the dtype instead: the least error any implementation storing that dtype can
have (never looser than the usual rule).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _cpu_isa import cpu_isa_in_use, isa  # noqa: E402,F401
from _tolerance import assert_close_to_ref  # noqa: E402
from conftest import available_backends, to_torch  # noqa: E402

import flash_attn_cy  # noqa: E402
import flash_attn_cy.interface as fa  # noqa: E402
from flash_attn_cy import backward  # noqa: E402
from flash_attn_cy.reference import attention_ref, attention_ref_torch, round_to  # noqa: E402

DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": None}
PATHS = ["cpu-avx512", "cpu-avx2", "cpu-portable", "sim"]


def np_dtype(name):
    if name == "bf16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return DTYPES[name]


@pytest.fixture
def path(request, monkeypatch):
    """cpu with the runtime-selected kernels (AVX-512 here), with the AVX2 or the portable ones, or the simulator."""
    p = request.param
    if p in ("cpu-portable", "cpu-avx2"):
        monkeypatch.setenv("FLASH_ATTN_CY_CPU_ISA", p[4:])
    else:
        monkeypatch.delenv("FLASH_ATTN_CY_CPU_ISA", raising=False)
    backend = "sim" if p == "sim" else "cpu"
    if backend not in available_backends():
        pytest.skip(f"the {backend} backend is not available in this build")
    if p == "cpu-avx2" and cpu_isa_in_use() != "avx2":
        pytest.skip("this CPU cannot run the avx2 kernels (AVX2 needs AVX2+FMA+F16C)")
    return backend


# (softmax_scale, q magnitude): scale 1e8 and 1e30 with unit q, default scale with q ~1e5 (1e4 for fp16, whose
# largest value is 65504), and a negative scale (the softmax then follows the smallest q·k).
CASES = {"scale_1e8": (1e8, 1.0), "scale_1e30": (1e30, 1.0), "q_1e5": (None, 1e5), "scale_neg_1e8": (-1e8, 1.0)}


def inputs(rng, dtype, sq, sk, d, qmag, hq=2, hk=1):
    dt = np_dtype(dtype)
    if dtype == "fp16":
        qmag = min(qmag, 1e4)
    q = (rng.standard_normal((2, sq, hq, d)) * qmag).astype(dt)
    k = rng.standard_normal((2, sk, hk, d)).astype(dt)
    v = rng.standard_normal((2, sk, hk, d)).astype(dt)
    dout = rng.standard_normal((2, sq, hq, d)).astype(dt)
    return q, k, v, dout


def baseline(low, ref64, dtype):
    """The low-precision reference where it is finite, else the exact result rounded to the dtype (see above)."""
    low64 = np.asarray(low, dtype=np.float64) if not hasattr(low, "numpy") else low.numpy()
    ok = np.isfinite(low64) | ~np.isfinite(np.asarray(ref64, dtype=np.float64))
    return low if ok.all() else round_to(ref64, dtype)


def check_forward(out, lse, q, k, v, dtype, **kw):
    ref, ref_lse = attention_ref(q, k, v, return_lse=True, **kw)
    with np.errstate(all="ignore"):
        low, low_lse = attention_ref(q, k, v, return_lse=True, compute_dtype=np_dtype(dtype), **kw)
    assert_close_to_ref(out, ref, baseline(low.astype(np.float64), ref, np_dtype(dtype)), dtype=np_dtype(dtype),
                        what="out")
    if lse is not None:
        assert_close_to_ref(lse, ref_lse, baseline(low_lse, ref_lse, np.float32), dtype=np.float32, what="lse")


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", [(20, 37, 32, {}), (70, 150, 64, dict(causal=True)), (1, 300, 64, {})],
                         ids=["prefill", "causal_tiles", "decode"])
def test_forward_huge_logits(rng, path, dtype, case, shape):
    scale, qmag = CASES[case]
    sq, sk, d, kw = shape
    q, k, v, _ = inputs(rng, dtype, sq, sk, d, qmag)
    out, lse, _ = fa.flash_attn_func(q, k, v, softmax_scale=scale, return_attn_probs=True, backend=path, **kw)
    check_forward(out, lse, q, k, v, dtype, softmax_scale=scale, **kw)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kvcache_huge_logits(rng, path, dtype):
    q, k, v, _ = inputs(rng, dtype, 1, 90, 64, 1.0, hq=4, hk=1)
    seqlens = np.array([50, 90], np.int32)
    out = flash_attn_cy.flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens, softmax_scale=1e8, backend=path)
    for b in range(2):
        n = int(seqlens[b])
        ref = attention_ref(q[b:b + 1], k[b:b + 1, :n], v[b:b + 1, :n], softmax_scale=1e8)
        assert_close_to_ref(out[b:b + 1], ref, round_to(ref, np_dtype(dtype)), dtype=np_dtype(dtype),
                            what=f"out[{b}]")


# ALiBi slopes large enough to move the softmax at these scales (the refined rows' exponents carry the distance).
ALIBI_HUGE = np.array([3e7, 1e8], np.float32)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def ref_grads(q, k, v, dout, compute_dtype=None, **kw):
    tq, tk, tv = (to_torch(x).requires_grad_() for x in (q, k, v))
    out = attention_ref_torch(tq, tk, tv, compute_dtype=compute_dtype, **kw)
    out.backward(to_torch(dout).to(out.dtype))
    return [t.grad.detach().to(torch.float64).numpy() for t in (tq, tk, tv)]


def check_large_logits_backward(rng, dtype, scale, backend):
    """Unit-size inputs at a large softmax_scale: forward, then dq/dk/dv against the float64 reference with the
    tolerance of a reference computed in `dtype`."""
    q, k, v, dout = inputs(rng, dtype, 40, 50, 40, 1.0)
    out, lse, _ = fa.flash_attn_func(q, k, v, softmax_scale=scale, return_attn_probs=True, backend=backend)
    grads = backward(dout, q, k, v, out, lse, softmax_scale=scale, backend=backend)
    g64 = ref_grads(q, k, v, dout, softmax_scale=scale)
    glow = ref_grads(q, k, v, dout, compute_dtype=TORCH_DTYPES[dtype], softmax_scale=scale)
    for name, ours, r64, rlow, like in zip(("dq", "dk", "dv"), grads, g64, glow, (q, k, v)):
        assert_close_to_ref(ours, r64, baseline(rlow, r64, like.dtype), dtype=like.dtype, what=name)


@pytest.mark.parametrize("path", ["cpu-avx512", "cpu-avx2", "cpu-portable"], indirect=True)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kw", [{}, dict(causal=True), dict(softcap=1e9), dict(deterministic=True)],
                         ids=["plain", "causal", "softcap", "deterministic"])
def test_backward_huge_logits_cpu(rng, path, dtype, case, kw):
    # q ~1e5 runs in bf16 (the reported case). In fp32/fp16 it is a precision limit, not an overflow: dK sums terms
    # ~1e4 times larger than itself, so its rounding (order-dependent) is a few times the reference's own there.
    if case == "q_1e5" and dtype != "bf16":
        pytest.skip("q ~1e5 gradients are checked in bf16 (see the comment)")
    scale, qmag = CASES[case]
    q, k, v, dout = inputs(rng, dtype, 70, 90, 40, qmag)
    fkw = {key: val for key, val in kw.items() if key != "deterministic"}
    out, lse, _ = fa.flash_attn_func(q, k, v, softmax_scale=scale, return_attn_probs=True, backend=path, **fkw)
    check_forward(out, lse, q, k, v, dtype, softmax_scale=scale, **fkw)
    grads = backward(dout, q, k, v, out, lse, softmax_scale=scale, backend=path, **kw)
    g64 = ref_grads(q, k, v, dout, softmax_scale=scale, **fkw)
    glow = ref_grads(q, k, v, dout, compute_dtype=TORCH_DTYPES[dtype], softmax_scale=scale, **fkw)
    for name, ours, r64, rlow, like in zip(("dq", "dk", "dv"), grads, g64, glow, (q, k, v)):
        assert_close_to_ref(ours, r64, baseline(rlow, r64, like.dtype), dtype=like.dtype, what=name)


@pytest.mark.parametrize("math", ["ieee", "fast_math"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kw", [{}, dict(causal=True), dict(softcap=1e9), dict(alibi_slopes=ALIBI_HUGE)],
                         ids=["plain", "causal", "softcap", "alibi"])
def test_backward_huge_logits_sim(rng, monkeypatch, math, dtype, case, kw):
    # The Metal kernels against the float64 reference, as the CPU test above (the kernels are always deterministic),
    # in IEEE and in the simulator's model of Metal's fast math.
    # Before the fix, dQ/dK were wrong there: the forward's fp32 LSE did not match the kernels' own rounding of
    # scores this large (P = exp2(s - lse2) anything from 2^-64 to 1), and D = dO.O cancelled against dP.
    if "sim" not in available_backends():
        pytest.skip("the sim backend is not available in this build")
    if math == "fast_math":
        monkeypatch.setenv("FLASH_ATTN_CY_SIM_FAST_MATH", "1")
    else:
        monkeypatch.delenv("FLASH_ATTN_CY_SIM_FAST_MATH", raising=False)
    scale, qmag = CASES[case]
    q, k, v, dout = inputs(rng, dtype, 40, 50, 40, qmag)
    out, lse, _ = fa.flash_attn_func(q, k, v, softmax_scale=scale, return_attn_probs=True, backend="sim", **kw)
    check_forward(out, lse, q, k, v, dtype, softmax_scale=scale, **kw)
    grads = backward(dout, q, k, v, out, lse, softmax_scale=scale, backend="sim", **kw)
    if case == "q_1e5" and dtype == "fp16":
        # A precision limit, not an overflow (see test_backward_huge_logits_cpu): dK sums terms ~1e4 times larger
        # than itself, rounded in an order of its own. The gradients must still be finite.
        assert all(np.isfinite(g.astype(np.float64)).all() for g in grads)
        return
    g64 = ref_grads(q, k, v, dout, softmax_scale=scale, **kw)
    glow = ref_grads(q, k, v, dout, compute_dtype=TORCH_DTYPES[dtype], softmax_scale=scale, **kw)
    for name, ours, r64, rlow, like in zip(("dq", "dk", "dv"), grads, g64, glow, (q, k, v)):
        assert_close_to_ref(ours, r64, baseline(rlow, r64, like.dtype), dtype=like.dtype, what=name)


def test_backward_sim_refines_small_lse_rows_next_to_huge_ones():
    # bf16 q ~1e5 with ALiBi slopes ~1e7 (the diagonal key wins every row): in a few rows q·k of the diagonal key
    # cancels to |LSE| < 64 although its terms are ~1e5, so such a row was not refined and its P carried the fp32
    # rounding of those terms (dK 2.7x, dV 1.4x over the tolerance with this draw). Every row of a threadgroup that
    # refines one is now refined (FA_BWD_REFINED_LSE2), as the CPU refines every row of such a call.
    if "sim" not in available_backends():
        pytest.skip("the sim backend is not available in this build")
    rng = np.random.default_rng(1005)
    q, k, v, dout = inputs(rng, "bf16", 40, 50, 40, 1e5)
    kw = dict(alibi_slopes=ALIBI_HUGE)
    out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, backend="sim", **kw)
    assert (np.abs(lse) < 64).any() and (np.abs(lse) > 64).any()  # both kinds of rows, in one threadgroup
    grads = backward(dout, q, k, v, out, lse, backend="sim", **kw)
    g64 = ref_grads(q, k, v, dout, **kw)
    glow = ref_grads(q, k, v, dout, compute_dtype=torch.bfloat16, **kw)
    for name, ours, r64, rlow, like in zip(("dq", "dk", "dv"), grads, g64, glow, (q, k, v)):
        assert_close_to_ref(ours, r64, baseline(rlow, r64, like.dtype), dtype=like.dtype, what=name)


@pytest.mark.parametrize("math", ["ieee", "fast_math"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("scale", [10.0, 30.0, 100.0])
def test_backward_large_logits_sim(rng, monkeypatch, math, dtype, scale):
    # Large, not huge, logits (|LSE| ~300 .. 3000): the fp32 LSE's unit and the forward's different rounding of the
    # scores (softmax_scale folded into Q) gave fp32 dV errors above the float32 reference's own until these rows
    # were refined too (FA_BWD_REFINE_LSE2, kernels/fa_bwd_params.h).
    if "sim" not in available_backends():
        pytest.skip("the sim backend is not available in this build")
    # fp32 dQ/dK were 1-3x over the tolerance at scales 10-300 depending on the data (IEEE and fast math alike; these
    # tests' own draws hid it in IEEE mode): P carried scale times the fp32 rounding of q·k. Refined rows now form q·k
    # in two exact-split parts (fa_bwd_products_split, kernels/fa_bwd_refine.h). Two draws, the error being data dependent.
    if math == "fast_math":
        monkeypatch.setenv("FLASH_ATTN_CY_SIM_FAST_MATH", "1")
    else:
        monkeypatch.delenv("FLASH_ATTN_CY_SIM_FAST_MATH", raising=False)
    for _ in range(2):
        check_large_logits_backward(rng, dtype, scale, "sim")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("scale", [10.0, 30.0, 100.0, 1e3, 1e8])
def test_backward_large_logits_cpu(rng, isa, dtype, scale):
    # Large, not huge, logits (|LSE| ~100 .. 3000) on the CPU backward, on every ISA path (the `isa` fixture).
    # With rows refined only above |LSE| 1024 the fp32 dV missed the float32 reference's error at scales 20 and 30
    # (the fp32 LSE's unit there); the CPU now refines from the same threshold as the Metal kernels
    # (FA_BWD_REFINE_LSE2). Then fp32 dQ/dK were still 1-3x over the tolerance at scales 10-300, depending on the
    # data: P = exp(scale * q·k - LSE) carried scale times the fp32 rounding of q·k, the float32 reference's own
    # error source, so each was one more draw of the same noise. Refined rows now form q·k in double
    # (cpu_backward.cpp, refined_scores). The error is data dependent, hence several draws.
    for _ in range(4):
        check_large_logits_backward(rng, dtype, scale, "cpu")
