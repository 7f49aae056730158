"""Apple GPUs for the simulator's roofline (``sim profile --chip``, ``Profile.roofline``): peak FP32 and FP16 rates,
memory bandwidth and GPU core count of each M-series chip (top GPU configuration of each).

Sources (each entry names its own):
- GPU cores and memory bandwidth: Apple's press releases (apple.com/newsroom), as cited per entry.
- FP32 rate: Apple's own figure where it published one (M1 family, in the press release or the keynote); otherwise
  DERIVED as GPU cores x 128 FP32 ALUs per core x 2 flops per fused multiply-add x GPU clock. 128 ALUs per core is
  what Apple's M1 figure implies (8 cores x 128 x 2 x 1.278 GHz = 2.6 TFLOPS); GPU clocks are not published by Apple
  and come from third-party measurements (notebookcheck / hmc-tech GPU database: 1.278 GHz M1, 1.296 GHz M1
  Pro/Max/Ultra, 1.398 GHz M2 and M3 families, 1.470 GHz M4 and M4 Pro, 1.678 GHz M4 Max, 1.740 GHz M5).
- FP16 rate: equal to the FP32 rate on M1 to M4 (each ALU runs one FP16 or one FP32 FMA per cycle: philipturner/
  metal-benchmarks, and the project's facts table). M5 adds a "Neural Accelerator" to every GPU core (Apple, M5
  press release), reached through Metal 4 tensor operations; simdgroup_matrix code (what these kernels use) runs on
  the ALUs as far as public information says, so M5's FP16 entry is its ALU rate too.
- bfloat16 has no published rate: the roofline gives it the faster of the FP16 and FP32 rates, so that the time it
  prints stays a lower bound.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional

__all__ = ["Chip", "CHIPS", "chip", "chip_names"]


@dataclasses.dataclass(frozen=True)
class Chip:
    """One Apple GPU: peak rates in TFLOP/s, memory bandwidth in GB/s (10^9 bytes per second)."""

    name: str
    gpu_cores: int
    fp32_tflops: float
    fp16_tflops: float
    bandwidth_gbs: float
    fp32_source: str  # "apple" (published) or "derived" (cores x 128 ALUs x 2 x clock)


def _derived(cores: int, clock_ghz: float) -> float:
    """cores x 128 FP32 ALUs x 2 flops (FMA) x clock, in TFLOP/s (see the module docstring)."""
    return round(cores * 128 * 2 * clock_ghz / 1000.0, 2)


_LIST: List[Chip] = [
    # M1: 8-core GPU, "2.6 teraflops of throughput" (apple.com/newsroom/2020/11/apple-unleashes-m1). Bandwidth not in
    # the release: 128-bit LPDDR4X-4266 = 68.25 GB/s, consistent with Apple's M2 release (100 GB/s is "50 percent more
    # than M1") and M1 Pro release (200 GB/s is "nearly 3x" M1).
    Chip("M1", 8, 2.6, 2.6, 68.25, "apple"),
    # M1 Pro: up to 16-core GPU, 200 GB/s; M1 Max: up to 32-core GPU, 400 GB/s
    # (apple.com/newsroom/2021/10/introducing-m1-pro-and-m1-max-the-most-powerful-chips-apple-has-ever-built);
    # 5.2 and 10.4 TFLOPS: Apple's keynote of 2021-10-18 (as reported, e.g. stuff.co.za).
    Chip("M1 Pro", 16, 5.2, 5.2, 200.0, "apple"),
    Chip("M1 Max", 32, 10.4, 10.4, 400.0, "apple"),
    # M1 Ultra: 64-core GPU, 800 GB/s (apple.com/newsroom/2022/03/apple-unveils-m1-ultra-the-worlds-most-powerful-
    # chip-for-a-personal-computer); 21 TFLOPS: Apple's keynote of 2022-03-08 (derived: 64 x 256 x 1.296 = 21.2).
    Chip("M1 Ultra", 64, 21.0, 21.0, 800.0, "apple"),
    # M2: 10-core GPU, 100 GB/s (apple.com/newsroom/2022/06/apple-unveils-m2-with-breakthrough-performance-and-
    # capabilities). Rate derived at 1.398 GHz.
    Chip("M2", 10, _derived(10, 1.398), _derived(10, 1.398), 100.0, "derived"),
    # M2 Pro: up to 19-core GPU, 200 GB/s; M2 Max: up to 38-core GPU, 400 GB/s
    # (apple.com/newsroom/2023/01/apple-unveils-m2-pro-and-m2-max-next-generation-chips-for-next-level-workflows).
    Chip("M2 Pro", 19, _derived(19, 1.398), _derived(19, 1.398), 200.0, "derived"),
    Chip("M2 Max", 38, _derived(38, 1.398), _derived(38, 1.398), 400.0, "derived"),
    # M2 Ultra: up to 76-core GPU, 800 GB/s (apple.com/newsroom/2023/06/apple-introduces-m2-ultra).
    Chip("M2 Ultra", 76, _derived(76, 1.398), _derived(76, 1.398), 800.0, "derived"),
    # M3: 10-core GPU, 100 GB/s; M3 Pro: up to 18-core GPU, 150 GB/s; M3 Max: up to 40-core GPU, 400 GB/s (300 GB/s
    # with 30 cores) (apple.com/newsroom/2023/10/apple-unveils-m3-m3-pro-and-m3-max-the-most-advanced-chips-for-a-
    # personal-computer). Rates derived at 1.398 GHz.
    Chip("M3", 10, _derived(10, 1.398), _derived(10, 1.398), 100.0, "derived"),
    Chip("M3 Pro", 18, _derived(18, 1.398), _derived(18, 1.398), 150.0, "derived"),
    Chip("M3 Max", 40, _derived(40, 1.398), _derived(40, 1.398), 400.0, "derived"),
    # M3 Ultra: up to 80-core GPU, 819 GB/s ("more than 800GB/s") (apple.com/newsroom/2025/03/apple-reveals-m3-ultra-
    # taking-apple-silicon-to-a-new-extreme).
    Chip("M3 Ultra", 80, _derived(80, 1.398), _derived(80, 1.398), 819.0, "derived"),
    # M4: 10-core GPU, 120 GB/s (apple.com/newsroom/2024/05/apple-introduces-m4-chip). M4 Pro: up to 20-core GPU,
    # 273 GB/s; M4 Max: up to 40-core GPU, 546 GB/s (apple.com/newsroom/2024/10/apple-introduces-m4-pro-and-m4-max).
    # Rates derived at 1.470 GHz (M4, M4 Pro) and 1.678 GHz (M4 Max). No M4 Ultra was released.
    Chip("M4", 10, _derived(10, 1.470), _derived(10, 1.470), 120.0, "derived"),
    Chip("M4 Pro", 20, _derived(20, 1.470), _derived(20, 1.470), 273.0, "derived"),
    Chip("M4 Max", 40, _derived(40, 1.678), _derived(40, 1.678), 546.0, "derived"),
    # M5: 10-core GPU with a Neural Accelerator in each core, 153 GB/s (apple.com/newsroom/2025/10/apple-unleashes-m5-
    # the-next-big-leap-in-ai-performance-for-apple-silicon). M5 Pro: up to 20-core GPU, 307 GB/s; M5 Max: up to
    # 40-core GPU, 614 GB/s (Apple's M5 Pro / M5 Max press release of 2026-03-03). Rates derived at 1.740 GHz, the
    # M5's measured clock; the Pro and Max clocks are not known: assumed equal.
    Chip("M5", 10, _derived(10, 1.740), _derived(10, 1.740), 153.0, "derived"),
    Chip("M5 Pro", 20, _derived(20, 1.740), _derived(20, 1.740), 307.0, "derived"),
    Chip("M5 Max", 40, _derived(40, 1.740), _derived(40, 1.740), 614.0, "derived"),
]

CHIPS: Dict[str, Chip] = {c.name: c for c in _LIST}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_BY_KEY = {_key(c.name): c for c in _LIST}


def chip_names() -> List[str]:
    """The chip names, oldest first."""
    return [c.name for c in _LIST]


def chip(name: str) -> Chip:
    """The chip called ``name`` ("M4 Max", "m4-max", "M4_MAX" alike); ValueError naming the known chips otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"chip must be a str such as 'M4 Max', got {type(name).__name__}")
    found: Optional[Chip] = _BY_KEY.get(_key(name))
    if found is None:
        raise ValueError(f"chip: unknown Apple GPU {name!r}; known: {', '.join(chip_names())}")
    return found
