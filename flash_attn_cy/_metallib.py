"""The precompiled Metal kernel library a macOS build ships (``fa_kernels.metallib``): load it and list its functions.

Used by the wheel check (``.ci/wheel_check.py``) to prove, on a machine whose GPU cannot run the kernels (a CI
runner's paravirtual device), that the library in the wheel loads with Apple's Metal and holds every kernel.
"""
from __future__ import annotations

import ctypes
from typing import List, Tuple

_FA_OK, _FA_ERR_VALUE, _FA_ERR_UNAVAILABLE = 0, 1, 4
_BYTES = 1 << 16


def library_functions() -> Tuple[str, List[str]]:
    """Load the kernel library on the default Metal device and return ``(path, sorted function names)``.

    Raises ``RuntimeError`` where there is no Metal device, where the build embeds kernel source instead of a
    metallib (and on every non-macOS build), or where Metal refuses to load the file.
    """
    from . import _core
    fn = ctypes.CDLL(_core.__file__).fa_metal_library_functions
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t] * 3
    path, names, err = (ctypes.create_string_buffer(_BYTES) for _ in range(3))
    rc = fn(path, _BYTES, names, _BYTES, err, _BYTES)
    if rc != _FA_OK:
        raise RuntimeError(f"the Metal kernel library cannot be listed: {err.value.decode('utf-8', 'replace')}")
    text = names.value.decode("utf-8")
    return path.value.decode("utf-8"), (text.split("\n") if text else [])
