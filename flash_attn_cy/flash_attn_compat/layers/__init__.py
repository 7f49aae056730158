"""``flash_attn.layers`` served by flash_attn_cy: only ``rotary`` is provided."""
