"""Run-time compilation of translated MSL into shared libraries, cached by content hash.

The simulator runtime (csrc/sim/*.cpp) is compiled once per compiler and source version into object files; each
translated .metal file becomes a small shared library linked with those objects (so every module carries its own
kernel registry) and is loaded with ctypes.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__all__ = ["SimCompileError", "runtime_dir", "find_cxx", "cache_dir", "load_module"]

RUNTIME_SOURCES = ("runtime.cpp", "scheduler.cpp", "signals.cpp", "registry.cpp", "fiber.cpp", "guarded.cpp",
                   "constants.cpp", "hazard.cpp", "hazard_hooks.cpp", "c_api.cpp")
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing"]
# Kernel modules also carry line tables (through the translator's #line markers they point into the .metal file),
# so a fault's program counter can be mapped back to the source line. Stack clash protection makes a frame larger
# than the fiber stack's guard page probe it page by page, so that a large thread-private array is reported as a
# stack overflow instead of writing into whatever mapping lies below the stack.
MODULE_FLAGS = ["-g", "-fstack-clash-protection"]
# Variant "profile" (flash_attn_cy.sim.profile, `sim profile`): the runtime and the kernel are compiled with the work
# counters (csrc/sim/counters.h) and the runtime gains counters.cpp; the kernel alone is also compiled with the
# compiler's ThreadSanitizer instrumentation (every load and store calls counters.cpp; no sanitizer runtime is linked)
# and without vectorisation or store merging, so that each load or store the source asks for stays one access.
PROFILE_DEFINES = ["-DFASIM_PROFILE=1"]
PROFILE_SOURCES = ("counters.cpp",)
VARIANTS = ("", "profile")


def hazard_flags(compiler_id: str) -> List[str]:
    """Flags that make a kernel module call the hazard detector before every load and store (csrc/sim/hazard.h):
    the compiler's ThreadSanitizer instrumentation, whose entry points the simulator runtime defines itself
    (csrc/sim/hazard_hooks.cpp; the sanitizer's runtime is never linked). Function entry/exit calls are not needed."""
    if "clang" in compiler_id.lower():
        return ["-fsanitize=thread", "-mllvm", "-tsan-instrument-func-entry-exit=0"]
    return ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0"]

class ForkRenewedLock:
    """A lock (`factory`: threading.Lock or RLock) used as ``with lock:`` that a forked child gets anew. A process
    forked while another thread held it (compiling a module takes seconds) would otherwise inherit it locked, with no
    thread left to release it: its first sim.run would wait forever."""

    def __init__(self, factory: Callable[[], Any] = threading.Lock) -> None:
        self._factory = factory
        self._lock = factory()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._lock = self._factory()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)


_lock = ForkRenewedLock()
_loaded: Dict[str, ctypes.CDLL] = {}


from ..errors import SimCompileError  # noqa: E402  (declared in flash_attn_cy/errors.py)


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
    """Where compiled modules are kept: $FLASH_ATTN_CY_SIM_CACHE, else ~/.cache/flash_attn_cy/sim, else (read-only
    home) $TMPDIR/flash_attn_cy-sim-<uid>. Created 0700. A directory the caller does not own, or that group or others
    can write, is never used: a private one for this process is, with one RuntimeWarning saying so."""
    if _private_dir is not None:
        return _private_dir
    env = os.environ.get("FLASH_ATTN_CY_SIM_CACHE")
    if env:
        d = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = Path(base) / "flash_attn_cy" / "sim"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return _checked_dir(d)
    except OSError:
        pass
    # read-only home (some CI sandboxes): the shared temporary directory, where anyone may have planted this name
    d = Path(tempfile.gettempdir()) / f"flash_attn_cy-sim-{os.getuid() if hasattr(os, 'getuid') else 0}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        return _use_private(d, f"cannot create it ({e})")
    return _checked_dir(d)


_private_dir: Optional[Path] = None


def untrusted_reason(path: Path, is_dir: bool) -> Optional[str]:
    """Why a cache directory or file must not be trusted (another owner, writable by group or others, not what it
    claims to be), or None. On systems without uids (Windows) only the kind is checked."""
    try:
        st = os.stat(path) if is_dir else os.lstat(path)  # a file must not be a link (to someone else's file)
    except OSError as e:
        return f"cannot stat it ({e.strerror})"
    if is_dir and not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if not is_dir and not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if hasattr(os, "geteuid"):
        if st.st_uid != os.geteuid():
            return f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
        if st.st_mode & 0o022:
            return f"group or others can write it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _checked_dir(d: Path) -> Path:
    why = untrusted_reason(d, True)
    return _use_private(d, why) if why else d


def _use_private(rejected: Path, why: str) -> Path:
    """Switch this process to a private cache (once) and say why."""
    global _private_dir
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="flash_attn_cy-sim-private-"))  # 0700, unique, ours
        atexit.register(shutil.rmtree, str(_private_dir), True)
        warnings.warn(f"flash_attn_cy.sim: not using the module cache {rejected}: {why}; compiled kernels go to the "
                      f"private directory {_private_dir} for this process (fix the cache's owner and permissions, "
                      "or set FLASH_ATTN_CY_SIM_CACHE, to keep them)", RuntimeWarning, stacklevel=3)
    return _private_dir


def _harden(path: Path) -> None:
    """Files we put in the cache: no group/other write, whatever the umask."""
    try:
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode) & ~0o022)
    except OSError:
        pass


MODULE_KEY_PREFIX = b"fasim-module-key:"


def _key_source(key: str) -> str:
    # A separate translation unit, so the kernel file's macros cannot touch it.
    return (f'extern "C" __attribute__((visibility("default"), used)) const char fasim_module_key[] = '
            f'"{MODULE_KEY_PREFIX.decode()}{key}";\n')


def _module_matches(so: Path, key: str) -> bool:
    """The file is ours to load: owned, not writable by others, and built for this key (source, compiler, flags)."""
    if untrusted_reason(so, False):
        return False
    try:
        with open(so, "rb") as fh:
            return MODULE_KEY_PREFIX + key.encode() + b"\0" in fh.read()
    except OSError:
        return False


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


_runtime_names: Dict[tuple, str] = {}


def _variant_flags(variant: str) -> List[str]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return PROFILE_DEFINES if variant == "profile" else []


def _runtime_sources(variant: str) -> tuple:
    """The runtime of a module. Both the hazard detector (hazard_hooks.cpp) and the work counters (counters.cpp)
    answer the compiler's ThreadSanitizer calls, so a module holds one of them: a profile module the counters (it is
    never run under the detector), every other module the detector's hooks."""
    if variant == "profile":
        return tuple(s for s in RUNTIME_SOURCES if s != "hazard_hooks.cpp") + PROFILE_SOURCES
    return RUNTIME_SOURCES


def instrument_flags(cid: str) -> List[str]:
    """Flags of a profile module's kernel (not of its runtime): memory accesses instrumented, no vectorisation."""
    if "clang" in cid.lower():
        return ["-fsanitize=thread", "-mllvm", "-tsan-instrument-func-entry-exit=0", "-fno-vectorize",
                "-fno-slp-vectorize"]
    return ["-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0", "-fno-tree-vectorize",
            "-fno-tree-slp-vectorize", "-fno-store-merging"]


def _runtime_name(cid: str, variant: str = "") -> str:
    """rt-<hash of the runtime sources, compiler and flags>: the cache folder of the runtime's object files."""
    if (cid, variant) not in _runtime_names:
        rt = runtime_dir()
        h = hashlib.sha256()
        h.update((cid + " ".join(CXXFLAGS + _variant_flags(variant))).encode())
        for p in sorted(rt.rglob("*")):
            if p.is_file() and p.suffix in (".cpp", ".h", "") and "__pycache__" not in p.parts:
                h.update(p.name.encode())
                h.update(p.read_bytes())
        _runtime_names[(cid, variant)] = f"rt-{h.hexdigest()[:16]}"
    return _runtime_names[(cid, variant)]


def _runtime_objects(cxx: str, cid: str, variant: str = "") -> List[Path]:
    rt = runtime_dir()
    d = cache_dir() / _runtime_name(cid, variant)
    sources = _runtime_sources(variant)
    objs = [d / (s[:-4] + ".o") for s in sources]
    if d.exists() and untrusted_reason(d, True):
        d = _use_private(d, untrusted_reason(d, True)) / d.name
        objs = [d / o.name for o in objs]
    if all(o.is_file() and not untrusted_reason(o, False) for o in objs):
        return objs
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix="rt-tmp-"))
    try:
        for s, o in zip(sources, objs):
            _run(cxx.split() + CXXFLAGS + _variant_flags(variant) + ["-I", str(rt), "-c", str(rt / s), "-o",
                                                                   str(tmp / o.name)],
                 f"compiling the simulator runtime ({s})")
            _harden(tmp / o.name)
        d.mkdir(mode=0o700, exist_ok=True)
        for o in objs:
            os.replace(tmp / o.name, o)  # also replaces a file we must not trust
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return objs


def load_module(cpp_code: str, label: str = "kernel", verify: Optional[Callable[[List[str]], None]] = None,
                salt: str = "", variant: str = "", instrumented: bool = False) -> ctypes.CDLL:
    """Compile translated C++ (with the runtime) into a cached shared library and load it.

    verify(flags) runs before the code is compiled, with the compiler flags the module gets (not when a module built
    earlier, after the same check, is reused); salt names the checks, so that modules built under other rules are
    not reused. variant "profile" builds the module with the work counters (see PROFILE_DEFINES); it then also
    exports fasim_profile_counters. instrumented: the kernels are compiled for the hazard detector
    (:func:`hazard_flags`; a module of its own, so that a module without it contains no instrumentation at all)."""
    cxx = find_cxx()
    vflags = _variant_flags(variant)
    with _lock:
        cid = _compiler_id(cxx)
        rt = runtime_dir()
        kflags = instrument_flags(cid) if variant == "profile" else hazard_flags(cid) if instrumented else []
        key = hashlib.sha256((cid + "\0" + " ".join(CXXFLAGS + MODULE_FLAGS + vflags + kflags) + "\0" + salt + "\0"
                              + cpp_code).encode()).hexdigest()[:24]
        if key in _loaded:
            return _loaded[key]
        so = cache_dir() / f"mod-{key}-{_runtime_name(cid, variant)}.so"
        if not _module_matches(so, key):  # absent, or not ours to load: (re)build it
            if verify is not None:
                verify(CXXFLAGS + MODULE_FLAGS + vflags)
            objs = _runtime_objects(cxx, cid, variant)
            so = objs[0].parent.parent / so.name  # the runtime may have moved to a private cache
            tmp = Path(tempfile.mkdtemp(dir=so.parent, prefix="mod-tmp-"))
            try:
                src = tmp / "kernel.cpp"
                src.write_text(cpp_code)
                (tmp / "key.cpp").write_text(_key_source(key))
                out = tmp / "kernel.so"
                if kflags:  # instrumented kernel: compiled on its own, so that the link pulls in no sanitizer runtime
                    obj = tmp / "kernel.o"
                    _run(cxx.split() + CXXFLAGS + MODULE_FLAGS + vflags + kflags
                         + ["-I", str(rt), "-I", str(rt / "include"), "-c", str(src), "-o", str(obj)],
                         f"compiling {label} for the simulator (profile)")
                    src = obj
                _run(cxx.split() + CXXFLAGS + MODULE_FLAGS + vflags + ["-I", str(rt), "-I", str(rt / "include"),
                                                                       "-shared", str(src), str(tmp / "key.cpp")]
                     + [str(o) for o in objs] + ["-o", str(out), "-lpthread"]
                     + (["-ldl"] if sys.platform.startswith("linux") else []),  # dladdr on glibc < 2.34
                     f"compiling {label} for the simulator")
                _harden(out)
                os.replace(out, so)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if not _module_matches(so, key):
                raise SimCompileError(f"the module just built for {label} ({so}) does not check out (owner, mode or "
                                      "key); is the cache directory shared?")
        lib = ctypes.CDLL(str(so), mode=getattr(os, "RTLD_LOCAL", 0) | getattr(os, "RTLD_NOW", 2))
        lib.fasim_kernel_names.restype = ctypes.c_size_t
        lib.fasim_kernel_names.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.fasim_launch.restype = ctypes.c_int
        lib.fasim_launch.argtypes = [
            ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_int,
            ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t), ctypes.c_int, ctypes.c_ulonglong,
            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,  # host_threads, bounds_run, hazards, schedule_mode
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,  # fa_cancel * (_run.py)
            # function constants: count, index, name, MTLDataType, value pointer, value bytes (c_api.cpp)
            ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t),
            # [[threadgroup(n)]] lengths: count, indices, bytes
            ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
        ]
        if variant == "profile":
            lib.fasim_profile_counters.restype = ctypes.c_size_t
            lib.fasim_profile_counters.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
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
    for fr in frames:  # innermost first: skip frames inside the compatibility headers and the generated code
        fr = fr.split(" (discriminator")[0]
        path, _, line = fr.rpartition(":")
        path = os.path.normpath(path)  # the package's own kernels: paths relative to the build directory
        generated = "<simulator trampolines>" in path or os.path.basename(os.path.dirname(path)).startswith("mod-tmp-")
        header = path.startswith(inc) or os.path.basename(path).startswith("fasim_")  # (built elsewhere: a wheel)
        if path and not header and not generated:
            return f"{path}:{line}"
    return ""
