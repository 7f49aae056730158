"""The one case table of the benchmarks: every workload that ``python -m flash_attn_cy bench`` and the asv suite
(asv_benchmarks/) time, and the work each one does.

A :class:`Shape` is one workload (sizes, dtype, masks, which public function: ``mode``). The CLI's grids
(``build_shapes`` from its arguments, ``HOST_COST`` for ``--host-cost``) and the asv groups (``GROUPS``: one asv class
each, its parameter axes and the case of every parameter combination) are all written here; the sides that run a
case (sides.py) and the timing (timing.py) are shared by both front ends.

FLOP counts follow flash-attention's benchmarks: forward 4 * b * h * d per attended (query, key) pair (two matrix
products), causal square attention counted as half the pairs; windows and causal non-square attention count the pairs
the mask really keeps (bottom-right aligned); backward 2.5x the forward, forward + backward 3.5x.

This package imports only NumPy at module level and uses flash_attn_cy through its public API only: the asv suite loads
it from the working tree, so that it can time older commits of the package too.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

MODES = ("fwd", "fwd+bwd", "bwd", "decode", "varlen", "generate")
ELEM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Shape:
    """One workload. ``mode``: "fwd" (flash_attn_func), "fwd+bwd" (forward then backward through torch autograd),
    "bwd" (flash_attn_cy.backward given the forward's output), "decode" (flash_attn_with_kvcache: ``seqlen_q`` new
    queries against ``seqlen_k`` cached keys), "varlen" (flash_attn_varlen_func over ``lengths``, ``batch`` =
    ``len(lengths)``, seqlens = the longest) or "generate" (transformers generate() of a tiny Llama: ``seqlen_q``
    prompt tokens, ``seqlen_k`` - ``seqlen_q`` new ones)."""

    batch: int
    heads: int
    seqlen_q: int
    seqlen_k: int
    headdim: int
    dtype: str
    causal: bool
    mode: str = "fwd"
    heads_kv: int = 0  # K/V heads (GQA/MQA when fewer than heads); 0 = heads
    window: Tuple[int, int] = (-1, -1)  # window_size (left, right); (-1, -1) = none
    lengths: Tuple[int, ...] = ()  # varlen: the sequences' lengths
    arrays: str = "numpy"  # what flash_attn_cy is given: "numpy" arrays or "torch" CPU tensors (MPS on a Mac's metal)
    append: bool = False  # decode: the call also appends seqlen_q new K/V rows to the cache (an LLM decode step)
    option: str = ""  # one more call form (OPTIONS), as the host-cost cases time every public form

    def kv_heads(self) -> int:
        return self.heads_kv or self.heads

    def label(self) -> str:
        s = f"{self.seqlen_q}" if self.seqlen_q == self.seqlen_k else f"{self.seqlen_q}x{self.seqlen_k}"
        kv = f"/{self.kv_heads()}" if self.kv_heads() != self.heads else ""
        extra = ""
        if self.window != (-1, -1):
            extra += f" window {self.window[0]},{self.window[1]}"
        if self.mode == "varlen":
            extra += f" {len(self.lengths)} seq{'s' if len(self.lengths) > 1 else ''}"
        if self.arrays != "numpy":
            extra += f" {self.arrays}"
        if self.option:
            extra += f" {self.option}"
        mode = "" if self.mode == "fwd" else " " + self.mode + ("+append" if self.append else "")
        return (f"b{self.batch} h{self.heads}{kv} s{s} d{self.headdim} {self.dtype}"
                f"{' causal' if self.causal else ''}{extra}{mode}")

    def pairs(self) -> float:
        """(query, key) pairs attended, summed over the batch's sequences, per head (flash-attention's convention
        for causal square attention: half of them)."""
        if self.mode == "varlen":
            return float(sum(attended_pairs(n, n, self.causal, self.window) for n in self.lengths))
        return self.batch * attended_pairs(self.seqlen_q, self.seqlen_k, self.causal, self.window)

    def flops(self) -> float:
        if self.mode == "generate":
            return 0.0
        f = 4.0 * self.heads * self.headdim * self.pairs()
        return f * {"fwd+bwd": 3.5, "bwd": 2.5}.get(self.mode, 1.0)


# Shape.option: a call form beyond the plain one (what flash_attn_cy is called with; PyTorch's side in sides.py).
OPTIONS = {
    "alibi": "alibi_slopes (nheads,)",
    "dropout": "dropout_p=0.1",
    "probs": "return_attn_probs=True",
    "window": "window_size=(4, 0)",
    "softcap": "softcap=30.0",
    "qkvpacked": "the qkvpacked variant",
    "kvpacked": "the kvpacked variant",
    "paged": "a paged cache (block_table, pages of 16 rows)",
    "rotary": "rotary_cos/rotary_sin over the whole head dim",
    "leftpad": "cache_leftpad (one row of left padding)",
    "batch_idx": "cache_batch_idx",
}


def visible_pairs(seqlen_q: int, seqlen_k: int, causal: bool, window: Tuple[int, int] = (-1, -1)) -> int:
    """Number of (query, key) pairs the mask keeps (bottom-right aligned masks, flash_attn semantics)."""
    left, right = window
    if causal:
        right = 0
    if left < 0 and right < 0:
        return seqlen_q * seqlen_k
    i = np.arange(seqlen_q, dtype=np.int64) + (seqlen_k - seqlen_q)
    lo = np.zeros_like(i) if left < 0 else np.maximum(0, i - left)
    hi = np.full_like(i, seqlen_k - 1) if right < 0 else np.minimum(seqlen_k - 1, i + right)
    return int(np.maximum(0, hi - lo + 1).sum())


def attended_pairs(seqlen_q: int, seqlen_k: int, causal: bool, window: Tuple[int, int] = (-1, -1)) -> float:
    """Pairs counted for FLOP rates: causal square attention without a window as half of seqlen^2 (flash-attention's
    benchmarks), every other case exactly (visible_pairs)."""
    if causal and seqlen_q == seqlen_k and window == (-1, -1):
        return seqlen_q * seqlen_k / 2
    return float(visible_pairs(seqlen_q, seqlen_k, causal, window))


def kv_bytes(shape: Shape) -> float:
    """Bytes of K and V one call must read: what bounds decode (one query against a long cache)."""
    return 2.0 * shape.batch * shape.kv_heads() * shape.seqlen_k * shape.headdim * ELEM_BYTES[shape.dtype]


# --------------------------------------------------------------------------------------------------------------------
# The CLI's grids

DEFAULT_SEQLENS = (512, 2048, 4096)
DEFAULT_HEADDIMS = (64, 128)
DEFAULT_DTYPES = ("fp32", "bf16")
QUICK_SEQLENS = (512, 2048)
QUICK_HEADDIMS = (64,)


def build_shapes(seqlens: Sequence[int], headdims: Sequence[int], dtypes: Sequence[str], causal: Sequence[bool],
                 batch: int, heads: int, backward: bool = False, decode: bool = False,
                 heads_kv: int = 0) -> List[Shape]:
    """``bench``'s grid: every dtype x head dim x seqlen x causal (decode: seqlen = the cache length)."""
    shapes = []
    for dtype, d, s, c in itertools.product(dtypes, headdims, seqlens, causal):
        if decode:
            shapes.append(Shape(batch, heads, 1, s, d, dtype, c, "decode", heads_kv))
        else:
            shapes.append(Shape(batch, heads, s, s, d, dtype, c, "fwd+bwd" if backward else "fwd"))
    return shapes


# Host cost per call (``bench --host-cost`` and asv's HostCost): tiny shapes, so that a call's time is the front end's
# (argument checks, plan, dispatch), not the kernels'. An LLM decoding a token calls attention once per layer.
HOST_COST_SEQLENS = (1, 16)
HOST_COST_CALLS = {  # name -> (what it times, case of one seqlen)
    "func-torch": ("flash_attn_func, torch tensors",
                   lambda s: Shape(1, 4, s, s, 64, "fp32", True, heads_kv=2, arrays="torch")),
    "func-numpy": ("flash_attn_func, NumPy arrays",
                   lambda s: Shape(1, 4, s, s, 64, "fp32", True, heads_kv=2)),
    "kvcache-decode": ("flash_attn_with_kvcache, 1 query against a cache of seqlen keys, torch tensors",
                       lambda s: Shape(1, 4, 1, s, 64, "fp32", True, "decode", heads_kv=2, arrays="torch")),
    "kvcache-append": ("flash_attn_with_kvcache appending 1 new K/V row, then attending (an LLM decode step; "
                       "PyTorch's side copies the row into its cache, then SDPA), torch tensors",
                       lambda s: Shape(1, 4, 1, s, 64, "fp32", True, "decode", heads_kv=2, arrays="torch",
                                       append=True)),
    "varlen": ("flash_attn_varlen_func, 1 sequence, torch tensors",
               lambda s: Shape(1, 4, s, s, 64, "fp32", True, "varlen", heads_kv=2, lengths=(s,), arrays="torch")),
}


def _host_cost_forms() -> None:
    """One more host-cost case per public call form (torch tensors). PyTorch's side computes the same attention
    (sides.py): SDPA on the same shapes with the feature as SDPA takes it (ALiBi, the window and cache_leftpad as a
    precomputed attn_mask, dropout_p); softcap and the probabilities, which SDPA lacks, step by step (matmul, softcap,
    mask, softmax, matmul: transformers' eager attention); rotary as the new key and the query rotated by torch ops,
    then SDPA; a paged cache or cache_batch_idx as SDPA on the dense cache; the packed variants as SDPA on contiguous
    q, k, v; varlen as SDPA on the equivalent padded batch (one sequence: no padding)."""
    def fwd(option, heads_kv=2):
        return lambda s: Shape(1, 4, s, s, 64, "fp32", True, heads_kv=heads_kv, arrays="torch", option=option)

    def varlen(option, heads_kv=2):
        return lambda s: Shape(1, 4, s, s, 64, "fp32", True, "varlen", heads_kv=heads_kv, lengths=(s,),
                               arrays="torch", option=option)

    def decode(option, append=True):
        return lambda s: Shape(1, 4, 1, s, 64, "fp32", True, "decode", heads_kv=2, arrays="torch", append=append,
                               option=option)

    for option in ("alibi", "dropout", "probs", "window", "softcap"):
        HOST_COST_CALLS[f"func-{option}"] = (f"flash_attn_func with {OPTIONS[option]}, torch tensors", fwd(option))
    HOST_COST_CALLS["func-qkvpacked"] = ("flash_attn_qkvpacked_func (4 heads), torch tensors", fwd("qkvpacked", 4))
    HOST_COST_CALLS["func-kvpacked"] = ("flash_attn_kvpacked_func, torch tensors", fwd("kvpacked"))
    HOST_COST_CALLS["varlen-numpy"] = ("flash_attn_varlen_func, 1 sequence, NumPy arrays",
                                       lambda s: replace(varlen("")(s), arrays="numpy"))
    HOST_COST_CALLS["varlen-qkvpacked"] = ("flash_attn_varlen_qkvpacked_func (4 heads), 1 sequence, torch tensors",
                                           varlen("qkvpacked", 4))
    HOST_COST_CALLS["varlen-kvpacked"] = ("flash_attn_varlen_kvpacked_func, 1 sequence, torch tensors",
                                          varlen("kvpacked"))
    HOST_COST_CALLS["varlen-paged"] = ("flash_attn_varlen_func with a block_table (pages of 16 rows), 1 sequence, "
                                       "torch tensors", varlen("paged"))
    HOST_COST_CALLS["varlen-alibi"] = ("flash_attn_varlen_func with alibi_slopes, 1 sequence, torch tensors",
                                       varlen("alibi"))
    for option in ("rotary", "leftpad", "paged", "batch_idx", "alibi"):
        HOST_COST_CALLS[f"kvcache-{option}"] = (
            f"flash_attn_with_kvcache appending 1 row with {OPTIONS[option]} (PyTorch: the row copied into its cache, "
            "then SDPA), torch tensors", decode(option))


_host_cost_forms()


def host_cost_shapes(seqlens: Sequence[int] = HOST_COST_SEQLENS) -> List[Tuple[str, Shape]]:
    return [(name, make(s)) for name, (_, make) in HOST_COST_CALLS.items() for s in seqlens]


# --------------------------------------------------------------------------------------------------------------------
# The asv groups

# What each benchmark method of a group measures, and the unit asv prints for track_* (time_* and peakmem_* are asv's).
METRICS = {
    "gflops": "GFLOP/s",  # Shape.flops() / median time of the implementation's calls
    "useful_gflops": "GFLOP/s",  # the same, named so for varlen (the padded baseline does more work than counted)
    "bandwidth": "GB/s",  # kv_bytes / median time
    "host_us": "us",  # median time per call, microseconds (host cost: tiny shapes)
    "sdpa_host_us": "us",  # PyTorch SDPA's median time per call on the same shapes
    "ratio_to_sdpa": "ratio",  # ours / SDPA per call, timed in alternating rounds in one process (<= 1: no costlier)
}

CPU_ISAS = ("portable", "avx2", "avx512", "amx", "neon")  # FLASH_ATTN_CY_CPU_ISA's values ("cpu:<set>" sides)
CPU_KERNEL_SETS = ("amx", "avx512", "avx2", "neon")  # the fast ones, each an asv series of CpuKernelSets

IMPLS_ALL = "all"  # every flash_attn_cy backend present (the simulator aside) and the baselines (sides.BASELINES)
IMPLS_OURS = "ours"  # flash_attn_cy's backends only: no baseline has the feature
IMPLS_SIM = "sim"  # the simulator only, on tiny shapes; not an axis


@dataclass(frozen=True)
class Group:
    """One asv class. ``axes``: its parameters after the implementation axis (name, values); ``case(**params)`` the
    workload of one combination; ``impl_axis``: "impl" over ``impls`` (IMPLS_*), or a group's own (name, values)."""

    name: str
    doc: str
    axes: Tuple[Tuple[str, tuple], ...]
    case: Callable[..., Shape]
    time_method: str  # "time_forward", ...: asv's wall time of one call
    tracks: Tuple[str, ...] = ()  # track_<metric> methods, metric from METRICS
    peakmem_method: str = ""
    impls: str = IMPLS_ALL
    impl_axis: Tuple[str, tuple] = ()  # set: the group names its own implementations (TinyLlamaGenerate)
    timeout: int = 300
    repeat: Tuple = (2, 10, 4.0)  # asv: 2 to 10 samples, ~4 s per round (asv's default allows 20 s)
    metadata: Dict = field(default_factory=dict)

    def combinations(self) -> List[Dict]:
        names = [n for n, _ in self.axes]
        return [dict(zip(names, values)) for values in itertools.product(*(v for _, v in self.axes))]

    def shapes(self) -> List[Shape]:
        return [self.case(**params) for params in self.combinations()]


VARLEN_PATTERN = (1.0, 0.25, 0.6, 0.05, 0.8, 0.4)  # uneven lengths, as in a serving batch: fractions of max_seqlen


def varlen_lengths(max_seqlen: int) -> Tuple[int, ...]:
    return tuple(max(1, int(f * max_seqlen)) for f in VARLEN_PATTERN)


def _varlen_case(max_seqlen: int) -> Shape:
    lengths = varlen_lengths(max_seqlen)
    return Shape(len(lengths), 8, max(lengths), max(lengths), 64, "bf16", True, "varlen", lengths=lengths)


SIM_SEQLEN, SIM_CACHE_LEN = 128, 1024
SIM_CASES = {
    "forward": Shape(1, 2, SIM_SEQLEN, SIM_SEQLEN, 64, "fp16", False),
    "forward_causal": Shape(1, 2, SIM_SEQLEN, SIM_SEQLEN, 64, "fp16", True),
    "backward": Shape(1, 2, SIM_SEQLEN, SIM_SEQLEN, 64, "fp16", True, "bwd"),
    "varlen": Shape(2, 2, SIM_SEQLEN * 3 // 4, SIM_SEQLEN * 3 // 4, 64, "fp16", True, "varlen",
                    lengths=(SIM_SEQLEN // 4, SIM_SEQLEN * 3 // 4)),
    "decode": Shape(1, 2, 1, SIM_CACHE_LEN, 64, "fp16", True, "decode"),
}

# transformers generate() of a tiny random Llama (no download): PROMPT tokens, then NEW_TOKENS greedy ones per row
TINY_LLAMA = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  max_position_embeddings=1024)
PROMPT, NEW_TOKENS = 128, 32


def _generate_case(batch: int) -> Shape:
    return Shape(batch, 8, PROMPT, PROMPT + NEW_TOKENS, TINY_LLAMA["hidden_size"] // 8, "fp32", True, "generate",
                 heads_kv=2)


GROUPS: Dict[str, Group] = {g.name: g for g in [
    Group("Forward", "dtype x head dim x causal at 2048 tokens, batch 1, 4 heads.",
          (("dtype", ("fp32", "fp16", "bf16")), ("headdim", (64, 128)), ("causal", (False, True))),
          lambda dtype, headdim, causal: Shape(1, 4, 2048, 2048, headdim, dtype, causal),
          "time_forward", ("gflops",)),
    Group("SeqlenScaling", "Causal bf16 forward from 512 to 16k tokens (head dim 64, 2 heads keep the 16k CPU runs "
          "to seconds).",
          (("seqlen", (512, 2048, 8192, 16384)),),
          lambda seqlen: Shape(1, 2, seqlen, seqlen, 64, "bf16", True),
          "time_forward", ("gflops",), timeout=600),
    Group("GroupedQuery", "GQA/MQA: 8 query heads sharing 8, 2 or 1 key/value heads (causal bf16, 2048 tokens, head "
          "dim 128).",
          (("kv_heads", (8, 2, 1)),),
          lambda kv_heads: Shape(1, 8, 2048, 2048, 128, "bf16", True, heads_kv=kv_heads),
          "time_forward", ("gflops",)),
    Group("SlidingWindow", "Local attention: time should scale with the window, not with seqlen^2. flash_attn_cy "
          "only (no baseline has windows).",
          (("window_left", (256, 1024, -1)),),
          lambda window_left: Shape(1, 4, 4096, 4096, 64, "fp16", True,
                                    window=(window_left, 0) if window_left >= 0 else (-1, -1)),
          "time_forward", ("gflops",), impls=IMPLS_OURS),
    Group("Varlen", "Packed variable-length batch (six uneven sequences) against the padded+masked batch users build "
          "without a varlen kernel; GFLOP/s count only useful work.",
          (("max_seqlen", (512, 2048)),), _varlen_case, "time_forward", ("useful_gflops",)),
    Group("Decode", "One new query token against a long K/V cache (flash_attn_with_kvcache), the memory-bound case: "
          "GB/s of K/V read. 32 query heads over 8 (GQA) or 32 K/V heads.",
          (("dtype", ("fp16", "bf16", "fp32")), ("cache_len", (4096, 16384, 65536)), ("kv_heads", (8, 32))),
          lambda dtype, cache_len, kv_heads: Shape(1, 32, 1, cache_len, 128, dtype, True, "decode", kv_heads),
          "time_decode", ("bandwidth",)),
    Group("Backward", "Gradients of q, k, v given the forward's output: flash_attn_cy.backward, SDPA's autograd on a "
          "retained graph, MLX's mx.vjp (which re-runs the forward).",
          (("dtype", ("fp32", "bf16")), ("headdim", (64, 128)), ("causal", (True, False))),
          lambda dtype, headdim, causal: Shape(1, 4, 1024, 1024, headdim, dtype, causal, "bwd"),
          "time_backward", ("gflops",)),
    Group("PeakMemory", "Peak RSS of one causal forward: grows like the inputs (linearly in seqlen), not like the "
          "seqlen x seqlen score matrix. Compare the growth across seqlen, not the absolute value.",
          (("seqlen", (1024, 4096, 16384)),),
          lambda seqlen: Shape(1, 2, seqlen, seqlen, 64, "fp32", True),
          "", peakmem_method="peakmem_forward", timeout=600),
    Group("Simulator", "The Metal kernels under the simulator (a correctness tool), tiny shapes: the simulator's own "
          "speed, and every kernel family running end to end.",
          (("kernel", tuple(SIM_CASES)),), lambda kernel: SIM_CASES[kernel],
          "time_kernel", impls=IMPLS_SIM, repeat=(1, 5, 4.0)),
    Group("TinyLlamaGenerate", "transformers generate() of a tiny random Llama with attn_implementation "
          "flash_attn_cy beside sdpa (CPU, fp32): integration overhead as much as kernel speed.",
          (("batch", (1, 4)),), _generate_case, "time_generate",
          impl_axis=("attn_implementation", ("flash_attn_cy", "sdpa")), repeat=(1, 5, 4.0)),
    Group("CpuKernelSets", "The CPU backend once per kernel set this CPU runs (FLASH_ATTN_CY_CPU_ISA: AMX tiles, "
          "AVX-512, AVX2) beside PyTorch SDPA, at 2048 tokens, batch 1, 8 heads: the AVX-512 series stays measured on "
          "machines where AMX is the default, so that neither path regresses unseen. A set the CPU cannot run is n/a.",
          (("dtype", ("fp32", "fp16", "bf16")), ("headdim", (64, 128))),
          lambda dtype, headdim: Shape(1, 8, 2048, 2048, headdim, dtype, False),
          "time_forward", ("gflops",),
          impl_axis=("kernel_set", tuple(f"cpu:{isa}" for isa in CPU_KERNEL_SETS) + ("torch-sdpa-cpu",))),
    Group("HostCost", "Host time per call at tiny shapes (1 thread, CPU backend): flash_attn_cy's front end against "
          "PyTorch SDPA's on the same shapes, in one process.",
          (("call", tuple(HOST_COST_CALLS)), ("seqlen", HOST_COST_SEQLENS)),
          lambda call, seqlen: HOST_COST_CALLS[call][1](seqlen),
          "time_call", ("host_us", "sdpa_host_us", "ratio_to_sdpa"), impls="", repeat=(2, 10, 2.0)),
]}


def shrink(shape: Shape, seqlen: int = 64, cache_len: int = 96, new_tokens: int = 2, prompt: int = 8) -> Shape:
    """A small version of ``shape`` (same mode, features and dtype): what a warm-up call or a smoke test runs."""
    if shape.mode == "generate":
        return replace(shape, seqlen_q=min(shape.seqlen_q, prompt), seqlen_k=min(shape.seqlen_q, prompt) + new_tokens)
    if shape.mode == "decode":
        return replace(shape, seqlen_k=min(shape.seqlen_k, cache_len))
    if shape.mode == "varlen":
        top = max(shape.lengths)
        lengths = tuple(max(1, n * min(top, seqlen) // top) for n in shape.lengths)
        return replace(shape, seqlen_q=max(lengths), seqlen_k=max(lengths), lengths=lengths)
    return replace(shape, seqlen_q=min(shape.seqlen_q, seqlen), seqlen_k=min(shape.seqlen_k, seqlen))


def describe(group: Group) -> str:
    """A stable text of everything a group measures (asv's benchmark version: a change here starts a new series)."""
    parts = [group.name, repr(group.axes), repr(group.impl_axis), group.impls]
    parts += [s.label() + f" {s.window} {s.lengths}" for s in group.shapes()]
    return "\n".join(parts)


def group_names(kind: Optional[str] = None) -> List[str]:
    return [n for n, g in GROUPS.items() if kind is None or g.impls == kind]
