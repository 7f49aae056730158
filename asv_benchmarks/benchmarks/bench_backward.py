"""Backward: gradients of q, k, v given the forward's output (and, for ours, its log-sum-exp).

GFLOP/s use FlashAttention-2's convention: backward = 2.5x the forward's matrix-product FLOPs. MLX's time includes one
forward (mx.vjp re-runs it: MLX keeps no graph); flagged, not subtracted.

The cases are the table's (flash_attn_cy/_bench/cases.py: GROUPS); the classes are generated in _common.py."""
from ._common import benchmark_class

Backward = benchmark_class("Backward", __name__)
