"""Decode: one new query token against a long K/V cache (flash_attn_with_kvcache), the memory-bound case.

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

Decode = benchmark_class("Decode", __name__)
