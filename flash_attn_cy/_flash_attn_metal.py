"""Migration path for code written against the seed project's ``_flash_attn_metal`` module.

The seed module exposed three calls; they keep their names and meaning here, on top of flash_attn_cy:

    >>> from flash_attn_cy import _flash_attn_metal as fam
    >>> fam.initialize()                      # "metal" on an Apple-Silicon Mac, else "cpu"
    >>> out = fam.forward(q, k, v, None, True) # q, k, v: [batch, seqlen, heads, headdim]

- ``initialize()`` picks the backend once (Metal when this build and machine can run it, the portable CPU backend
  otherwise) and returns its name. Calling it is optional: ``forward`` initialises on first use.
- ``compile_shaders(source)`` compiles Metal Shading Language source with Apple's run-time compiler on a Mac and
  returns the names of its functions (a compile error raises ``ValueError`` with the compiler's log). flash_attn_cy
  ships its own kernels, so this is only needed for your own MSL; without Metal it raises ``RuntimeError`` and
  points at the project's Metal simulator.
- ``forward(q, k, v, softmax_scale=None, is_causal=False)`` is ``flash_attn_cy.flash_attn_func(q, k, v,
  softmax_scale=..., causal=...)`` on the initialised backend; NumPy arrays or PyTorch tensors (CPU or MPS), fp16,
  bf16 or fp32, result of the same kind. New code should call ``flash_attn_cy.flash_attn_func`` directly, which also
  offers dropout, sliding windows, ALiBi, softcapping, GQA, variable lengths, a KV cache and the backward pass.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any, List, Optional

__all__ = ["initialize", "compile_shaders", "forward", "backend"]

_FA_OK, _FA_ERR_VALUE, _FA_ERR_UNAVAILABLE = 0, 1, 4
_NAMES_BYTES = 1 << 16
_ERR_BYTES = 1 << 16

_lock = threading.Lock()
_backend: Optional[str] = None


def initialize() -> str:
    """Choose the backend for ``forward`` ("metal" if usable here, else "cpu") and return its name. Idempotent."""
    global _backend
    with _lock:
        if _backend is None:
            from . import _core
            _backend = "metal" if _core.backend_available("metal")[0] else "cpu"
        return _backend


def backend() -> Optional[str]:
    """The backend ``initialize`` chose, or None before the first call."""
    return _backend


def _compile_entry():
    """fa_metal_compile_source, exported by the extension module (csrc/fa_metal_shim.h; every build defines it,
    builds without Metal as an honest 'unavailable')."""
    from . import _core
    fn = ctypes.CDLL(_core.__file__).fa_metal_compile_source
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    return fn


def compile_shaders(source: str) -> List[str]:
    """Compile Metal Shading Language ``source`` at run time and return its function names, sorted.

    The language version is MSL 3.1, the one flash_attn_cy's own kernels are compiled with (offline and at run time),
    not the newest the running macOS knows.

    Raises ``TypeError`` for a non-string, ``ValueError`` with the compiler's messages if it does not compile, and
    ``RuntimeError`` where Metal is unavailable (not macOS, no Metal device, or a build without the Metal shim).
    """
    if not isinstance(source, str):
        raise TypeError(f"compile_shaders: source must be a str of Metal Shading Language, got {type(source).__name__}")
    if "\x00" in source:
        raise ValueError("compile_shaders: source contains a NUL character")
    names = ctypes.create_string_buffer(_NAMES_BYTES)
    err = ctypes.create_string_buffer(_ERR_BYTES)
    rc = _compile_entry()(source.encode("utf-8"), names, _NAMES_BYTES, err, _ERR_BYTES)
    message = err.value.decode("utf-8", "replace")
    if rc == _FA_OK:
        text = names.value.decode("utf-8")
        return text.split("\n") if text else []
    if rc == _FA_ERR_VALUE:
        raise ValueError(message)
    if rc == _FA_ERR_UNAVAILABLE:
        raise RuntimeError(f"compile_shaders needs Metal: {message}. Without a Mac, Metal kernels can be run and "
                           "checked in flash_attn_cy's CPU Metal simulator (flash_attn_cy.sim, or backend='sim').")
    raise RuntimeError(message or f"compile_shaders failed (status {rc})")


def forward(q: Any, k: Any, v: Any, softmax_scale: Optional[float] = None, is_causal: bool = False) -> Any:
    """Attention forward on [batch, seqlen, heads, headdim] arrays, as the seed module's ``forward``.

    ``softmax_scale`` defaults to ``headdim ** -0.5``; ``is_causal`` applies flash_attn's bottom-right causal mask.
    Returns the output (same shape, dtype and kind as ``q``).
    """
    if not isinstance(is_causal, (bool, int)) or isinstance(is_causal, float):
        raise TypeError(f"forward: is_causal must be a bool, got {type(is_causal).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(f"forward: {name} must be a 4-d array [batch, seqlen, heads, headdim], got "
                             f"{'no shape' if shape is None else tuple(shape)}")
    from .interface import flash_attn_func
    return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=bool(is_causal), backend=initialize())
