"""Start-up hook for ``FLASH_ATTN_CY_AS_FLASH_ATTN=1`` (installed in site-packages beside flash_attn_cy_alias.pth).

The .pth line imports this module only when the variable is set. It appends a lazy finder at the END of
``sys.meta_path``: every other finder is asked first, so an installed flash_attn always wins and is never shadowed;
only when nothing else provides ``flash_attn`` does this finder import flash_attn_cy and serve its compat package.
Nothing heavy (numpy, torch, flash_attn_cy) is imported at start-up.
"""

import sys


class _LazyFlashAttnAliasFinder:
    """Serves ``flash_attn`` from flash_attn_cy, importing flash_attn_cy only when ``flash_attn`` is imported."""

    flash_attn_cy_alias = True  # recognised by flash_attn_cy.flash_attn_compat._alias

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "flash_attn":
            return None
        try:
            from flash_attn_cy.flash_attn_compat._alias import alias_spec
        except ImportError:  # flash_attn_cy was uninstalled but this hook stayed behind
            return None
        return alias_spec()

    def find_distributions(self, context=None):
        # Only a lookup of flash_attn by name imports flash_attn_cy; enumerations of every distribution (pip,
        # importers scanning metadata) stay cheap and never see the alias.
        name = getattr(context, "name", None)
        if name is None or name.replace("-", "_").replace(".", "_").lower() != "flash_attn":
            return []
        try:
            from flash_attn_cy.flash_attn_compat._alias import alias_distributions
        except ImportError:
            return []
        return alias_distributions(context)


if not any(getattr(f, "flash_attn_cy_alias", False) for f in sys.meta_path):
    sys.meta_path.append(_LazyFlashAttnAliasFinder())
