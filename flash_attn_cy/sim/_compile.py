"""Run-time compilation of translated MSL into shared libraries, cached by content hash.

The simulator runtime (csrc/sim/*.cpp) is compiled once per compiler and source version into object files; each
translated .metal file becomes a small shared library linked with those objects (so every module carries its own
kernel registry) and is loaded with ctypes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, List

__all__ = ["SimCompileError", "runtime_dir", "find_cxx", "cache_dir", "load_module"]

RUNTIME_SOURCES = ("runtime.cpp", "scheduler.cpp", "signals.cpp", "registry.cpp", "fiber.cpp", "guarded.cpp",
                   "c_api.cpp")
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing"]
# Kernel modules also carry line tables (through the translator's #line markers they point into the .metal file),
# so a fault's program counter can be mapped back to the source line.
MODULE_FLAGS = ["-g"]

_lock = threading.Lock()
_loaded: Dict[str, ctypes.CDLL] = {}


def _new_lock_in_child() -> None:
    # A process forked while another thread held the lock (compiling a kernel takes seconds) would inherit it locked,
    # with no thread left to release it: its first sim.run would wait forever. The child starts with a free lock.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


class SimCompileError(RuntimeError):
    """No usable C++ compiler, or the translated kernel source failed to compile (message has the compiler output)."""


def runtime_dir() -> Path:
    """Directory holding the simulator runtime sources and headers (installed copy, else the source tree)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "runtime", here.parent.parent / "csrc" / "sim"):
        if (cand / "runtime.cpp").is_file() and (cand / "include" / "metal_stdlib").is_file():
            return cand
    raise SimCompileError(
        f"the simulator runtime sources are missing (looked in {here / 'runtime'} and "
        f"{here.parent.parent / 'csrc' / 'sim'}); reinstall flash_attn_cy")


def find_cxx() -> str:
    """The C++ compiler: $CXX, else the first of c++, g++, clang++ on PATH."""
    env = os.environ.get("CXX")
    if env:
        exe = shutil.which(env.split()[0])
        if not exe:
            raise SimCompileError(f"CXX={env!r} is set but that compiler is not on PATH")
        return env
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return name
    raise SimCompileError(
        "the Metal simulator compiles kernels at run time and needs a C++17 compiler: none found "
        "(set CXX, or install g++ or clang++)")


def cache_dir() -> Path:
    """Where compiled modules are kept: $FLASH_ATTN_CY_SIM_CACHE, else ~/.cache/flash_attn_cy/sim."""
    env = os.environ.get("FLASH_ATTN_CY_SIM_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = Path(base) / "flash_attn_cy" / "sim"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = Path(tempfile.gettempdir()) / f"flash_attn_cy-sim-{os.getuid() if hasattr(os, 'getuid') else 0}"
    d.mkdir(parents=True, exist_ok=True)  # read-only home (some CI sandboxes): fall back to the temp directory
    return d


def _run(cmd: List[str], what: str) -> None:
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise SimCompileError(f"cannot run the C++ compiler ({cmd[0]}): {e}") from e
    if p.returncode != 0:
        raise SimCompileError(f"{what} failed:\n{' '.join(cmd)}\n{p.stdout}")


_compiler_ids: Dict[str, str] = {}


def _compiler_id(cxx: str) -> str:
    if cxx not in _compiler_ids:
        _compiler_ids[cxx] = _query_compiler_id(cxx)
    return _compiler_ids[cxx]


def _query_compiler_id(cxx: str) -> str:
    try:
        out = subprocess.run(cxx.split() + ["--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True).stdout
    except OSError as e:
        raise SimCompileError(f"cannot run the C++ compiler ({cxx}): {e}") from e
    return out.splitlines()[0] if out else cxx


def _runtime_objects(cxx: str, cid: str) -> List[Path]:
    rt = runtime_dir()
    h = hashlib.sha256()
    h.update((cid + " ".join(CXXFLAGS)).encode())
    for p in sorted(rt.rglob("*")):
        if p.is_file() and p.suffix in (".cpp", ".h", "") and "__pycache__" not in p.parts:
            h.update(p.name.encode())
            h.update(p.read_bytes())
    d = cache_dir() / f"rt-{h.hexdigest()[:16]}"
    objs = [d / (s[:-4] + ".o") for s in RUNTIME_SOURCES]
    if all(o.is_file() for o in objs):
        return objs
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="rt-tmp-"))
    try:
        for s, o in zip(RUNTIME_SOURCES, objs):
            _run(cxx.split() + CXXFLAGS + ["-I", str(rt), "-c", str(rt / s), "-o", str(tmp / o.name)],
                 f"compiling the simulator runtime ({s})")
        d.mkdir(exist_ok=True)
        for o in objs:
            os.replace(tmp / o.name, o)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return objs


def load_module(cpp_code: str, label: str = "kernel") -> ctypes.CDLL:
    """Compile translated C++ (with the runtime) into a cached shared library and load it."""
    cxx = find_cxx()
    with _lock:
        cid = _compiler_id(cxx)
        rt = runtime_dir()
        key = hashlib.sha256((cid + "\0" + " ".join(CXXFLAGS + MODULE_FLAGS) + "\0" + cpp_code).encode()
                             ).hexdigest()[:24]
        if key in _loaded:
            return _loaded[key]
        objs = _runtime_objects(cxx, cid)
        so = cache_dir() / f"mod-{key}-{objs[0].parent.name}.so"
        if not so.is_file():
            tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="mod-tmp-"))
            try:
                src = tmp / "kernel.cpp"
                src.write_text(cpp_code)
                out = tmp / "kernel.so"
                _run(cxx.split() + CXXFLAGS + MODULE_FLAGS + ["-I", str(rt), "-I", str(rt / "include"), "-shared",
                                                              str(src)]
                     + [str(o) for o in objs] + ["-o", str(out), "-lpthread"]
                     + (["-ldl"] if sys.platform.startswith("linux") else []),  # dladdr on glibc < 2.34
                     f"compiling {label} for the simulator")
                os.replace(out, so)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        lib = ctypes.CDLL(str(so), mode=getattr(os, "RTLD_LOCAL", 0) | getattr(os, "RTLD_NOW", 2))
        lib.fasim_kernel_names.restype = ctypes.c_size_t
        lib.fasim_kernel_names.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.fasim_launch.restype = ctypes.c_int
        lib.fasim_launch.argtypes = [
            ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_int,
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, ctypes.c_ulonglong,
            ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,  # the last: fa_cancel * (_run.py)
        ]
        _loaded[key] = lib
        return lib


def kernel_names(lib: ctypes.CDLL) -> List[str]:
    n = lib.fasim_kernel_names(None, 0)
    buf = ctypes.create_string_buffer(n)
    lib.fasim_kernel_names(buf, n)
    return [s for s in buf.value.decode().split("\n") if s]


def source_line(module_path: str, offset: int) -> str:
    """'file:line' of a program counter offset in a compiled kernel module, or '' if unknown (needs addr2line)."""
    tool = shutil.which("addr2line")
    if not tool:
        return ""
    try:
        out = subprocess.run([tool, "-e", module_path, "-i", "-C", hex(offset)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    inc = str(runtime_dir())
    frames = [ln.strip() for ln in out.splitlines() if ln.strip() and not ln.startswith("??")]
    for fr in frames:  # innermost first: skip frames inside the compatibility headers
        if not fr.startswith(inc) and ":" in fr:
            return fr.split(" (discriminator")[0]
    return ""
