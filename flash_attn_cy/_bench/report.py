"""``bench``'s output: the table (ms, rates, ratios, each median with its spread), the host-cost table, JSON, a plot."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import List, Optional, Sequence

import numpy as np

from .cases import HOST_COST_CALLS
from .run import Row, comparison_list
from .sides import TITLES
from .timing import NOISY_SPREAD_PCT


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _layout(header: List[str], body: List[List[str]], left: int = 1) -> List[str]:
    """Columns padded to a common width: the first ``left`` left-aligned (names), the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda r: "  ".join(str(x).rjust(w) if i >= left else str(x).ljust(w)
                              for i, (x, w) in enumerate(zip(r, widths)))
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]


def _noisy_note(rows: Sequence[Row]) -> List[str]:
    noisy = [(row.shape.label(), name) for row in rows for name, pct in row.spread.items()
             if row.ms.get(name) and pct > NOISY_SPREAD_PCT]
    if not noisy:
        return []
    return [f"note: {len(noisy)} timing(s) spread by more than ±{NOISY_SPREAD_PCT:.0f}% (e.g. {noisy[0][1]} on "
            f"{noisy[0][0]}): something else used the CPU meanwhile, and ratios involving them are unreliable; "
            "rerun on a quieter machine, or with a longer --min-time."]


def _notes(rows: Sequence[Row]) -> List[str]:
    notes = [f"  {row.shape.label()}: {be}: {msg}" for row in rows for be, msg in row.notes.items()]
    return ["", "notes:"] + notes if notes else []


def format_table(rows: Sequence[Row], backends: Sequence[str], comparisons, peak: Optional[float]) -> str:
    """The bench table; ``comparisons`` as for run_bench (each gets its own ms and rate columns and one ratio
    column per backend: comparison ms / backend ms)."""
    comparisons = comparison_list(comparisons)
    decode = any(r.shape.mode == "decode" for r in rows)  # decode rows are rated by the bytes of K/V they read
    rate = "GB/s" if decode else "GFLOP/s"
    if decode and not all(r.shape.mode == "decode" for r in rows):
        rate = "GFLOP/s|GB/s"  # a mixed group (the simulator's): GB/s on decode rows, GFLOP/s on the others
    header = ["shape"]
    for be in backends:
        header += [f"{be} ms", f"{be} {rate}"]
        if peak and not decode:
            header.append(f"{be} %mm")
    for c in comparisons:
        header += [f"{c} ms", f"{c} {rate}"]
    header += [f"{c}/{be}" for c in comparisons for be in backends]
    body = []
    for row in rows:
        line = [row.shape.label()]
        by_bytes = row.shape.mode == "decode"
        for be in backends:
            g = row.gflops(be)
            line += [_fmt(row.ms.get(be), ".2f"), _fmt(row.gbps(be) if by_bytes else g, ".1f")]
            if peak and not decode:
                line.append(_fmt(None if g is None else 100 * g / peak, ".0f"))
        for c in comparisons:
            line += [_fmt(row.ms.get(c), ".2f"), _fmt(row.gbps(c) if by_bytes else row.gflops(c), ".1f")]
        for c in comparisons:
            for be in backends:
                a, t = row.ms.get(be), row.ms.get(c)
                line.append(_fmt(None if not a or not t else t / a, ".2f"))
        body.append(line)
    # the spread (half the interquartile range of the timed calls) beside each median: a ratio is only as good
    # as the two medians it divides
    for line, row in zip(body, rows):
        col = 1
        for name in list(backends) + comparisons:
            if row.ms.get(name) and name in row.spread:
                line[col] += f" ±{row.spread[name]:.0f}%"
            col += 3 if (name in backends and peak and not decode) else 2
    out = _layout(header, body) + _notes(rows) + [""]
    out += ["ms = median of the timed calls ± half their interquartile range (in % of the median)."]
    if decode:
        out += ["GB/s = bytes of K and V read per call / time (decode is bound by memory bandwidth)."]
        if rate != "GB/s":
            out += ["GFLOP/s = the FLOPs of the rows other than decode / time."]
    elif peak:
        out += [f"<backend> %mm = share of the measured fp32 matrix-multiply peak ({peak:.1f} GFLOP/s); bf16/fp16 "
                "kernels can exceed 100 with 16-bit dot-product instructions."]
    out += _noisy_note(rows)
    for c in comparisons:
        if c == "copy":
            out += ["copy/<backend> = copy ms / backend ms: the backend's K/V read rate as a share of the rate at which "
                    "a copy of the same bytes runs in this process (PyTorch's threaded copy_, else NumPy's)."]
        else:
            out += [f"{c}/<backend> = {c} ms / backend ms ({TITLES[c]}): above 1 means flash_attn_cy is faster."]
    return "\n".join(out)


def format_host_cost(rows: Sequence[Row], backend: str = "cpu", comparison: str = "torch") -> str:
    """The host-cost table: microseconds per call of each side and their ratio (``backend`` / ``comparison``: at
    most 1 means flash_attn_cy spends no more host time per call than SDPA), then the worst case."""
    ratio = f"{backend}/{comparison}"
    header = ["call", "shape", f"{backend} us", f"{comparison} us", ratio]
    body, worst = [], None
    for row in rows:
        ours, theirs = row.ms.get(backend), row.ms.get(comparison)
        r = ours / theirs if ours and theirs else None
        cells = []
        for name, ms in ((backend, ours), (comparison, theirs)):
            cells.append(_fmt(None if ms is None else ms * 1e3, ".1f") + (f" ±{row.spread[name]:.0f}%"
                                                                        if ms and name in row.spread else ""))
        body.append([row.name, row.shape.label()] + cells + [_fmt(r, ".2f")])
        if r is not None and (worst is None or r > worst[0]):
            worst = (r, row)
    out = _layout(header, body, left=2) + _notes(rows) + [""]
    out += [f"{name}: {what}" for name, (what, _) in HOST_COST_CALLS.items()]
    out += ["us = median time per call in microseconds ± half the interquartile range, 1 thread on both sides: at",
            "     these sizes the attention itself takes about a microsecond, the rest is host time (argument checks,",
            "     plan, dispatch).",
            f"{ratio} = flash_attn_cy's time per call / that of {TITLES.get(comparison, comparison)}, same shapes, "
            "same process:",
            "     at most 1.00 means no more host time per call than SDPA."]
    out += _noisy_note(rows)
    if worst is not None:
        r, row = worst
        verdict = "at most" if r <= 1.0 else "MORE than"
        out += [f"host cost per call: {verdict} SDPA's (worst {ratio} {r:.2f}: {row.name}, {row.shape.label()})"]
    return "\n".join(out)


def to_json(rows: Sequence[Row], meta: dict) -> str:
    data = {"meta": meta, "rows": []}
    for row in rows:
        data["rows"].append({"shape": asdict(row.shape), "label": row.shape.label(), "name": row.name,
                             "flops": row.shape.flops(), "ms": row.ms,
                             "gflops": {k: row.gflops(k) for k in row.ms},
                             "kv_gbps": {k: row.gbps(k) for k in row.ms}, "notes": row.notes,
                             "spread_pct": row.spread, "calls": row.calls})
    return json.dumps(data, indent=2)


def plot(rows: Sequence[Row], names: Sequence[str], path: str, title: str, peak: Optional[float] = None) -> None:
    """Bar chart of GFLOP/s per shape and implementation, with the fp32 matmul peak as a line (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.shape.label() for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.5))
    for i, name in enumerate(names):
        vals = [r.gflops(name) or 0.0 for r in rows]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    if peak:
        ax.axhline(peak, color="gray", linestyle="--", linewidth=1, label=f"fp32 matmul peak ({peak:.0f})")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("GFLOP/s (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def geomean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
