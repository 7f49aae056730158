"""Variable-length batches (flash_attn_varlen_func) against the padded + masked batch of SDPA.

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

Varlen = benchmark_class("Varlen", __name__)
