"""``python -m flash_attn_cy verify``: check every backend present against the float64 reference.

Built-in cases cover each feature of the flash_attn 2.x API (dense and varlen layouts, causal and sliding-window
masks aligned bottom-right, ALiBi per head and per batch, softcap, GQA/MQA, rows that see no key, odd head dims, the
KV cache with rotary and paged caches, dropout and the backward pass where the build has them) in fp32, fp16 and
bf16. Each result is judged by the project's tolerance rule (``flash_attn_cy.reference.error_budget``):

    max|ours - ref64| <= 2 * max|ref_in_dtype - ref64| + floor

A case the build cannot serve (NotImplementedError, a missing function, torch absent for backward) is reported as
``n/a`` with the reason; any other exception or an error over budget is a failure, and the command exits 1.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import reference as ref

DTYPE_NAMES = ("fp32", "fp16", "bf16")


class NotApplicable(Exception):
    """The build or environment cannot run this case (reported as n/a, not as a failure)."""


def numpy_dtype(name: str):
    if name == "bf16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise NotApplicable("bf16 NumPy arrays need ml_dtypes (pip install ml_dtypes)") from e
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"fp32": np.float32, "fp16": np.float16, "fp64": np.float64}[name])


@dataclass
class Case:
    """One verification scenario; sizes are deliberately odd so tile edges are exercised."""
    name: str
    kind: str  # "dense" | "varlen" | "kvcache" | "backward" | "dropout"
    batch: int = 2
    seqlen_q: int = 67
    seqlen_k: int = 67
    nheads: int = 4
    nheads_k: int = 4
    headdim: int = 64
    causal: bool = False
    window: Tuple[int, int] = (-1, -1)
    softcap: float = 0.0
    alibi: Optional[str] = None  # None | "heads" | "batch_heads"
    lens_q: Sequence[int] = ()
    lens_k: Sequence[int] = ()
    input_scale: float = 1.0
    kv: Dict[str, object] = field(default_factory=dict)  # kvcache options
    varlen_backward: bool = False


def builtin_cases(quick: bool) -> List[Case]:
    """The feature grid. ``quick`` keeps one small case per feature (seconds, also under the simulator)."""
    if quick:
        return [
            Case("dense", "dense", 1, 37, 37, 2, 2, 64),
            Case("causal sq<sk", "dense", 2, 29, 45, 2, 2, 40, causal=True),
            Case("causal sq>sk (empty rows)", "dense", 1, 41, 17, 2, 2, 32, causal=True),
            Case("window (7,3)", "dense", 1, 33, 50, 2, 2, 64, window=(7, 3)),
            Case("alibi (b,h) causal", "dense", 2, 31, 31, 2, 2, 64, causal=True, alibi="batch_heads"),
            Case("softcap 2.0", "dense", 1, 33, 33, 2, 2, 64, softcap=2.0, input_scale=2.0),
            Case("GQA 4:1", "dense", 1, 35, 43, 4, 1, 64, causal=True),
            Case("varlen uneven+empty", "varlen", nheads=2, nheads_k=2, headdim=64, causal=True,
                 lens_q=[19, 0, 33, 1], lens_k=[25, 7, 33, 1]),
            # decode has one query row per head: enough heads that the max error is a meaningful statistic
            Case("kvcache decode+rotary", "kvcache", 3, 1, 48, 8, 2, 64, causal=True,
                 kv=dict(seqlen_new=1, cache_seqlens=[5, 40, 0], rotary="interleaved")),
            Case("backward causal GQA", "backward", 1, 23, 31, 4, 2, 64, causal=True),
        ]
    return [
        Case("dense", "dense", 2, 97, 97, 4, 4, 64),
        Case("dense d=128", "dense", 1, 113, 203, 4, 4, 128),
        Case("dense d=59 (odd)", "dense", 2, 61, 75, 3, 3, 59),
        Case("dense d=256", "dense", 1, 45, 77, 2, 2, 256),
        Case("dense sq=1", "dense", 2, 1, 239, 4, 4, 80),
        Case("causal sq<sk", "dense", 2, 61, 203, 4, 4, 96, causal=True),
        Case("causal sq>sk (empty rows)", "dense", 2, 67, 31, 4, 4, 32, causal=True),
        Case("window (16,8)", "dense", 2, 113, 203, 4, 4, 64, window=(16, 8)),
        Case("window (32,0) causal", "dense", 1, 129, 129, 4, 4, 64, causal=True, window=(32, 0)),
        Case("window (0,-1)", "dense", 1, 70, 57, 2, 2, 64, window=(0, -1)),
        Case("alibi (h,)", "dense", 2, 77, 91, 4, 4, 64, alibi="heads"),
        Case("alibi (b,h) causal", "dense", 2, 77, 91, 4, 4, 64, causal=True, alibi="batch_heads"),
        Case("softcap 2.0", "dense", 2, 77, 91, 4, 4, 64, softcap=2.0, input_scale=2.0),
        Case("softcap+alibi+window", "dense", 1, 65, 97, 4, 4, 64, window=(20, 4), softcap=5.0,
             alibi="heads", input_scale=2.0),
        Case("GQA 8:2", "dense", 2, 67, 83, 8, 2, 64, causal=True),
        Case("MQA 6:1", "dense", 1, 67, 83, 6, 1, 128),
        Case("varlen uneven+empty", "varlen", nheads=4, nheads_k=4, headdim=64, causal=True,
             lens_q=[37, 0, 91, 1, 64], lens_k=[45, 13, 91, 1, 130]),
        Case("varlen window GQA", "varlen", nheads=6, nheads_k=2, headdim=80, window=(11, 5),
             lens_q=[50, 3, 77], lens_k=[61, 40, 77]),
        Case("kvcache decode+rotary", "kvcache", 4, 1, 256, 8, 2, 64, causal=True,
             kv=dict(seqlen_new=1, cache_seqlens=[5, 200, 0, 255], rotary="interleaved")),
        Case("kvcache paged+rotary", "kvcache", 2, 3, 64, 4, 4, 64, causal=True,
             kv=dict(seqlen_new=3, cache_seqlens=[17, 40], rotary="half", paged=16)),
        Case("kvcache batch_idx+leftpad", "kvcache", 2, 2, 64, 4, 2, 64, causal=True,
             kv=dict(seqlen_new=2, cache_seqlens=[20, 50], leftpad=[3, 10], batch_idx=[2, 0], cache_batch=3,
                     rotary="half")),
        Case("kvcache no append GQA", "kvcache", 2, 2, 100, 4, 1, 128,
             kv=dict(seqlen_new=0, cache_seqlens=[1, 99])),
        Case("dropout p=0.17", "dropout", 2, 45, 61, 2, 2, 64),
        Case("backward dense", "backward", 2, 37, 37, 2, 2, 64),
        Case("backward causal GQA", "backward", 1, 41, 57, 4, 2, 64, causal=True),
        Case("backward alibi+softcap+window", "backward", 1, 39, 47, 2, 2, 32, window=(9, 2), softcap=3.0,
             alibi="heads", input_scale=2.0),
        Case("backward varlen", "backward", nheads=2, nheads_k=2, headdim=64, causal=True,
             lens_q=[13, 0, 29], lens_k=[17, 5, 29], varlen_backward=True),
    ]


@dataclass
class Result:
    backend: str
    case: str
    dtype: str
    status: str  # "pass" | "FAIL" | "n/a"
    worst: str = ""  # the quantity with the largest err/allowed ratio
    err: float = float("nan")
    allowed: float = float("nan")
    vs_cpu: Optional[float] = None
    note: str = ""
    details: List[Tuple[str, float, float]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------------------------------
# inputs


def _slopes(case: Case, rng) -> Optional[np.ndarray]:
    if case.alibi is None:
        return None
    shape = (case.nheads,) if case.alibi == "heads" else (case.batch, case.nheads)
    return rng.uniform(0.05, 0.6, size=shape).astype(np.float32)


def _randn(rng, shape, dt, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dt)


def _window_kwargs(case: Case) -> dict:
    return dict(causal=case.causal, window_size=case.window, softcap=case.softcap)


# --------------------------------------------------------------------------------------------------------------------
# per-kind runners: each returns a list of (quantity, ours, ref64, ref_lowp, floor_dtype)


def _need(fa, name):
    fn = getattr(fa, name, None)
    if fn is None:
        raise NotApplicable(f"flash_attn_cy.{name} is not in this build")
    return fn


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        raise NotApplicable(f"not implemented: {e}") from e


def _run_dense(fa, case, backend, dtname, rng):
    dt = numpy_dtype(dtname)
    q = _randn(rng, (case.batch, case.seqlen_q, case.nheads, case.headdim), dt, case.input_scale)
    k = _randn(rng, (case.batch, case.seqlen_k, case.nheads_k, case.headdim), dt, case.input_scale)
    v = _randn(rng, (case.batch, case.seqlen_k, case.nheads_k, case.headdim), dt)
    slopes = _slopes(case, rng)
    kw = _window_kwargs(case)
    res = _call(_need(fa, "flash_attn_func"), q, k, v, alibi_slopes=slopes, return_attn_probs=True,
                backend=backend, **kw)
    out, lse = res[0], res[1]
    o64, l64 = ref.attention_ref(q, k, v, alibi_slopes=slopes, return_lse=True, **kw)
    olp, llp = ref.attention_ref(q, k, v, alibi_slopes=slopes, return_lse=True, compute_dtype=dt, **kw)
    return [("out", out, o64, olp, dt), ("lse", lse, l64, llp, np.float32)]


def _cu(lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _run_varlen(fa, case, backend, dtname, rng):
    dt = numpy_dtype(dtname)
    cq, ck = _cu(case.lens_q), _cu(case.lens_k)
    q = _randn(rng, (int(cq[-1]), case.nheads, case.headdim), dt, case.input_scale)
    k = _randn(rng, (int(ck[-1]), case.nheads_k, case.headdim), dt, case.input_scale)
    v = _randn(rng, (int(ck[-1]), case.nheads_k, case.headdim), dt)
    slopes = _slopes(case, rng)
    kw = _window_kwargs(case)
    res = _call(_need(fa, "flash_attn_varlen_func"), q, k, v, cq, ck, max(case.lens_q), max(case.lens_k),
                alibi_slopes=slopes, return_attn_probs=True, backend=backend, **kw)
    out, lse = res[0], res[1]
    o64, l64 = ref.attention_ref(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, alibi_slopes=slopes, return_lse=True,
                                 **kw)
    olp, llp = ref.attention_ref(q, k, v, cu_seqlens_q=cq, cu_seqlens_k=ck, alibi_slopes=slopes, return_lse=True,
                                 compute_dtype=dt, **kw)
    return [("out", out, o64, olp, dt), ("lse", lse, l64, llp, np.float32)]


def _run_kvcache(fa, case, backend, dtname, rng):
    dt = numpy_dtype(dtname)
    opts = case.kv
    b, sq, h, hk, d, cap = case.batch, case.seqlen_q, case.nheads, case.nheads_k, case.headdim, case.seqlen_k
    snew = int(opts.get("seqlen_new", 0))
    lens = np.asarray(opts["cache_seqlens"], dtype=np.int32)
    q = _randn(rng, (b, sq, h, d), dt)
    cache_batch = int(opts.get("cache_batch", b))
    kc = _randn(rng, (cache_batch, cap, hk, d), dt)
    vc = _randn(rng, (cache_batch, cap, hk, d), dt)
    knew = _randn(rng, (b, snew, hk, d), dt) if snew else None
    vnew = _randn(rng, (b, snew, hk, d), dt) if snew else None
    kw = dict(causal=case.causal, window_size=case.window, softcap=case.softcap)
    rot = opts.get("rotary")
    if rot:
        rd = d // 2 if rot == "half" else d
        ang = np.outer(np.arange(cap), 1.0 / 10000 ** (np.arange(rd // 2) * 2.0 / rd))
        kw.update(rotary_cos=np.cos(ang).astype(dt), rotary_sin=np.sin(ang).astype(dt),
                  rotary_interleaved=(rot == "interleaved"))
    if "batch_idx" in opts:
        kw["cache_batch_idx"] = np.asarray(opts["batch_idx"], dtype=np.int32)
    if "leftpad" in opts:
        kw["cache_leftpad"] = np.asarray(opts["leftpad"], dtype=np.int32)
    page = opts.get("paged")
    k_arg, v_arg = kc, vc
    if page:
        nblk = cap // page
        perm = rng.permutation(b * nblk).astype(np.int32)
        block_table = perm.reshape(b, nblk)
        k_arg = np.empty((b * nblk, page, hk, d), dt)
        v_arg = np.empty_like(k_arg)
        for bb in range(b):
            for i in range(nblk):
                k_arg[block_table[bb, i]] = kc[bb, i * page:(i + 1) * page]
                v_arg[block_table[bb, i]] = vc[bb, i * page:(i + 1) * page]
        kw["block_table"] = block_table
    o64, l64, kc64, vc64 = ref.kvcache_ref(q, k_arg, v_arg, knew, vnew, cache_seqlens=lens, return_lse=True, **kw)
    olp, llp, _, _ = ref.kvcache_ref(q, k_arg, v_arg, knew, vnew, cache_seqlens=lens, return_lse=True,
                                     compute_dtype=dt, **kw)
    k_ours, v_ours = k_arg.copy(), v_arg.copy()
    res = _call(_need(fa, "flash_attn_with_kvcache"), q.copy(), k_ours, v_ours, knew, vnew, cache_seqlens=lens,
                return_softmax_lse=True, backend=backend, **kw)
    out, lse = res
    checks = [("out", out, o64, olp, dt), ("lse", lse, l64, llp, np.float32)]
    if snew:
        checks += [("k_cache", k_ours, kc64, kc64.astype(dt), dt), ("v_cache", v_ours, vc64, vc64.astype(dt), dt)]
    return checks


def _torch():
    try:
        import torch
    except ImportError as e:
        raise NotApplicable("backward needs PyTorch (pip install torch)") from e
    return torch


_TORCH_DT = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _run_backward(fa, case, backend, dtname, rng):
    torch = _torch()
    tdt = getattr(torch, _TORCH_DT[dtname])
    varlen = case.varlen_backward
    if varlen:
        cq, ck = _cu(case.lens_q), _cu(case.lens_k)
        qs = (int(cq[-1]), case.nheads, case.headdim)
        ks = (int(ck[-1]), case.nheads_k, case.headdim)
    else:
        qs = (case.batch, case.seqlen_q, case.nheads, case.headdim)
        ks = (case.batch, case.seqlen_k, case.nheads_k, case.headdim)
    q64 = torch.from_numpy(rng.standard_normal(qs) * case.input_scale).to(tdt).double()
    k64 = torch.from_numpy(rng.standard_normal(ks) * case.input_scale).to(tdt).double()
    v64 = torch.from_numpy(rng.standard_normal(ks)).to(tdt).double()
    dout = torch.from_numpy(rng.standard_normal(qs)).to(tdt)
    slopes = _slopes(case, rng)
    kw = _window_kwargs(case)
    rkw = dict(kw)
    if varlen:
        rkw.update(cu_seqlens_q=cq, cu_seqlens_k=ck)

    def grads(compute_dtype, leaf_dtype):
        leaves = [x.detach().clone().to(leaf_dtype).requires_grad_() for x in (q64, k64, v64)]
        o = ref.attention_ref_torch(*leaves, alibi_slopes=slopes, compute_dtype=compute_dtype, **rkw)
        o.backward(dout.to(o.dtype))
        return [x.grad for x in leaves]

    g64 = grads(None, torch.float64)
    glp = grads(tdt, tdt)
    leaves = [x.detach().clone().to(tdt).requires_grad_() for x in (q64, k64, v64)]
    t_alibi = None if slopes is None else torch.from_numpy(slopes)
    if varlen:
        fn = _need(fa, "flash_attn_varlen_func")
        out = _call(fn, *leaves, torch.from_numpy(cq), torch.from_numpy(ck), max(case.lens_q), max(case.lens_k),
                    alibi_slopes=t_alibi, backend=backend, **kw)
    else:
        out = _call(_need(fa, "flash_attn_func"), *leaves, alibi_slopes=t_alibi, backend=backend, **kw)
    if isinstance(out, tuple):
        out = out[0]
    if not getattr(out, "requires_grad", False):
        raise NotApplicable("this build's flash_attn_func output does not track gradients (no autograd)")
    try:
        out.backward(dout)
    except NotImplementedError as e:
        raise NotApplicable(f"backward not implemented: {e}") from e
    ours = [x.grad for x in leaves]
    names = ("dq", "dk", "dv")
    return [(n, o, r64, rlp, dtname) for n, o, r64, rlp in zip(names, ours, g64, glp)]


DROPOUT_SEED = 1234


def _keep_mask(probs, sq, sk) -> np.ndarray:
    """flash_attn marks dropped entries of the returned probabilities by a negative sign."""
    return ~np.signbit(ref.to_float64(probs)[:, :, :sq, :sk])


def _run_dropout(fa, case, backend, dtname, rng):
    """Dropout with a fixed seed. The kept set comes back from return_attn_probs (dropped entries negated, as
    flash_attn marks them); the output must equal the reference with that keep-mask, and the kept fraction must be
    near 1 - p. A backend that cannot return the probabilities (the Metal kernels never materialise them) is checked
    against the mask the cpu backend draws for the same seed: every backend must draw the identical mask."""
    dt = numpy_dtype(dtname)
    p = 0.17
    q = _randn(rng, (case.batch, case.seqlen_q, case.nheads, case.headdim), dt)
    k = _randn(rng, (case.batch, case.seqlen_k, case.nheads_k, case.headdim), dt)
    v = _randn(rng, (case.batch, case.seqlen_k, case.nheads_k, case.headdim), dt)
    fn = _need(fa, "flash_attn_func")
    kw = dict(dropout_p=p, seed=DROPOUT_SEED)
    lse = None
    try:
        out, lse, probs = _call(fn, q, k, v, return_attn_probs=True, backend=backend, **kw)
    except NotApplicable:
        if backend == "cpu":
            raise
        out = _call(fn, q, k, v, backend=backend, **kw)
        try:
            _, _, probs = fn(q, k, v, return_attn_probs=True, backend="cpu", **kw)
        except Exception as e:  # noqa: BLE001
            raise NotApplicable(f"no dropout mask to compare with (cpu backend: {e})") from e
    if probs is None:
        raise NotApplicable("return_attn_probs gives no probabilities with dropout in this build")
    keep = _keep_mask(probs, case.seqlen_q, case.seqlen_k)
    frac = keep.mean()
    sigma = math.sqrt(p * (1 - p) / keep.size)
    if abs(frac - (1 - p)) > 6 * sigma:
        raise AssertionError(f"kept fraction {frac:.4f} is not within 6 sigma of {1 - p}")
    o64, l64 = ref.attention_ref(q, k, v, dropout_mask=keep, dropout_p=p, return_lse=True)
    olp, llp = ref.attention_ref(q, k, v, dropout_mask=keep, dropout_p=p, return_lse=True, compute_dtype=dt)
    checks = [("out", out, o64, olp, dt)]
    if lse is not None:
        checks.append(("lse", lse, l64, llp, np.float32))
    return checks


RUNNERS: Dict[str, Callable] = {
    "dense": _run_dense,
    "varlen": _run_varlen,
    "kvcache": _run_kvcache,
    "backward": _run_backward,
    "dropout": _run_dropout,
}


# --------------------------------------------------------------------------------------------------------------------
# driver


def _judge(checks) -> Tuple[str, float, float, List[Tuple[str, float, float]], str]:
    details = []
    worst, worst_ratio, worst_err, worst_allowed, note = "", -1.0, 0.0, 0.0, ""
    status = "pass"
    for name, ours, r64, rlp, floor_dt in checks:
        try:
            allowed, _ = ref.error_budget(r64, rlp, dtype=floor_dt)
            err = ref.max_error(ours, r64, name)
        except AssertionError as e:
            return "FAIL", float("nan"), float("nan"), details, str(e)
        details.append((name, err, allowed))
        ratio = err / allowed if allowed > 0 else (0.0 if err == 0 else math.inf)
        if ratio > worst_ratio:
            worst, worst_ratio, worst_err, worst_allowed = name, ratio, err, allowed
        if not err <= allowed:
            status = "FAIL"
            note = f"{name} over budget"
    return status, worst_err, worst_allowed, details, note or worst


def run_verify(backends: Sequence[str], quick: bool = False, dtypes: Sequence[str] = DTYPE_NAMES,
               seed: int = 0, progress: Optional[Callable[[Result], None]] = None,
               cases: Optional[Sequence[Case]] = None,
               started: Optional[Callable[[str], None]] = None) -> List[Result]:
    """Every case on every backend in every dtype. ``started(label)`` is called before each one and
    ``progress(result)`` after it (the command line's progress report)."""
    import flash_attn_cy as fa

    results: List[Result] = []
    cases = list(cases) if cases is not None else builtin_cases(quick)
    cpu_out: Dict[Tuple[str, str], object] = {}
    for backend in backends:
        for ci, case in enumerate(cases):
            for di, dtname in enumerate(dtypes):
                rng = np.random.default_rng([seed, ci, di])  # same inputs for every backend
                if started is not None:
                    started(f"{backend} {case.name} {dtname}")
                t0 = time.perf_counter()
                r = Result(backend, case.name, dtname, "pass")
                try:
                    checks = RUNNERS[case.kind](fa, case, backend, dtname, rng)
                    r.status, r.err, r.allowed, r.details, r.note = _judge(checks)
                    r.worst = r.note if r.status == "pass" else ""
                    out_ours = ref.to_float64(checks[0][1])
                    if backend == "cpu":
                        cpu_out[(case.name, dtname)] = out_ours
                    elif (case.name, dtname) in cpu_out:
                        other = cpu_out[(case.name, dtname)]
                        if other.shape == out_ours.shape:
                            r.vs_cpu = float(np.max(np.abs(np.nan_to_num(other - out_ours)))) if other.size else 0.0
                except NotApplicable as e:
                    r.status, r.note = "n/a", str(e)
                except Exception as e:  # noqa: BLE001 - any error of the backend is a failure to report
                    r.status, r.note = "FAIL", f"{type(e).__name__}: {e}"
                r.seconds = time.perf_counter() - t0
                results.append(r)
                if progress is not None:
                    progress(r)
    return results


def format_table(results: Sequence[Result], verbose: bool = False) -> str:
    header = ["backend", "case", "dtype", "max err", "allowed", "vs cpu", "result", "note"]
    rows = []
    for r in results:
        err = "" if math.isnan(r.err) else f"{r.err:.2e}"
        allowed = "" if math.isnan(r.allowed) else f"{r.allowed:.2e}"
        vs = "" if r.vs_cpu is None else f"{r.vs_cpu:.1e}"
        note = r.note if r.status != "pass" else (f"worst: {r.note}" if r.note else "")
        rows.append([r.backend, r.case, r.dtype, err, allowed, vs, r.status, note])
        if verbose:
            for name, e, a in r.details:
                rows.append(["", f"  {name}", "", f"{e:.2e}", f"{a:.2e}", "", "ok" if e <= a else "over", ""])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    widths[-1] = 0  # the note is free text at the end of the line

    def fmt(row):
        return "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths[:-1]] + ["----"])]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def summary(results: Sequence[Result]) -> Tuple[int, int, int]:
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "FAIL" for r in results)
    na = sum(r.status == "n/a" for r in results)
    return passed, failed, na
