"""``flash_attn.bert_padding`` served by flash_attn_cy (see :mod:`flash_attn_cy.bert_padding`)."""

from flash_attn_cy.bert_padding import (  # noqa: F401  (re-exported API)
    index_first_axis,
    index_put_first_axis,
    pad_input,
    unpad_input,
    unpad_input_for_concatenated_sequences,
)

__all__ = [
    "index_first_axis",
    "index_put_first_axis",
    "pad_input",
    "unpad_input",
    "unpad_input_for_concatenated_sequences",
]
