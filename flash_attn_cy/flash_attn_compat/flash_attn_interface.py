"""``flash_attn.flash_attn_interface`` served by flash_attn_cy.

Every function has the exact name, positional order, keyword names and defaults of Dao-AILab flash_attn 2.8.3, so
model code (and transformers, which inspects these signatures to decide which keywords to pass) can call it
unchanged. The work is done by the matching ``flash_attn_cy`` function on its default backend ("auto").

The wrappers are derived from those functions' own signatures (`_drop_in`), not written out again: flash_attn_cy's
public functions take flash_attn's parameters in flash_attn's order with its defaults, plus keyword-only extras
(``backend``, ``seed``) that flash_attn does not have. So a wrapper is the function's positional-or-keyword part,
and cannot drift from it; tests/test_flash_attn_compat_signatures.py holds them to the 2.8.3 table.

Errors: flash_attn's CUDA extension reports bad arguments as ``RuntimeError``; flash_attn_cy raises ``ValueError``
or ``TypeError`` naming the argument. Here those are re-raised as :class:`FlashAttnValueError` /
:class:`FlashAttnTypeError`, which derive from BOTH the flash_attn_cy type and ``RuntimeError``, so
``except RuntimeError`` (code written for flash_attn) and ``except ValueError`` both catch them.
``NotImplementedError`` (a ``RuntimeError`` already) passes through unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Tuple

from flash_attn_cy import interface as _interface
from flash_attn_cy import kvcache as _kvcache
from flash_attn_cy._validate import FLASH_ATTN_PROBS, flag
from flash_attn_cy.flash_attn_compat._s_dmask import (  # noqa: F401  (_get_block_size_n: re-exported API)
    _flash_scaled_s_dmask,
    _get_block_size_n,
)

# flash_attn 2.8.3's public functions, wrapped below (_drop_in); flash_attn/__init__.py re-exports the same list
# (flash_attn_compat/__init__.py).
_PUBLIC_FUNCTIONS = (*_interface.FLASH_ATTN_FUNCTIONS, "flash_attn_with_kvcache")

__all__ = ["FlashAttnTypeError", "FlashAttnValueError", *_PUBLIC_FUNCTIONS]


from flash_attn_cy.errors import FlashAttnTypeError, FlashAttnValueError  # noqa: E402  (declared in flash_attn_cy/errors.py)


try:  # the semi-private functions and ops of flash_attn 2.8.3 (torch.library custom ops: they need PyTorch)
    # absolute import: one module (one set of registered ops) whether this file loads as flash_attn.* or not
    from flash_attn_cy.flash_attn_compat._lowlevel import (  # noqa: F401  (re-exported API)
        _flash_attn_backward,
        _flash_attn_forward,
        _flash_attn_varlen_backward,
        _flash_attn_varlen_forward,
        _wrapped_flash_attn_backward,
        _wrapped_flash_attn_forward,
        _wrapped_flash_attn_varlen_backward,
        _wrapped_flash_attn_varlen_forward,
    )
except ImportError:  # no torch: the public functions still take NumPy arrays
    pass


def maybe_contiguous(x: Any) -> Any:
    """flash_attn's helper: x with a unit stride on its last axis (a contiguous copy only when it has another)."""
    return x.contiguous() if x is not None and x.stride(-1) != 1 else x


def round_multiple(x: int, m: int) -> int:
    """flash_attn's helper: x rounded up to a multiple of m."""
    return (x + m - 1) // m * m


def _call(fn: Callable[..., Any], args: Tuple[Any, ...], probs_at: int) -> Any:
    """fn(*args) under flash_attn's rules:

    - errors: flash_attn_cy's ValueError/TypeError re-raised as types that are also RuntimeError (module docstring);
    - with ``probs_at`` >= 0, ``args[probs_at]`` is return_attn_probs: the third value is materialised only when
      dropout_p > 0 (flash_attn: ``return_softmax=return_attn_probs and dropout_p > 0``), otherwise it is None, as
      flash_attn 2.0-2.6 return it and as this project's issue 16 asks (2.7+ hand back an empty (0,) tensor from
      their kernel instead; the low-level ``_flash_attn_forward`` family, whose custom-op schemas must return a
      tensor, keeps that); when present it is scaled per row as flash_attn's kernel does for one key block (see
      _flash_scaled_s_dmask)."""
    try:
        if probs_at >= 0 and args[probs_at] is not False:  # (the default needs no conversion)
            rule = FLASH_ATTN_PROBS if flag(args[probs_at], "return_attn_probs") else False
            args = args[:probs_at] + (rule,) + args[probs_at + 1:]
        res = fn(*args)
    except (FlashAttnValueError, FlashAttnTypeError):
        raise
    except ValueError as exc:
        raise FlashAttnValueError(str(exc)) from exc
    except TypeError as exc:
        raise FlashAttnTypeError(str(exc)) from exc
    if probs_at < 0 or not isinstance(res, tuple):
        return res
    out, lse, s_dmask = res
    if s_dmask is not None:
        s_dmask = _flash_scaled_s_dmask(s_dmask)
    return out, lse, s_dmask


def flash_attn_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """fn's signature as flash_attn has it: its positional-or-keyword parameters (flash_attn's names, order and
    defaults), without annotations; flash_attn_cy's keyword-only extras (backend, seed) dropped."""
    params = [p.replace(annotation=inspect.Parameter.empty)
              for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    return inspect.Signature(params)


def _drop_in(module: Any, name: str) -> Callable[..., Any]:
    """flash_attn's function `name`: a plain function with ``flash_attn_signature`` of flash_attn_cy's function of
    that name in `module` (one ``def`` generated from the signature, so a call binds its arguments exactly as
    flash_attn's own function would, at no cost per call), calling it positionally under `_call`'s rules, on its
    default backend. The function is looked up in `module` at call time (a spy or debugging hook set there sees it)."""
    fn = getattr(module, name)
    sig = flash_attn_signature(fn)
    names = list(sig.parameters)
    probs_at = names.index("return_attn_probs") if "return_attn_probs" in names else -1
    namespace = {"_call": _call, "_module": module}
    arglist = ", ".join(names)
    exec(f"def {name}({arglist}):\n    return _call(_module.{name}, ({arglist},), {probs_at})\n", namespace)
    wrapper = namespace[name]
    wrapper.__defaults__ = tuple(p.default for p in sig.parameters.values() if p.default is not p.empty) or None
    wrapper.__module__ = __name__
    wrapper.__qualname__ = name
    wrapper.__doc__ = (f"flash_attn 2.8.3's ``{name}``, run by ``{module.__name__}.{name}`` (the same arguments "
                       "without its keyword-only extras; its errors are also RuntimeError).\n\n" + inspect.getdoc(fn))
    return wrapper


flash_attn_func = _drop_in(_interface, "flash_attn_func")
flash_attn_qkvpacked_func = _drop_in(_interface, "flash_attn_qkvpacked_func")
flash_attn_kvpacked_func = _drop_in(_interface, "flash_attn_kvpacked_func")
flash_attn_varlen_func = _drop_in(_interface, "flash_attn_varlen_func")
flash_attn_varlen_qkvpacked_func = _drop_in(_interface, "flash_attn_varlen_qkvpacked_func")
flash_attn_varlen_kvpacked_func = _drop_in(_interface, "flash_attn_varlen_kvpacked_func")
flash_attn_with_kvcache = _drop_in(_kvcache, "flash_attn_with_kvcache")
