"""The tolerance rule (shared by the test suite and `python -m flash_attn_cy verify`; part of flash_attn_cy.reference's
API): how far a result may be from the float64 reference, given the error of the reference computed in the input
dtype."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ._reference_dtypes import to_float64


# A result is correct when its error against the float64 reference is at most `rtol_mult` (2) times the error of the
# same reference computed in the input dtype, plus a small floor:
#
#     max|out - ref64| <= rtol_mult * max|ref_lowp - ref64| + floor * max(1, max|ref64|)
#
# as flash-attention's own tests judge their kernels. The floor only matters where the low-precision reference is
# (almost) exact, e.g. one key per query, where the output is a copy of v. Floors are a small fraction of the dtype's
# unit roundoff at 1.0 (fp32: a few dozen ulps, because backends legitimately accumulate in another order than BLAS).
# Never raise them to make a test pass: a real precision problem shows up as a factor, not a floor.

TOLERANCE_FLOORS = {
    "float64": 1e-10,
    "float32": 4e-6,     # eps 1.2e-7
    "float16": 2.5e-4,   # eps 9.8e-4: a quarter ulp
    "bfloat16": 2e-3,    # eps 7.8e-3: a quarter ulp
}


def dtype_name(x) -> str:
    """Canonical name ('float32', 'bfloat16', ...) of a NumPy / ml_dtypes / torch dtype, an array, or an alias."""
    if isinstance(x, type) and issubclass(x, np.generic):
        x = np.dtype(x)
    elif not isinstance(x, (str, np.dtype)) and hasattr(x, "dtype"):
        x = x.dtype
    s = str(x).replace("torch.", "")
    aliases = {"half": "float16", "float": "float32", "double": "float64", "fp16": "float16", "fp32": "float32",
               "fp64": "float64", "bf16": "bfloat16"}
    return aliases.get(s, s)


def tolerance_floor(dtype) -> float:
    name = dtype_name(dtype)
    if name not in TOLERANCE_FLOORS:
        raise ValueError(f"no tolerance floor for dtype {name!r}")
    return TOLERANCE_FLOORS[name]


def _finite_parts(out: np.ndarray, ref: np.ndarray, what: str):
    """Where the reference is infinite (LSE of rows without keys) the result must be the same infinity; returns the
    finite parts of both for the numeric comparison. Raises AssertionError on a mismatch."""
    inf_ref = ~np.isfinite(ref)
    inf_out = ~np.isfinite(out)
    if inf_ref.any() or inf_out.any():
        if np.isnan(out).any():
            raise AssertionError(f"{what}: contains NaN")
        if not np.array_equal(inf_ref, inf_out):
            bad = np.argwhere(inf_ref != inf_out)[:5].tolist()
            raise AssertionError(f"{what}: non-finite values differ from the reference at {bad}")
        if not np.array_equal(out[inf_ref], ref[inf_ref]):
            raise AssertionError(f"{what}: infinities of the wrong sign")
    return out[~inf_ref], ref[~inf_ref]


def max_error(out, ref64, what: str = "out") -> float:
    """max|out - ref64| over finite entries (infinite entries must match exactly); AssertionError on NaN/mismatch."""
    o, r = _finite_parts(to_float64(out), to_float64(ref64), what)
    if np.isnan(o).any():
        raise AssertionError(f"{what}: contains NaN")
    return float(np.max(np.abs(o - r))) if r.size else 0.0


def error_budget(ref64, ref_lowp, *, dtype=None, rtol_mult: float = 2.0, atol_floor: Optional[float] = None):
    """(allowed error, low-precision reference error) under the tolerance rule above.

    ``dtype`` picks the floor (default: the dtype of ``ref_lowp``)."""
    r64 = to_float64(ref64)
    if dtype is None:
        dtype = getattr(ref_lowp, "dtype", "float64")
    floor = tolerance_floor(dtype) if atol_floor is None else float(atol_floor)
    rlp_f, r64_f = _finite_parts(to_float64(ref_lowp), r64, "low-precision reference")
    lowp_err = float(np.max(np.abs(rlp_f - r64_f))) if r64_f.size else 0.0
    scale = max(1.0, float(np.max(np.abs(r64_f)))) if r64_f.size else 1.0
    return rtol_mult * lowp_err + floor * scale, lowp_err
