"""The project's single tolerance rule, as a test assertion.

    max|out - ref64| <= rtol_mult * max|ref_lowp - ref64| + floor * max(1, max|ref64|)

``ref64`` is the float64 reference, ``ref_lowp`` the same reference computed in the input dtype (both from
``flash_attn_cy.reference``). The rule and its per-dtype floors live in ``flash_attn_cy/reference.py`` (section "the
tolerance rule") so that ``python -m flash_attn_cy verify`` applies exactly the same one:

    float64   1e-10
    float32   4e-6     (eps 1.2e-7: a few dozen ulps, for a different accumulation order than BLAS)
    float16   2.5e-4   (a quarter ulp at 1.0)
    bfloat16  2e-3     (a quarter ulp at 1.0)

Never raise these to make a test pass: a real precision problem shows up as a factor, not a floor.
"""
from __future__ import annotations

from flash_attn_cy.reference import (TOLERANCE_FLOORS, dtype_name, error_budget, max_error, to_float64,  # noqa: F401
                                     tolerance_floor)

as_f64 = to_float64
FLOORS = TOLERANCE_FLOORS


def assert_close_to_ref(out, out_ref64, out_ref_lowp, *, rtol_mult: float = 2.0, atol_floor: float | None = None,
                        dtype=None, what: str = "out") -> float:
    """Assert the tolerance rule; returns the error for reporting.

    ``dtype`` picks the floor; by default the dtype of ``out_ref_lowp`` (pass it explicitly when the low-precision
    reference is stored in another dtype, e.g. an fp32 LSE computed from bf16 inputs).
    """
    import numpy as np

    out_a = to_float64(out)
    ref_a = to_float64(out_ref64)
    if out_a.shape != ref_a.shape:
        raise AssertionError(f"{what}: shape {out_a.shape} != reference shape {ref_a.shape}")
    if dtype is None:
        dtype = getattr(out_ref_lowp, "dtype", getattr(out, "dtype", "float64"))
    allowed, lowp_err = error_budget(ref_a, out_ref_lowp, dtype=dtype, rtol_mult=rtol_mult, atol_floor=atol_floor)
    err = max_error(out_a, ref_a, what)
    if not err <= allowed:
        diff = np.abs(np.nan_to_num(out_a - ref_a, posinf=0.0, neginf=0.0))
        where = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.size else ()
        raise AssertionError(
            f"{what}: max error {err:.3g} at {tuple(int(i) for i in where)} exceeds allowed {allowed:.3g} "
            f"(= {rtol_mult} x low-precision reference error {lowp_err:.3g} + floor for {dtype_name(dtype)})")
    return err
