"""flash_attn_cy: FlashAttention-2 for Apple Silicon (Metal) with a portable C++ backend.

A drop-in for Dao-AILab flash_attn 2.x's functional API that takes NumPy arrays or PyTorch tensors:

    >>> import numpy as np, flash_attn_cy
    >>> q = np.random.randn(2, 128, 8, 64).astype(np.float32)
    >>> out = flash_attn_cy.flash_attn_func(q, q, q, causal=True)

Backends: "cpu" (portable C++), "sim" (the project's Metal kernels on the CPU Metal simulator) and "metal" (Apple
GPU, macOS builds). `backends()` says which are present here and why one is missing.
"""
from __future__ import annotations

import numbers
from typing import Dict

try:
    from . import _core
except ImportError as _e:  # the commonest cause: Python imported a source checkout instead of the installed build
    import os as _os
    _here = _os.path.dirname(_os.path.abspath(__file__))
    if _os.path.exists(_os.path.join(_here, "_core.pyx")):
        raise ImportError(
            f"flash_attn_cy was imported from the source tree {_here}, which has no compiled extension "
            f"(_core). Run from another directory (the current directory comes first on sys.path), use "
            f"`python -P ...` (Python 3.11+), or install for development with "
            f"`pip install --no-build-isolation -e .` (with an editable install, this means its rebuild failed: see the "
            f"original error). Original error: {_e}") from _e
    raise
from .interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
)
from .interface import FLASH_ATTN_FUNCTIONS as _FLASH_ATTN_FUNCTIONS
from .kvcache import flash_attn_with_kvcache
from ._backward import backward
from . import errors as _errors
from .errors import (  # every exception a caller may catch, documented in errors.py
    BackendUnavailableError,
    FlashAttnShadowWarning,
    FlashAttnTypeError,
    FlashAttnValueError,
    KernelRefused,
    SimCompileError,
    TranslateError,
)

# Written by meson from the VERSION file at the repository root (the one place the version is set).
from ._build_info import BUILD_INFO as _BUILD_INFO

__version__: str = _BUILD_INFO["version"]


# FLASH_ATTN_CY_CPU_ISA's values (amx-emulated: the AMX kernels on a scalar model of the tiles, for tests).
_CPU_ISA_VALUES = ("portable", "avx2", "avx512", "amx", "amx-emulated", "neon")


def _check_cpu_isa_override() -> None:
    # The C++ backend reads FLASH_ATTN_CY_CPU_ISA on every call and knows the values of _CPU_ISA_VALUES (csrc/cpu/
    # cpu_features.h); anything else (a typo) or a kernel set this CPU cannot run silently keeps the best kernels for
    # this CPU, so either is pointed out once at import.
    import os
    import warnings

    value = os.environ.get("FLASH_ATTN_CY_CPU_ISA", "")
    if value not in ("",) + _CPU_ISA_VALUES:
        known = ", ".join(repr(v) for v in _CPU_ISA_VALUES)
        warnings.warn(f"FLASH_ATTN_CY_CPU_ISA={value!r} is not a known value: only {known} (force those CPU kernels) "
                      "are; the CPU backend uses the best kernels for this CPU", RuntimeWarning, stacklevel=3)
    elif value not in ("", "portable"):
        # The description's first word (csrc/cpu/isa_dispatch.cpp) is the kernel path the C++ dispatch picked
        # (avx512-bf16 is the avx512 set with bf16 dot products).
        desc = _core.backend_describe("cpu")
        if f", {value} " not in desc and f", {value}-" not in desc:
            warnings.warn(f"FLASH_ATTN_CY_CPU_ISA={value!r}: this CPU cannot run the {value} kernels; the CPU backend "
                          f"uses the best kernels it can run ({desc})", RuntimeWarning, stacklevel=3)


_check_cpu_isa_override()


__all__ = [
    *_FLASH_ATTN_FUNCTIONS,  # flash_attn 2.x's functions (imported above)
    "flash_attn_with_kvcache",
    "backward",
    "backends",
    "build_info",
    "available_backends",
    "set_num_threads",
    "get_num_threads",
    "install_as_flash_attn",
    "uninstall_flash_attn_alias",
    "register_transformers",
    "__version__",
    *_errors.__all__,  # every exception class (declared in errors.py)
]

# Entry points of optional integrations, resolved on first use so `import flash_attn_cy` stays NumPy-only:
# name -> (module, attribute).
_LAZY = {
    "install_as_flash_attn": ("flash_attn_cy.flash_attn_compat._alias", "install_as_flash_attn"),
    "uninstall_flash_attn_alias": ("flash_attn_cy.flash_attn_compat._alias", "uninstall_flash_attn_alias"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flash_attn_cy' has no attribute {name!r}")


def register_transformers() -> str:
    """Register flash_attn_cy with Hugging Face transformers as ``attn_implementation="flash_attn_cy"``; returns
    that name. Needs PyTorch and transformers; importing flash_attn_cy alone imports neither (see
    flash_attn_cy.transformers_integration)."""
    try:
        import torch  # noqa: F401  (the integration module is PyTorch code)
    except ImportError as exc:
        raise ImportError("flash_attn_cy.register_transformers() needs PyTorch and transformers: "
                          "pip install torch==2.13.0 transformers") from exc
    from .transformers_integration import register_transformers as register
    return register()


def backends() -> Dict[str, Dict[str, object]]:
    """Every backend this package knows, as name -> {"available": bool, "reason": why not (empty when available),
    "description": what it is as built}."""
    info = {}
    for name in _core.BACKENDS:
        ok, why = _core.backend_available(name)
        info[name] = {"available": ok, "reason": "" if ok else why, "description": _core.backend_describe(name)}
    return info


def build_info() -> Dict[str, str]:
    """How this build was configured (version, host, C++ compiler, Cython, meson, build type, the `metal` option and
    whether the Metal shim was compiled in), as recorded by meson."""
    from ._build_info import BUILD_INFO
    return dict(BUILD_INFO)


def available_backends() -> list:
    """Names of the backends usable on this machine, in preference order for backend="auto" (metal, then cpu)."""
    order = ("metal", "cpu", "sim")
    return [name for name in order if _core.backend_available(name)[0]]


def set_num_threads(n: int) -> None:
    """Threads the CPU backend uses from the next call on, at most (0 = one per CPU this process may run on)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):  # NumPy/PyTorch integers too (os.cpu_count() etc.)
        raise TypeError(f"set_num_threads: expected an int >= 0, got {type(n).__name__}")
    n = int(n)
    if n < 0:
        raise ValueError(f"set_num_threads: expected an int >= 0 (0 = one per CPU available), got {n}")
    _core.set_num_threads(min(n, 2**31 - 1))  # the pool caps its size; a C int must not overflow on the way


def get_num_threads() -> int:
    """The CPU backend's thread count setting: the most threads a call uses. A call uses fewer when its work cannot
    keep them busy, and never more than the CPUs this process may run on (affinity mask, cgroup CPU quota)."""
    return _core.get_num_threads()
