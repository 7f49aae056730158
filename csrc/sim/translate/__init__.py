"""MSL -> C++ source pass of the Metal simulator (the simulator's build tool; also imported at run time as
``flash_attn_cy.sim.translate``).

The MSL subset described in ``kernels/README.md`` is C++ except for a few constructs. A file goes through:

* the preprocessor (preprocess.py): #include of local headers, macros, #if, -D values; `<metal_*>` includes become
  the compatibility header, any other system header is an #error where it is reached;
* the translator (translator.py), which rewrites what C++ cannot express: `[[...]]` attributes are read and removed,
  address spaces are erased (execution) or become clang address spaces 1/2/3 (strict check), `threadgroup T x[N];`
  becomes per-threadgroup storage, swizzles and half literals become calls, function constants become accessors of
  the launch's values (function_constants.py);
* kernels (kernels.py): every entry point (plain, or an explicit instantiation of a template, named by its
  `[[host_name]]`) gets a trampoline that binds `[[buffer(n)]]` parameters to the launch's buffers and id parameters
  to the current thread's ids, and is registered under its Metal function name (emit.py).

Anything else the simulator cannot run faithfully is a :class:`TranslateError` naming the construct and line.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from .errors import TranslateError
from .model import FunctionConstant, KernelEntry, Translation
from .preprocess import preprocess
from .translator import Translator

__all__ = ["TranslateError", "Translation", "KernelEntry", "FunctionConstant", "translate", "translate_file"]


def translate(source: str, path: str = "<source>.metal", include_dirs: Sequence[str] = (), mode: str = "exec",
              header: str = "metal_stdlib", defines: Optional[Dict[str, str]] = None,
              kernel: Optional[str] = None) -> Translation:
    """Translate MSL ``source`` (read from ``path``, used for messages and relative includes) to C++.

    ``mode`` is ``"exec"`` (code for the simulator runtime) or ``"check"`` (code for the strict clang pass);
    ``header`` is how the output includes the compatibility header; ``defines`` are extra macros (``-D NAME=VALUE``);
    ``kernel`` registers only the kernel of that Metal function name (the others' templates are not instantiated).
    """
    if mode not in ("exec", "check"):
        raise ValueError(f"mode must be 'exec' or 'check', got {mode!r}")
    src = preprocess(source, path, include_dirs, defines, simulator=mode == "exec")
    tr = Translator(src, mode)
    tr.header = header
    tr.only = kernel
    return tr.run()


def translate_file(path: str, include_dirs: Sequence[str] = (), mode: str = "exec", header: str = "metal_stdlib",
                   defines: Optional[Dict[str, str]] = None) -> Translation:
    """Like :func:`translate` for a file on disk."""
    with open(path, encoding="utf-8") as fh:
        return translate(fh.read(), path, include_dirs, mode, header, defines)
