"""flash_attn_cy's stand-in for Dao-AILab ``flash_attn`` 2.x.

After the explicit opt-in ``flash_attn_cy.install_as_flash_attn()`` (or ``FLASH_ATTN_CY_AS_FLASH_ATTN=1`` with a
regular install), ``import flash_attn`` loads THIS package under the name ``flash_attn``, so code written for
flash_attn (``from flash_attn import flash_attn_func``, ``from flash_attn.bert_padding import unpad_input``,
``from flash_attn.layers.rotary import apply_rotary_emb``) runs unchanged on flash_attn_cy. A real flash_attn
that is installed is never shadowed unless ``force=True`` is passed.

Versions, honestly:
- ``__version__`` is the flash_attn API level these modules reproduce (signatures, defaults, return values of the
  released flash_attn 2.8.3), because model code compares it to decide which keywords it may pass.
- ``__flash_attn_cy_version__`` is the version of the flash_attn_cy package that actually runs.
- While the alias is installed, and only when no real flash_attn package or distribution exists,
  ``importlib.metadata.version("flash_attn")`` answers ``2.8.3+flash_attn_cy.<version>`` (from the alias's finder;
  nothing is written to disk), so libraries that gate on the installed version (diffusers) can use the drop-in.
  transformers' ``attn_implementation="flash_attention_2"`` still needs CUDA; use
  ``flash_attn_cy.register_transformers()`` and ``attn_implementation="flash_attn_cy"`` instead.
"""

from __future__ import annotations

from . import flash_attn_interface as _interface
from ._alias import FLASH_ATTN_API_LEVEL, flash_attn_cy_version

__version__ = FLASH_ATTN_API_LEVEL
__flash_attn_cy_version__ = flash_attn_cy_version()

# flash_attn's package exports its interface module's public functions: bound here by that module's own list (this
# package is only ever imported as `flash_attn`, at run time, so no static import list is needed for tools).
__all__ = list(_interface._PUBLIC_FUNCTIONS)
globals().update({name: getattr(_interface, name) for name in __all__})
