"""``flash_attn.bert_padding`` served by flash_attn_cy (see :mod:`flash_attn_cy.bert_padding`)."""

from flash_attn_cy import bert_padding as _impl
from flash_attn_cy.bert_padding import *  # noqa: F401,F403  (re-exported API: the names of its __all__)

__all__ = list(_impl.__all__)
