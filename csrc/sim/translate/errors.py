"""TranslateError: the one exception the MSL translator raises.

Inside the package (``flash_attn_cy.sim.translate``) it is ``flash_attn_cy.errors.TranslateError``, declared there with
the package's other exceptions. The build runs the translator outside the package (``csrc/sim/meson.build``: python
``csrc/sim/translate/__main__.py``, standard library only), where this stand-in of the same name takes its place.
"""

from __future__ import annotations

if __package__ and __package__.startswith("flash_attn_cy."):
    from ...errors import TranslateError
else:
    class TranslateError(ValueError):
        """See flash_attn_cy/errors.py."""

__all__ = ["TranslateError"]
