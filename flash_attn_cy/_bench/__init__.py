"""Benchmarks of flash_attn_cy against PyTorch's scaled_dot_product_attention (and MLX), shared by
``python -m flash_attn_cy bench`` (cli.py) and the asv suite (asv_benchmarks/):

- cases.py: the one case table (every workload either front end times, the asv groups, the work each case does);
- sides.py: a no-argument callable per implementation and case (flash_attn_cy's backends, PyTorch, MLX);
- timing.py: the one timing core (interleaved rounds, medians and spreads);
- run.py: ``bench``'s runs (one Row per case), the host-cost run;
- report.py: ``bench``'s tables, JSON and plot.

The sides time flash_attn_cy through its public API only, and nothing here imports the rest of the package at module
level: the asv suite loads this directory from the working tree to time older builds as well.
"""
from .cases import (DEFAULT_DTYPES, DEFAULT_HEADDIMS, DEFAULT_SEQLENS, GROUPS, HOST_COST_CALLS, HOST_COST_SEQLENS,
                    QUICK_HEADDIMS, QUICK_SEQLENS, Group, Shape, build_shapes, kv_bytes, visible_pairs)
from .report import format_host_cost, format_table, geomean, plot, to_json
from .run import Row, run_bench, run_host_cost, threads
from .sides import (COMPARISONS, CPU_ISAS, comparison_available, cpu_isa_runs, cpu_kernel_set, default_comparisons,
                    make_side)
from .timing import (DECODE_MIN_TIME, DEFAULT_MIN_TIME, HOST_COST_MIN_TIME, interleaved_median_ms, interleaved_times,
                     matmul_peak_gflops, spread_pct)

__all__ = ["DEFAULT_DTYPES", "DEFAULT_HEADDIMS", "DEFAULT_SEQLENS", "GROUPS", "HOST_COST_CALLS", "HOST_COST_SEQLENS",
           "QUICK_HEADDIMS", "QUICK_SEQLENS", "Group", "Shape", "build_shapes", "kv_bytes", "visible_pairs",
           "format_host_cost", "format_table", "geomean", "plot", "to_json", "Row", "run_bench", "run_host_cost",
           "threads", "COMPARISONS", "CPU_ISAS", "comparison_available", "cpu_isa_runs", "cpu_kernel_set",
           "default_comparisons", "make_side",
           "DECODE_MIN_TIME", "DEFAULT_MIN_TIME", "HOST_COST_MIN_TIME", "interleaved_median_ms", "interleaved_times",
           "matmul_peak_gflops", "spread_pct"]
