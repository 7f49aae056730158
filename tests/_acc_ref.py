"""An independent float64 attention written for the acceptance tests (plain torch float64 math, no shared code with
flash_attn_cy.reference), plus the tolerance assertion of BRIEF.md:

    err(ours vs exact) <= 2 * err(low-precision reference vs exact) + floor * max(1, max|exact|)

The low-precision reference is flash_attn_cy.reference computed in the input dtype (what flash-attention's tests do).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from flash_attn_cy import reference as R


def t64(x) -> torch.Tensor:
    """Anything (NumPy incl. bfloat16, torch) as a float64 torch tensor (differentiable for torch inputs)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float64).cpu()
    return torch.from_numpy(np.asarray(x).astype(np.float64))


def visible(sq: int, sk: int, causal: bool, window=(-1, -1)) -> torch.Tensor:
    """(sq, sk) bool: query i sees key j (bottom-right aligned, flash_attn 2.x)."""
    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def attn64(q, k, v, *, scale=None, causal=False, window=(-1, -1), softcap=0.0, alibi=None):
    """Dense (b, sq, h, d) attention in float64: returns (out (b, sq, h, d), lse (b, h, sq)).
    Rows that see no key give 0 and lse +inf."""
    q, k, v = t64(q), t64(k), t64(v)
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    k = k.repeat_interleave(h // hk, dim=2)
    v = v.repeat_interleave(h // hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if alibi is not None:
        sl = t64(alibi)
        sl = sl.reshape(1, h) if sl.ndim == 1 else sl
        dist = (torch.arange(sq)[:, None] + sk - sq - torch.arange(sk)[None, :]).abs().to(torch.float64)
        s = s - sl[:, :, None, None] * dist
    mask = visible(sq, sk, causal, window)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    p = torch.nan_to_num(p, nan=0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    lse = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf")))
    return out, lse


def varlen64(q, k, v, cu_q, cu_k, **kw):
    """Varlen through attn64 sequence by sequence: (out (total_q, h, d), lse (h, total_q))."""
    q, k, v = t64(q), t64(k), t64(v)
    cu_q = [int(x) for x in np.asarray(cu_q)]
    cu_k = [int(x) for x in np.asarray(cu_k)]
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("inf"), dtype=torch.float64)
    for b in range(len(cu_q) - 1):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if cu_q[b + 1] == cu_q[b]:
            continue
        kw_b = dict(kw)
        if kw_b.get("alibi") is not None:
            a = t64(kw_b["alibi"])
            kw_b["alibi"] = a[b] if a.ndim == 2 else a
        o, l = attn64(q[qs][None], k[ks][None], v[ks][None], **kw_b)
        out[qs] = o[0]
        lse[:, qs] = l[0]
    return out, lse


def assert_rule(out, exact64, lowp_ref, dtype, what="out", mult=2.0):
    """The BRIEF.md tolerance rule. `exact64`: float64 truth; `lowp_ref`: reference computed in the input dtype."""
    o = t64(out).detach().numpy()
    e = t64(exact64).detach().numpy()
    assert o.shape == e.shape, f"{what}: shape {o.shape} != expected {e.shape}"
    inf_e = ~np.isfinite(e)
    assert np.array_equal(~np.isfinite(o), inf_e), f"{what}: infinities differ"
    assert not np.isnan(o).any(), f"{what}: NaN"
    allowed, lowp_err = R.error_budget(e, lowp_ref, dtype=dtype, rtol_mult=mult)
    err = float(np.max(np.abs(np.where(inf_e, 0, o) - np.where(inf_e, 0, e)))) if o.size else 0.0
    assert err <= allowed, f"{what}: error {err:.3g} > allowed {allowed:.3g} (lowp ref err {lowp_err:.3g}, {dtype})"
    return err
