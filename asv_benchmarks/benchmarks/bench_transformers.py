"""transformers generate() of a tiny random Llama (no download) with attn_implementation "flash_attn_cy" beside
"sdpa", CPU, fp32; n/a when transformers is not installed (asv.conf.json installs it in asv's environments).

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

TinyLlamaGenerate = benchmark_class("TinyLlamaGenerate", __name__)
