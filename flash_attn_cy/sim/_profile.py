"""Work counters and a roofline for the Metal simulator.

    >>> import flash_attn_cy, flash_attn_cy.sim
    >>> with flash_attn_cy.sim.profile() as p:
    ...     out = flash_attn_cy.flash_attn_func(q, k, v, causal=True, backend="sim")
    >>> p.dispatches[0]["device_bytes_read"], p.dispatches[0]["simdgroup_mma"]
    >>> print(p.roofline("M4 Max"))

While a profile is active, every dispatch the simulator runs in this process is counted: the ``sim`` backend's
launches (flash_attn_func & co. with ``backend="sim"``) and :func:`flash_attn_cy.sim.run` calls. The package's own
simulator counts nothing (so it costs nothing when no profile is active): counted dispatches run on a profile build
of the same kernel file instead (compiled once, then cached; it needs a C++ compiler, like ``sim run``). What each
counter means is documented in ``csrc/sim/counters.h`` and ``csrc/sim/include/fasim_counters.h``; the README's
simulator section summarises it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _compile
from .chips import Chip, chip as _chip
from .translate import translate_file

__all__ = ["Profile", "Roofline", "profile", "attention_flops"]

COUNTER_KEYS = (
    "device_bytes_read", "device_bytes_written", "device_load_ops", "device_store_ops", "device_atomic_ops",
    "constant_bytes_read", "constant_load_ops", "threadgroup_bytes_read", "threadgroup_bytes_written",
    "threadgroup_load_ops", "threadgroup_store_ops", "threadgroup_atomic_ops", "simdgroup_mma", "threadgroup_barriers", "simdgroup_barriers", "simdgroup_collectives",
    "threadgroup_memory_bytes", "thread_private_bytes", "threadgroups", "threads_per_threadgroup",
)
FLOP_KEYS = ("mma_fp32", "mma_fp16", "mma_bf16", "fp32", "fp16", "bf16", "transcendental")

_lock = _compile.ForkRenewedLock(threading.RLock)  # held while a profile module compiles (seconds)
_active: List["Profile"] = []


def active() -> bool:
    """True while some profile is active (flash_attn_cy.sim.run then counts its dispatch)."""
    return bool(_active)


class Profile:
    """The dispatches counted while this profile was active, in order: ``dispatches`` is a list of dicts, one per
    dispatch, with the keys ``kernel``, ``grid``, ``threadgroup``, ``faults``, the counters (``device_bytes_read``,
    ``device_bytes_written``, ``device_load_ops``, ``device_store_ops``, ``threadgroup_bytes_read``,
    ``threadgroup_bytes_written``, ``simdgroup_mma``, ``threadgroup_barriers``, ``simdgroup_barriers``,
    ``threadgroup_memory_bytes``, ``thread_private_bytes``, ... see COUNTER_KEYS), ``flops`` (a dict by type, with
    ``mma`` and ``total``), ``buffers`` (per ``[[buffer(n)]]`` index: bytes read and written, loads, stores, atomics)
    and, for the ``sim`` backend, ``call`` and ``useful_flops`` (the attention call it belongs to and that call's
    own work, see :func:`attention_flops`)."""

    def __init__(self) -> None:
        self.dispatches: List[Dict[str, Any]] = []

    def __enter__(self) -> "Profile":
        _activate(self)
        return self

    def __exit__(self, *exc) -> None:
        _deactivate(self)

    def useful_flops(self) -> Optional[float]:
        """The useful flops of the attention calls profiled (each call counted once), or None if none is known."""
        calls: Dict[Any, float] = {}
        for d in self.dispatches:
            if d.get("useful_flops") is not None:
                calls[d.get("call")] = float(d["useful_flops"])
        return sum(calls.values()) if calls else None

    def roofline(self, chip: str, useful_flops: Optional[float] = None) -> "Roofline":
        """The lower bound on the time of the counted work on Apple GPU ``chip`` (e.g. "M4 Max"; see
        flash_attn_cy.sim.chips): per dispatch and in all, compute time (counted flops at the chip's peak rate of
        their type) against memory time (device bytes read and written at the peak bandwidth), whichever is larger.
        ``useful_flops`` (default: that of the attention calls profiled, if any) gives the ratio of useful flops to
        the simdgroup_matrix flops counted."""
        if useful_flops is not None:
            if isinstance(useful_flops, bool) or not isinstance(useful_flops, (int, float)) \
                    or not math.isfinite(useful_flops) or useful_flops < 0:
                raise ValueError(f"useful_flops must be a finite number >= 0, got {useful_flops!r}")
        return Roofline.of(self.dispatches, _chip(chip), float(useful_flops) if useful_flops is not None
                           else self.useful_flops())

    def __repr__(self) -> str:
        return f"<flash_attn_cy.sim.Profile: {len(self.dispatches)} dispatch(es)>"


def profile() -> Profile:
    """A context manager that counts the work of every simulator dispatch run inside it (see the module docstring)."""
    return Profile()


def attention_flops(batch: int, nheads: int, seqlen_q: int, seqlen_k: int, headdim: int, causal: bool = False,
                    window_size: Tuple[int, int] = (-1, -1), backward: bool = False) -> float:
    """The attention's own flops: 4 * headdim per visible (query, key) pair and head (QK^T and PV), 10 * headdim for
    the backward; masked pairs excluded (bottom-right aligned causal / sliding-window masks, as flash_attn). The
    same count the sim backend attaches to its dispatches (csrc/sim_profile_hook.cpp, fa_useful_flops)."""
    for name, val in (("batch", batch), ("nheads", nheads), ("seqlen_q", seqlen_q), ("seqlen_k", seqlen_k),
                      ("headdim", headdim)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ValueError(f"{name} must be an int >= 0, got {val!r}")
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window_size)):
        raise ValueError(f"window_size must be (left, right) ints >= -1 (-1: unbounded), got {window_size!r}")
    left, right = window_size
    if causal:
        right = 0
    off = seqlen_k - seqlen_q
    pairs = 0
    for i in range(seqlen_q):
        lo = 0 if left < 0 else min(max(i + off - left, 0), seqlen_k)
        hi = seqlen_k if right < 0 else min(max(i + off + right + 1, 0), seqlen_k)
        pairs += max(0, hi - lo)
    return float(pairs) * (10.0 if backward else 4.0) * headdim * nheads * batch


# ---- recording --------------------------------------------------------------------------------------------------

def _read_counters(lib: ctypes.CDLL) -> Dict[str, Any]:
    n = lib.fasim_profile_counters(None, 0)
    buf = ctypes.create_string_buffer(n)
    lib.fasim_profile_counters(buf, n)
    text = buf.value.decode()
    return json.loads(text) if text else {}


def record(lib: ctypes.CDLL, kernel: str, grid: Sequence[int], threadgroup: Sequence[int], faults: Sequence[str],
           call: Optional[int] = None, useful_flops: Optional[float] = None,
           constants: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Reads the counters of the launch just made on this thread from profile module ``lib`` and appends the
    dispatch to every active profile (``constants``: the launch's function constants, by name)."""
    c = _read_counters(lib)
    d: Dict[str, Any] = {"kernel": kernel, "grid": tuple(int(x) for x in grid),
                         "threadgroup": tuple(int(x) for x in threadgroup), "faults": list(faults),
                         "counted": bool(c), "constants": dict(constants or {})}
    for k in COUNTER_KEYS:
        d[k] = int(c.get(k, 0))
    flops = {k: int(c.get("flops", {}).get(k, 0)) for k in FLOP_KEYS}
    flops["mma"] = flops["mma_fp32"] + flops["mma_fp16"] + flops["mma_bf16"]
    flops["total"] = flops["mma"] + flops["fp32"] + flops["fp16"] + flops["bf16"] + flops["transcendental"]
    d["flops"] = flops
    d["buffers"] = {int(i): dict(v) for i, v in c.get("buffers", {}).items()}
    d["call"] = call
    d["useful_flops"] = useful_flops
    with _lock:
        for p in _active:
            p.dispatches.append(d)
    return d


# ---- the sim backend's launches (csrc/sim_profile_hook.h) --------------------------------------------------------

_HOOK_T = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_int,
    ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_char_p),
    ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_int,
    ctypes.c_void_p, ctypes.c_double, ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_size_t)

# MTLDataType of a function constant -> its numpy scalar type (translate/function_constants.py MTL_DATA_TYPES; a
# vector type is its scalar's code + components - 1).
_MTL_SCALARS = {3: np.float32, 16: np.float16, 29: np.int32, 33: np.uint32, 37: np.int16, 41: np.uint16,
                45: np.int8, 49: np.uint8, 53: np.bool_, 81: np.int64, 85: np.uint64}


def constant_values(packed: Sequence[Tuple[int, str, int, bytes]]) -> Dict[str, Any]:
    """{name: value} of a launch's function constants, (index, name, MTLDataType, bytes) each (a vector as a list;
    bfloat as its raw 16-bit pattern; an unknown type as the bytes)."""
    out: Dict[str, Any] = {}
    for index, name, mtl, raw in packed:
        key = name or str(index)
        base = max((c for c in _MTL_SCALARS if c <= mtl and mtl - c < 4), default=None)
        if base is None:
            out[key] = np.frombuffer(raw, np.uint16).tolist() if mtl in (121, 122, 123, 124) else bytes(raw)
            continue
        vals = np.frombuffer(raw, _MTL_SCALARS[base]).tolist()
        out[key] = vals[0] if len(vals) == 1 else vals
    return out


def _write_out(out: int, outlen: int, text: str) -> None:
    raw = text.encode(errors="replace")[: max(0, outlen - 1)] + b"\0"
    ctypes.memmove(out, raw, len(raw))


def _backend_launch(kernel, grid, threads, nbuf, bidx, bdata, blen, bwr, nbytes, cidx, cdata, clen, nconst, kidx,
                    kname, ktype, kvalue, kbytes, schedules, cancel, useful, call_id, out,
                    outlen):  # pragma: no cover - exercised through the sim backend
    try:
        name = kernel.decode()
        lib = _project_module(name)
        msg = ctypes.create_string_buffer(1 << 16)
        # the launch's function constants go to the profile module as they came (the package's kernels take no
        # [[threadgroup(n)]] arguments: the last 3 are empty)
        n = lib.fasim_launch(kernel, grid, threads, nbuf, bidx, bdata, None, blen, bwr, nbytes, cidx, cdata, clen,
                             schedules, 0x5EED, 0, 0, 0, 0, msg, len(msg), cancel, nconst, kidx, kname, ktype, kvalue,
                             kbytes, 0, None, None)
        consts = constant_values([(kidx[i], (kname[i] or b"").decode(), ktype[i],
                                   ctypes.string_at(kvalue[i], kbytes[i])) for i in range(nconst)])
        text = msg.value.decode(errors="replace")
        if n < 0:
            _write_out(out, outlen, text)
            return -1
        g = [grid[i] for i in range(3)]
        t = [threads[i] for i in range(3)]
        faults = [ln.replace("\t", ": ", 1) for ln in text.splitlines() if ln]
        record(lib, name, g, t, faults, call=int(call_id), useful_flops=float(useful), constants=consts)
        _write_out(out, outlen, text)
        return n
    except BaseException as e:  # noqa: BLE001 - nothing may unwind into the C caller
        _write_out(out, outlen, f"{type(e).__name__}: {e}")
        return -1


_hook = _HOOK_T(_backend_launch)


def _activate(p: Profile) -> None:
    from .. import _core
    with _lock:
        if p in _active:
            raise RuntimeError("this profile is already active")
        _active.append(p)
        if len(_active) == 1:
            _core._sim_set_launch_hook(ctypes.cast(_hook, ctypes.c_void_p).value)


def _deactivate(p: Profile) -> None:
    from .. import _core
    with _lock:
        if p in _active:
            _active.remove(p)
        if not _active:
            _core._sim_set_launch_hook(0)


# ---- profile builds of the package's own kernels -----------------------------------------------------------------

def project_kernels_dir() -> Path:
    """The package's kernel sources (kernels/*.metal and their headers): installed inside the package, else the
    source tree of an editable install."""
    here = Path(__file__).resolve().parent
    for cand in (here / "kernels", here.parent.parent / "kernels"):
        if (cand / "fa_forward.metal").is_file():
            return cand
    raise _compile.SimCompileError(f"the package's kernel sources are missing (looked in {here / 'kernels'} and "
                                   f"{here.parent.parent / 'kernels'}); reinstall flash_attn_cy")


_project_files: Optional[Dict[str, Path]] = None
_project_libs: Dict[str, ctypes.CDLL] = {}


def _project_module(kernel: str) -> ctypes.CDLL:
    """The profile module of the package's kernel file that defines ``kernel`` (translated and compiled on first use,
    then cached like every simulator module)."""
    global _project_files
    with _lock:
        if _project_files is None:
            d = project_kernels_dir()
            found: Dict[str, Path] = {}
            for f in sorted(d.glob("*.metal")):
                for e in translate_file(str(f), [str(d)]).kernels:
                    found.setdefault(e.name, f)
            _project_files = found
        path = _project_files.get(kernel)
        if path is None:
            raise ValueError(f"kernel {kernel!r} is not in the package's kernel files ({project_kernels_dir()})")
        lib = _project_libs.get(str(path))
        if lib is None:
            tr = translate_file(str(path), [str(path.parent)])
            # the package's own kernels: trusted like the rest of the package (no source or IR check)
            lib = _compile.load_module(tr.code, path.name, salt="project", variant="profile")
            _project_libs[str(path)] = lib
        return lib


# ---- roofline ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RooflineRow:
    """One dispatch (or the total) on one chip."""

    kernel: str
    flops: float           # counted flops (simdgroup_matrix and elementwise)
    device_bytes: float    # device memory bytes read + written
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        """The lower bound on the time: the larger of compute and memory time."""
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        """"compute" or "memory": which of the two sets the lower bound."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


def _compute_seconds(flops: Dict[str, float], c: Chip) -> float:
    fp32, fp16 = c.fp32_tflops * 1e12, c.fp16_tflops * 1e12
    bf16 = max(fp32, fp16)  # no published bfloat rate: the faster one keeps the bound a lower bound
    return ((flops.get("mma_fp32", 0) + flops.get("fp32", 0) + flops.get("transcendental", 0)) / fp32
            + (flops.get("mma_fp16", 0) + flops.get("fp16", 0)) / fp16
            + (flops.get("mma_bf16", 0) + flops.get("bf16", 0)) / bf16)


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Lower bounds on the time of profiled work on one chip (see Profile.roofline)."""

    chip: Chip
    rows: Tuple[RooflineRow, ...]  # per dispatch
    total: RooflineRow
    mma_flops: float
    useful_flops: Optional[float]

    @property
    def seconds(self) -> float:
        return self.total.seconds

    @property
    def bound(self) -> str:
        return self.total.bound

    @property
    def useful_fraction(self) -> Optional[float]:
        """Useful flops / counted simdgroup_matrix flops (None without useful flops or MMAs)."""
        if self.useful_flops is None or not self.mma_flops:
            return None
        return self.useful_flops / self.mma_flops

    @classmethod
    def of(cls, dispatches: Sequence[Dict[str, Any]], c: Chip, useful_flops: Optional[float]) -> "Roofline":
        rows = []
        tot_flops: Dict[str, float] = {}
        for d in dispatches:
            f = d["flops"]
            nbytes = float(d["device_bytes_read"] + d["device_bytes_written"])
            rows.append(RooflineRow(d["kernel"], float(f["total"]), nbytes, _compute_seconds(f, c),
                                    nbytes / (c.bandwidth_gbs * 1e9)))
            for k in FLOP_KEYS:
                tot_flops[k] = tot_flops.get(k, 0.0) + f.get(k, 0)
        nbytes = sum(r.device_bytes for r in rows)
        total = RooflineRow("total", sum(r.flops for r in rows), nbytes, _compute_seconds(tot_flops, c),
                            nbytes / (c.bandwidth_gbs * 1e9))
        mma = tot_flops.get("mma_fp32", 0.0) + tot_flops.get("mma_fp16", 0.0) + tot_flops.get("mma_bf16", 0.0)
        return cls(c, tuple(rows), total, mma, useful_flops)

    def as_dict(self) -> Dict[str, Any]:
        def row(r: RooflineRow) -> Dict[str, Any]:
            return {"kernel": r.kernel, "flops": r.flops, "device_bytes": r.device_bytes, "compute_s": r.compute_s,
                    "memory_s": r.memory_s, "seconds": r.seconds, "bound": r.bound}
        return {"chip": dataclasses.asdict(self.chip), "dispatches": [row(r) for r in self.rows],
                "total": row(self.total), "mma_flops": self.mma_flops, "useful_flops": self.useful_flops,
                "useful_fraction": self.useful_fraction}

    def __str__(self) -> str:
        c = self.chip
        src = "published by Apple" if c.fp32_source == "apple" else "derived: cores x 128 ALUs x 2 x clock"
        lines = [f"roofline on {c.name}: {c.gpu_cores} GPU cores, FP32 {c.fp32_tflops:g} TFLOP/s ({src}), "
                 f"FP16 {c.fp16_tflops:g} TFLOP/s, {c.bandwidth_gbs:g} GB/s",
                 f"{'dispatch':<28} {'flops':>12} {'device bytes':>14} {'compute':>11} {'memory':>11} "
                 f"{'lower bound':>12}  bound"]
        for r in self.rows + (self.total,):
            lines.append(f"{r.kernel[:28]:<28} {r.flops:>12.4g} {r.device_bytes:>14.4g} {_t(r.compute_s):>11} "
                         f"{_t(r.memory_s):>11} {_t(r.seconds):>12}  {r.bound}")
        if self.useful_fraction is not None:
            lines.append(f"useful flops {self.useful_flops:.6g} / simdgroup_matrix flops {self.mma_flops:.6g} = "
                         f"{self.useful_fraction:.3f}")
        elif self.useful_flops is None:
            lines.append("useful flops: unknown (profile attention calls of the sim backend, or pass useful_flops / "
                         "--useful-flops)")
        else:
            lines.append("useful flops: no simdgroup_matrix work was counted")
        return "\n".join(lines)


def _t(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.3g} us"
    return f"{s * 1e9:.3g} ns"


def format_dispatch(d: Dict[str, Any]) -> str:
    """A few lines of text with the counters of one dispatch (sim profile's output)."""
    f = d["flops"]
    out = [f"{d['kernel']}: grid {d['grid']}, threadgroup {d['threadgroup']}"
           + ("" if d.get("counted", True) else " (not counted: the launch did not run)")]
    out.append(f"  device memory: {d['device_bytes_read']} bytes read in {d['device_load_ops']} loads, "
               f"{d['device_bytes_written']} bytes written in {d['device_store_ops']} stores, "
               f"{d['device_atomic_ops']} atomics")
    for i, b in sorted(d["buffers"].items()):
        if not (b["bytes_read"] or b["bytes_written"] or b.get("atomics")):
            continue
        out.append(f"    {b.get('kind', 'buffer')}({i}): read {b['bytes_read']} B / {b['loads']} loads, "
                   f"written {b['bytes_written']} B / {b['stores']} stores"
                   + (f", {b['atomics']} atomics" if b.get("atomics") else ""))
    out.append(f"  threadgroup memory: {d['threadgroup_memory_bytes']} bytes per threadgroup; "
               f"{d['threadgroup_bytes_read']} bytes read in {d['threadgroup_load_ops']} loads, "
               f"{d['threadgroup_bytes_written']} bytes written in {d['threadgroup_store_ops']} stores, "
               f"{d['threadgroup_atomic_ops']} atomics")
    out.append(f"  thread-private: {d['thread_private_bytes']} bytes per thread at most (the stack below the "
               "kernel's entry, as the host compiler lays it out)")
    out.append(f"  simdgroup_matrix: {d['simdgroup_mma']} 8x8x8 multiply-accumulates; barriers: "
               f"{d['threadgroup_barriers']} threadgroup, {d['simdgroup_barriers']} simdgroup; "
               f"{d['simdgroup_collectives']} other SIMD-group collectives")
    out.append("  flops: " + ", ".join(f"{k} {f[k]}" for k in ("mma", "fp32", "fp16", "bf16", "transcendental",
                                                                "total")))
    return "\n".join(out)
