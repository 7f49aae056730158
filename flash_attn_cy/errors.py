"""Every exception and warning class flash_attn_cy defines: the one place they are declared and documented.

All are importable from the top level (``from flash_attn_cy import BackendUnavailableError``); the modules that raise
them import them from here. Apart from these, flash_attn_cy raises Python's own types, each with a message that starts
with the name of the argument at fault:

- ``ValueError``: a bad value or shape (``"max_seqlen_q: ..."``, ``"cu_seqlens_k: ..."``);
- ``TypeError``: a bad type or dtype;
- ``NotImplementedError``: a valid request this build or backend does not implement (e.g. a backward through a
  paged KV cache);
- ``RuntimeError``: a failure inside a backend that is not the caller's fault.

This module imports nothing from the package, so any layer may import it.
"""
from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "FlashAttnValueError",
    "FlashAttnTypeError",
    "FlashAttnShadowWarning",
    "SimCompileError",
    "TranslateError",
    "KernelRefused",
]


class BackendUnavailableError(RuntimeError, ValueError):
    """A known backend this build or machine cannot run (e.g. ``backend="metal"`` on Linux). Both a RuntimeError (the
    machine lacks it) and a ValueError (the ``backend`` argument is not acceptable here), so either ``except`` works.
    ``flash_attn_cy.backends()`` says beforehand which backends are usable and why one is not."""


class FlashAttnValueError(ValueError, RuntimeError):
    """A bad argument value or shape, raised through the ``flash_attn`` compatibility modules
    (``install_as_flash_attn()``): flash_attn's CUDA extension raises RuntimeError there, flash_attn_cy ValueError,
    so this is both and existing ``except RuntimeError:`` fallbacks keep working."""


class FlashAttnTypeError(TypeError, RuntimeError):
    """A bad argument type or dtype, raised through the ``flash_attn`` compatibility modules; both a TypeError and
    a RuntimeError (see FlashAttnValueError)."""


class FlashAttnShadowWarning(UserWarning):
    """Warning: a real ``flash_attn`` is installed or imported, so ``install_as_flash_attn()`` did not take its name
    (it returns False; ``force=True`` takes it anyway)."""


class SimCompileError(RuntimeError):
    """The Metal simulator (``backend="sim"``, ``flash_attn_cy.sim``) found no usable C++ compiler, or a translated
    kernel failed to compile (the message has the compiler's output)."""


class TranslateError(ValueError):
    """``flash_attn_cy.sim``: the MSL source uses something the simulator does not support (the message names the
    construct and the line)."""


class KernelRefused(ValueError):
    """``flash_attn_cy.sim`` refused a kernel file before compiling it: it leaves the MSL subset the simulator agrees
    to run as native code (``extern``, ``asm``, calls outside MSL's built-ins, load-time code, includes outside the
    kernel's directory). The message has one ``file:line: why`` per refusal (``flash_attn_cy/sim/trust.py``)."""
