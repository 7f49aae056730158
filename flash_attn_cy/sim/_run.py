"""Python entry point of the Metal simulator: run one dispatch of a kernel from any .metal file."""

from __future__ import annotations

import builtins
import ctypes
import dataclasses
import os
import re
import threading
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _compile, _profile, trust
from ._constants import normalize_defines, pack_constants
from .check import find_clang
from .translate import FunctionConstant, translate

__all__ = ["Fault", "SimResult", "run", "load_source"]

FAULT_KINDS = ("race", "race (simdgroup)", "out-of-bounds", "uninitialized-read", "divergent-barrier", "error",
               "fast-math-hazard", "note")
# LaunchConfig::schedule_mode (csrc/sim/sim_api.h)
SCHEDULE_MODES = {"interleaved": 0, "run-ahead": 1, "mixed": 2}


@dataclasses.dataclass(frozen=True)
class Fault:
    """One problem the simulator found: ``kind`` is race, race (simdgroup), out-of-bounds, uninitialized-read,
    divergent-barrier, fast-math-hazard or error; ``message`` names kernel, threadgroup, thread and source line where
    known (a race: both threads, the memory and both source lines)."""

    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class SimResult(NamedTuple):
    """Buffers after the dispatch (index -> array, same dtype and shape as given) and the faults found."""

    buffers: Dict[int, np.ndarray]
    faults: List[Fault]


def load_source(path_or_source: Union[str, os.PathLike]) -> Tuple[str, str]:
    """(source text, path used in messages) from a file path or MSL source text.

    A str is source text if it has a line break or a ``{`` (and is not the name of an existing file); otherwise it is
    a path, which must exist (a mistyped path is a FileNotFoundError, not source text that fails to compile).
    """
    if isinstance(path_or_source, os.PathLike):
        path = os.fspath(path_or_source)
    elif isinstance(path_or_source, str):
        one_line = "\n" not in path_or_source
        if not (one_line and (os.path.isfile(path_or_source) or "{" not in path_or_source)):
            return path_or_source, "<source>.metal"
        path = path_or_source
    else:
        raise TypeError(f"path_or_source must be a path or MSL source text, got {type(path_or_source).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path_or_source: no such file {path!r}")
    return Path(path).read_text(encoding="utf-8"), str(path)


def _dims(value, name: str) -> Tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),)
    try:
        vals = [int(v) for v in value]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a sequence of 1 to 3 ints, got {value!r}") from None
    if not 1 <= len(vals) <= 3 or any(v < 1 for v in vals):
        raise ValueError(f"{name} must be 1 to 3 positive ints, got {value!r}")
    if any(v > UINT32_MAX for v in vals):
        raise ValueError(f"{name}: each size must be at most 2**32 - 1 = {UINT32_MAX} (Metal's sizes are 32-bit), "
                         f"got {value!r}")
    vals += [1] * (3 - len(vals))
    return vals[0], vals[1], vals[2]


UINT32_MAX = 2**32 - 1


def _index(k, name: str) -> int:
    if not isinstance(k, (int, np.integer)) or not 0 <= int(k) <= 30:
        raise ValueError(f"{name}: buffer indices must be ints in [0, 30], got {k!r}")
    return int(k)


_modules: Dict[tuple, Tuple[ctypes.CDLL, List[Tuple[str, float]], List[FunctionConstant]]] = {}


def _module_for(source: str, path: str, include_dirs: Tuple[str, ...], defines: Tuple[Tuple[str, str], ...],
                variant: str = "", instrumented: bool = False,
                only: Optional[str] = None) -> Tuple[ctypes.CDLL, List[FunctionConstant]]:
    """Translated and compiled module for this source (and its function constants), reused while the included
    headers are unchanged (variant "profile": built with the work counters, flash_attn_cy.sim.profile;
    instrumented: built for the hazard detector, a module of its own; only: a module of that one kernel)."""
    key = (source, path, include_dirs, defines, trust.unchecked(), variant, instrumented, only)  # unchecked never serves checked
    hit = _modules.get(key)
    if hit is not None:
        lib, deps, fcs = hit
        if all(os.path.isfile(d) and os.path.getmtime(d) == m for d, m in deps):
            return lib, fcs
    tr = translate(source, path, list(include_dirs), defines=dict(defines), kernel=only)
    if trust.unchecked():
        lib = _compile.load_module(tr.code, os.path.basename(path), salt="unchecked", variant=variant,
                                   instrumented=instrumented)
    else:
        trust.check_translation(tr, source, path, include_dirs)
        clang = find_clang()
        if not clang:
            raise _compile.SimCompileError(
                "the simulator checks every kernel file with clang++ before it compiles and runs it as native code "
                "(none found: install clang, or set FLASH_ATTN_CY_CLANG); FLASH_ATTN_CY_SIM_UNCHECKED=1 runs files "
                "unchecked, for files you trust")
        lib = _compile.load_module(tr.code, os.path.basename(path), salt=trust.SALT, variant=variant,
                                   instrumented=instrumented,
                                   verify=lambda flags: trust.check_compiled(tr.code, path, clang, flags))
    _modules[key] = (lib, [(d, os.path.getmtime(d)) for d in tr.dependencies], tr.function_constants)
    return lib, tr.function_constants


def run(path_or_source: Union[str, os.PathLike], kernel: str, grid, threadgroup,
        buffers: Optional[Mapping[int, np.ndarray]] = None, bytes: Optional[Mapping[int, object]] = None,
        schedules: int = 3, *, seed: int = 0x5EED, host_threads: int = 0,
        include_dirs: Sequence[str] = (), defines: Optional[Union[Mapping[str, object], Sequence[str]]] = None,
        constants: Optional[Mapping[Union[str, int], object]] = None,
        threadgroup_memory: Optional[Mapping[int, int]] = None, hazards: bool = True,
        schedule_mode: str = "mixed", only_kernel: bool = False) -> SimResult:
    """Run ``kernel`` from an MSL file (or source text) on the simulator.

    Args:
        path_or_source: a ``.metal`` file path, or MSL source text.
        kernel: Metal function name (``host_name`` for instantiated templates).
        grid: threadgroups per grid, ``X`` or ``(X, Y[, Z])`` (as ``dispatchThreadgroups``).
        threadgroup: threads per threadgroup, same forms.
        buffers: ``{index: array}`` bound at ``[[buffer(index)]]``; the caller's arrays are never written;
            read-only arrays (``flags.writeable == False``) are bound read-only.
        bytes: ``{index: bytes | array | scalar}`` passed like ``setBytes``.
        schedules: 1 runs in forward thread order, plus once with the buffers against their lower guard pages
            (out-of-bounds reads before the start or just past the end); N > 1 also reruns under N-1 other thread
            orders (``schedule_mode``) and with another poison pattern, reporting results that differ as races and
            uninitialised reads.
        seed: seed of the random schedules. host_threads: worker threads (0 = all cores).
        include_dirs: more directories for ``#include "..."`` (after the file's own).
        defines: preprocessor macros, ``{"NAME": value}`` or ``["NAME=VALUE", "NAME"]`` (as ``-D``).
        constants: function constant values (``constant T name [[function_constant(i)]]``), by name or index:
            ``{"has_mask": True, 3: 64}``; the value is converted to the declared type (out of range is an
            error). Constants not given are undefined (``is_function_constant_defined`` is false; reading one is
            an error fault).
        threadgroup_memory: ``{index: bytes}`` for the kernel's ``[[threadgroup(index)]]`` arguments (as
            ``setThreadgroupMemoryLength:atIndex:``; multiples of 16).
        hazards: check every load and store of the first run against shadow state of threadgroup memory and of the
            writable buffers (``kernels/README.md``, "Hazard detection"): a race is reported on the first run,
            naming both threads, the memory and both source lines. The kernel is compiled for it into a module of
            its own (its first run then takes about twice the CPU time); ``False`` runs the plain module.
        schedule_mode: the thread orders of the runs: ``"interleaved"`` (every ready thread one step at a time),
            ``"run-ahead"`` (each SIMD group runs ahead of the others up to its next threadgroup barrier, in
            forward, reverse and random SIMD-group order) or ``"mixed"`` (both; the default).
        only_kernel: compile only ``kernel`` and what it uses (a module of its own), not every kernel of the file:
            for files of hundreds of kernels (llama.cpp's ggml-metal.metal), whose full build takes long or
            instantiates templates the simulator's C++ cannot compile.

    Returns:
        ``SimResult(buffers, faults)``: the buffers after the forward run (new arrays; a read-only buffer comes
        back as a read-only view of the input) and the faults found.
    """
    if not isinstance(kernel, str) or not kernel:
        raise TypeError(f"kernel must be a non-empty str, got {kernel!r}")
    g = _dims(grid, "grid")
    t = _dims(threadgroup, "threadgroup")
    if t[0] * t[1] * t[2] > 1024:
        raise ValueError(f"threadgroup: at most 1024 threads per threadgroup, got {t}")
    if g[0] * g[1] * g[2] > UINT32_MAX:
        raise ValueError(f"grid: at most 2**32 - 1 threadgroups in all, got {g[0] * g[1] * g[2]} ({g})")
    if not isinstance(schedules, (int, np.integer)) or not 1 <= schedules <= 2**31 - 1:
        raise ValueError(f"schedules must be an int in [1, 2**31 - 1], got {schedules!r}")
    if not isinstance(host_threads, (int, np.integer)) or not 0 <= host_threads <= 4096:
        raise ValueError(f"host_threads must be an int in [0, 4096] (0 = all cores), got {host_threads!r}")
    if not isinstance(hazards, (bool, np.bool_)):
        raise TypeError(f"hazards must be a bool, got {hazards!r}")
    if schedule_mode not in SCHEDULE_MODES:
        raise ValueError(f"schedule_mode must be one of {', '.join(map(repr, SCHEDULE_MODES))}, got {schedule_mode!r}")
    source, path = load_source(path_or_source)
    counted = _profile.active()  # inside flash_attn_cy.sim.profile(): a profile build, and the dispatch is recorded
    hazards = bool(hazards) and not counted  # a profile module answers the instrumentation with its counters
    lib, fcs = _module_for(source, path, tuple(str(d) for d in include_dirs), normalize_defines(defines),
                           "profile" if counted else "", hazards, kernel if only_kernel else None)
    packed_constants = pack_constants(constants, fcs, path)
    const_args = _constant_args(packed_constants) + _tg_memory_args(threadgroup_memory)

    # No copy of the inputs on this side: the runtime copies each buffer into its guarded mapping straight from the
    # caller's array and writes the forward run's results into a fresh output array (pages touched only then), so
    # the simulator holds one guarded copy at a time (plus the outputs of writable buffers).
    out: Dict[int, np.ndarray] = {}
    keep = []
    idx, ptrs, srcs, lens, wr = [], [], [], [], []
    for k, a in (buffers or {}).items():
        k = _index(k, "buffers")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"buffers[{k}] must be a numpy array, got {type(a).__name__}")
        writable = bool(a.flags.writeable)
        src = np.ascontiguousarray(a)
        keep.append(src)
        if writable:
            try:
                c = np.empty_like(src, order="C")
            except MemoryError:
                raise MemoryError(f"buffers[{k}]: cannot allocate {src.nbytes} bytes for the results") from None
            srcs.append(src.ctypes.data if src.nbytes else None)
        else:
            c = src.view()  # bound read-only: the kernel cannot change it, so the result is the input itself
            c.flags.writeable = False
            srcs.append(None)
        out[k] = c
        idx.append(k)
        ptrs.append(c.ctypes.data if c.nbytes else None)
        lens.append(c.nbytes)
        wr.append(1 if writable else 0)
    bidx, bptr, blen = [], [], []
    for k, v in (bytes or {}).items():
        k = _index(k, "bytes")
        if k in out:
            raise ValueError(f"bytes: index {k} is also bound in buffers")
        if isinstance(v, (builtins.bytes, bytearray, memoryview)):
            raw = builtins.bytes(v)
        elif isinstance(v, (bool, int, float)) or (isinstance(v, (list, tuple)) and not isinstance(v, np.ndarray)):
            raise TypeError(f"bytes[{k}]: give bytes or a NumPy scalar/array with an explicit dtype "
                            f"(e.g. np.uint32(5) or np.array([1, 2], np.int32)), not {type(v).__name__}: the kernel "
                            f"reads raw bytes, so the width must be explicit")
        else:
            raw = np.ascontiguousarray(np.asarray(v)).tobytes()
        cb = ctypes.create_string_buffer(raw, len(raw))
        keep.append(cb)
        bidx.append(k)
        bptr.append(ctypes.cast(cb, ctypes.c_void_p).value)
        blen.append(len(raw))

    def arr(ctype, vals):
        return (ctype * max(1, len(vals)))(*vals)

    msg = ctypes.create_string_buffer(1 << 16)
    n = _launch_interruptibly(lib, [
        kernel.encode(), arr(ctypes.c_uint, g), arr(ctypes.c_uint, t), len(idx), arr(ctypes.c_int, idx),
        arr(ctypes.c_void_p, ptrs), arr(ctypes.c_void_p, srcs), arr(ctypes.c_size_t, lens), arr(ctypes.c_int, wr),
        len(bidx), arr(ctypes.c_int, bidx), arr(ctypes.c_void_p, bptr), arr(ctypes.c_size_t, blen), int(schedules),
        int(seed) & (2**64 - 1), int(host_threads), 1, int(bool(hazards)), SCHEDULE_MODES[schedule_mode], msg,
        len(msg)], const_args)
    text = msg.value.decode(errors="replace")
    if n < 0:
        raise ValueError(f"kernel: {text}")
    faults = []
    for line in text.splitlines():
        kind, _, m = line.partition("\t")
        faults.append(Fault(kind, _with_source_line(m)))
    if counted:
        _profile.record(lib, kernel, g, t, [str(f) for f in faults],
                        constants=_profile.constant_values(packed_constants))
    return SimResult(out, faults)


_POLL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _Cancel(ctypes.Structure):
    """csrc/sim/fa_cancel.h: the launch polls it on this thread and stops early once `requested` is set."""

    _fields_ = [("requested", ctypes.c_int32), ("poll", _POLL), ("poll_ctx", ctypes.c_void_p)]


def _constant_args(packed: List[Tuple[int, str, int, builtins.bytes]]) -> list:
    """fasim_launch's function constant arguments (c_api.cpp): count, indices, names, types, values, sizes."""
    n = len(packed)
    values = [ctypes.create_string_buffer(v, max(1, len(v))) for _, _, _, v in packed]
    return [n, (ctypes.c_int * max(1, n))(*[p[0] for p in packed]),
            (ctypes.c_char_p * max(1, n))(*[p[1].encode() for p in packed]),
            (ctypes.c_uint * max(1, n))(*[p[2] for p in packed]),
            (ctypes.c_void_p * max(1, n))(*[ctypes.cast(v, ctypes.c_void_p).value for v in values]),
            (ctypes.c_size_t * max(1, n))(*[len(p[3]) for p in packed]), values]


def _tg_memory_args(lengths: Optional[Mapping[int, int]]) -> list:
    """fasim_launch's [[threadgroup(n)]] arguments: count, indices, byte lengths."""
    items = []
    for k, v in (lengths or {}).items():
        k = _index(k, "threadgroup_memory")
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise TypeError(f"threadgroup_memory[{k}] must be a byte count (int >= 0), got {v!r}")
        items.append((k, int(v)))
    n = len(items)
    return [n, (ctypes.c_int * max(1, n))(*[k for k, _ in items]), (ctypes.c_size_t * max(1, n))(*[v for _, v in items])]


def _launch_interruptibly(lib: ctypes.CDLL, args: list, const_args: list):
    """lib.fasim_launch(*args, token): on the main thread, the simulator runs Python's signal handlers about every
    20 ms (ctypes releases the GIL for the call) through the package's C poll function (flash_attn_cy._core, the same
    one the attention calls use); an exception they raise (KeyboardInterrupt) stops the launch - also a kernel stuck
    in a loop - and is raised here once no simulated thread runs any more."""
    from .. import _core

    token = _Cancel()
    if threading.current_thread() is threading.main_thread():
        token.poll = ctypes.cast(ctypes.c_void_p(_core._signal_poll_address()), _POLL)
    # const_args: 6 function constant arguments, the list that keeps their values alive, 3 threadgroup memory ones
    n = lib.fasim_launch(*args, ctypes.byref(token), *const_args[:6], *const_args[7:])
    _core._raise_pending_signal()
    return n


_PC_RE = re.compile(r" \[pc: (.+?)\+0x([0-9a-f]+)\]")


def _with_source_line(message: str) -> str:
    """Replace each of the runtime's "[pc: module+offset]" with the .metal source line when the line table knows it
    (a race names two)."""
    def line(m: "re.Match[str]") -> str:
        where = _compile.source_line(m.group(1), int(m.group(2), 16))
        return f" at {where}" if where else ""
    return _PC_RE.sub(line, message)
