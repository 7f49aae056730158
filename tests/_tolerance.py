"""The project's single tolerance rule for comparing a backend against the references.

A result is correct when its error against the float64 reference is at most ``rtol_mult`` (2) times the error of the
same reference computed in the input dtype, plus a small absolute floor:

    max|out - ref64| <= rtol_mult * max|ref_lowp - ref64| + floor

This is how flash-attention's own tests judge their kernels: a kernel may be as inexact as an honest computation in
its precision, no more. The floor only matters where the low-precision reference happens to be (almost) exact, e.g.
one key per query, where the output is a copy of v. It is scaled by max(1, max|ref64|) so that it is a relative floor
for large values and absolute for small ones.

Floors per dtype, chosen as a small fraction of the dtype's unit roundoff at 1.0 (fp32: a few dozen ulps, because
the backends' fp32 accumulation order legitimately differs from NumPy's BLAS):

    float64   1e-10
    float32   4e-6     (eps 1.2e-7)
    float16   2.5e-4   (eps 9.8e-4: a quarter ulp)
    bfloat16  2e-3     (eps 7.8e-3: a quarter ulp)

Never raise these to make a test pass: a real precision problem shows up as a factor, not a floor.
"""
from __future__ import annotations

import numpy as np

FLOORS = {
    "float64": 1e-10,
    "float32": 4e-6,
    "float16": 2.5e-4,
    "bfloat16": 2e-3,
}


def _dtype_name(x) -> str:
    """Name of a NumPy / ml_dtypes / torch dtype as one of the FLOORS keys."""
    s = str(getattr(x, "dtype", x))
    s = s.replace("torch.", "")
    if s in ("bf16",):
        return "bfloat16"
    aliases = {"half": "float16", "float": "float32", "double": "float64", "fp16": "float16", "fp32": "float32",
               "fp64": "float64"}
    return aliases.get(s, s)


def floor_for(dtype) -> float:
    name = _dtype_name(dtype)
    if name not in FLOORS:
        raise ValueError(f"no tolerance floor for dtype {name!r}")
    return FLOORS[name]


def as_f64(x) -> np.ndarray:
    """float64 NumPy copy of a NumPy array (any float dtype incl. bfloat16) or a torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        return x.double().numpy()
    return np.asarray(x).astype(np.float64)


def _split_inf(out, ref, what):
    """Positions where the reference is +-inf (rows without keys in an LSE) must match exactly; return finite parts."""
    inf_ref = ~np.isfinite(ref)
    if inf_ref.any() or (~np.isfinite(out)).any():
        if not np.array_equal(inf_ref, ~np.isfinite(out)):
            bad = np.argwhere(inf_ref != ~np.isfinite(out))[:5].tolist()
            raise AssertionError(f"{what}: non-finite values differ from the reference at {bad}")
        if not np.array_equal(out[inf_ref], ref[inf_ref]):
            raise AssertionError(f"{what}: infinities of the wrong sign")
    return out[~inf_ref], ref[~inf_ref]


def error_budget(ref64, ref_lowp, *, dtype=None, rtol_mult: float = 2.0, atol_floor: float | None = None):
    """The allowed max abs error: rtol_mult * max|ref_lowp - ref64| + floor * max(1, max|ref64|)."""
    r64 = as_f64(ref64)
    rlp = as_f64(ref_lowp)
    if dtype is None:
        dtype = getattr(ref_lowp, "dtype", "float64")
    floor = floor_for(dtype) if atol_floor is None else atol_floor
    rlp_f, r64_f = _split_inf(rlp, r64, "low-precision reference")
    lowp_err = float(np.max(np.abs(rlp_f - r64_f))) if r64_f.size else 0.0
    scale = max(1.0, float(np.max(np.abs(r64_f)))) if r64_f.size else 1.0
    return rtol_mult * lowp_err + floor * scale, lowp_err


def max_error(out, ref64, what: str = "out") -> float:
    o, r = _split_inf(as_f64(out), as_f64(ref64), what)
    if np.isnan(o).any():
        raise AssertionError(f"{what}: contains NaN")
    return float(np.max(np.abs(o - r))) if r.size else 0.0


def assert_close_to_ref(out, out_ref64, out_ref_lowp, *, rtol_mult: float = 2.0, atol_floor: float | None = None,
                        dtype=None, what: str = "out") -> float:
    """Assert the project's tolerance rule (module docstring); returns the error for reporting.

    ``dtype`` picks the floor; by default the dtype of ``out_ref_lowp`` (pass it explicitly when the low-precision
    reference is stored in another dtype, e.g. an fp32 LSE computed from bf16 inputs).
    """
    out_a = as_f64(out)
    ref_a = as_f64(out_ref64)
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
            f"(= {rtol_mult} x low-precision reference error {lowp_err:.3g} + floor for {_dtype_name(dtype)})")
    return err
