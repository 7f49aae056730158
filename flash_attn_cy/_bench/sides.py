"""The sides a case is timed on: a no-argument callable per implementation and Shape (cases.py), used by ``bench`` and
the asv suite alike.

Implementations: a flash_attn_cy backend ("cpu", "sim", "metal"; "cpu:avx2" etc. force one of the CPU backend's kernel
sets through FLASH_ATTN_CY_CPU_ISA, which the backend reads on every call), or a library measured beside it:
"torch" (PyTorch's scaled_dot_product_attention on the CPU), "torch-mps" (on Apple's GPU) and "mlx"
(``mx.fast.scaled_dot_product_attention`` on MLX's default device: the GPU on a Mac, the CPU elsewhere); the asv suite
calls them by their older names (ASV_NAMES). TinyLlamaGenerate's sides are "flash_attn_cy" and "sdpa", transformers'
attn_implementation values.

Every side of a case gets the same values (NumPy, seed 0, in flash_attn's [batch, seqlen, heads, dim] layout), each in
its native layout: PyTorch and MLX contiguous [batch, heads, seqlen, dim], made once outside the timed call. GPU sides
wait for their queue (``torch.mps.synchronize``, ``mx.eval``) inside the call; on a Mac the metal backend is given MPS
tensors (no host copies) when PyTorch has MPS. A side that cannot run a case (no sliding window in SDPA, say) raises
NotImplementedError when it is made: the CLI prints "n/a", asv records n/a.
"""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Callable, Dict, List, Optional

import numpy as np

from .cases import CPU_ISAS, TINY_LLAMA, Shape

COMPARISONS = ("torch", "torch-mps", "mlx", "copy")
TITLES = {"torch": "PyTorch SDPA on the CPU", "torch-mps": "PyTorch SDPA on MPS", "mlx": "MLX fast SDPA",
          "copy": "a copy of the decode call's K/V bytes"}
ASV_NAMES = {"torch-sdpa-cpu": "torch", "torch-sdpa-mps": "torch-mps", "mlx": "mlx"}  # asv's impl axis -> ours
GENERATE_SIDES = ("flash_attn_cy", "sdpa")

Side = Callable[[], object]


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def torch_mps_available() -> bool:
    if not (_has_module("torch") and platform.system() == "Darwin"):
        return False
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def comparison_available(name: str) -> Optional[str]:
    """None if comparison ``name`` can run here, else the reason it cannot."""
    if name not in COMPARISONS:
        return f"unknown comparison {name!r} (choose from {', '.join(COMPARISONS)})"
    if name == "copy":
        return None
    if name in ("torch", "torch-mps"):
        if not _has_module("torch"):
            return "PyTorch is not installed"
        if name == "torch-mps" and not torch_mps_available():
            return "PyTorch has no MPS device here (macOS on Apple Silicon only)"
        return None
    if not (_has_module("mlx") and _has_module("mlx.core")):
        return "mlx is not installed (pip install mlx; on Linux mlx[cpu])"
    return None


def default_comparisons(with_torch: bool = True) -> List[str]:
    """PyTorch's CPU SDPA when installed; on a Mac also PyTorch MPS and MLX (the GPU competitors) when present.
    Elsewhere MLX runs on the CPU only and is timed on request (``--compare mlx``)."""
    names = []
    if with_torch and comparison_available("torch") is None:
        names.append("torch")
        if comparison_available("torch-mps") is None:
            names.append("torch-mps")
    if platform.system() == "Darwin" and comparison_available("mlx") is None:
        names.append("mlx")
    return names


# --------------------------------------------------------------------------------------------------------------------
# Inputs

def _np_dtype(name: str):
    if name == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"fp32": np.float32, "fp16": np.float16}[name])


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def flash_inputs(shape: Shape, seed: int = 0) -> Dict[str, np.ndarray]:
    """float32 values of every tensor a case needs, in flash_attn's layouts: q, k, v, dout ([b, s, h, d]; varlen:
    packed [total, h, d]), and for decode with ``append`` the new rows k_new, v_new."""
    rng = np.random.default_rng(seed)
    b, h, hk, d = shape.batch, shape.heads, shape.kv_heads(), shape.headdim
    sq, sk = shape.seqlen_q, shape.seqlen_k
    if shape.mode == "varlen":
        total = sum(shape.lengths)
        dims = {"q": (total, h, d), "k": (total, hk, d), "v": (total, hk, d), "dout": (total, h, d)}
    else:
        dims = {"q": (b, sq, h, d), "k": (b, sk, hk, d), "v": (b, sk, hk, d), "dout": (b, sq, h, d)}
        if shape.mode == "decode" and shape.append:
            dims.update(k_new=(b, sq, hk, d), v_new=(b, sq, hk, d))
    return {name: rng.standard_normal(dim, dtype=np.float32) for name, dim in dims.items()}


def _ours_arrays(backend: str, shape: Shape, values: Dict[str, np.ndarray]) -> Dict[str, object]:
    """The values as flash_attn_cy is given them: NumPy arrays in the case's dtype, torch CPU tensors
    (``arrays="torch"``), or MPS tensors for the metal backend on a Mac (as a PyTorch user there calls it)."""
    if backend == "metal" and torch_mps_available():
        import torch

        return {n: torch.from_numpy(x).to("mps", _torch_dtype(shape.dtype)) for n, x in values.items()}
    if shape.arrays == "torch" or shape.mode == "fwd+bwd":
        import torch

        return {n: torch.from_numpy(x).to(_torch_dtype(shape.dtype)) for n, x in values.items()}
    dt = _np_dtype(shape.dtype)
    return {n: x.astype(dt) for n, x in values.items()}


def _index(values, like):
    """An int32 index array on the same kind of memory as ``like`` (cu_seqlens, cache_seqlens)."""
    values = np.asarray(values, dtype=np.int32)
    if isinstance(like, np.ndarray):
        return values
    import torch

    return torch.from_numpy(values).to(like.device)


# --------------------------------------------------------------------------------------------------------------------
# Sides

def make_side(impl: str, shape: Shape) -> Side:
    """A no-argument callable running one call of ``impl`` on ``shape`` (GPU work waited for inside the call)."""
    impl = ASV_NAMES.get(impl, impl)
    if shape.mode == "generate":
        return _generate(impl, shape)
    if impl in ("torch", "torch-mps"):
        return _torch(shape, "mps" if impl == "torch-mps" else "cpu")
    if impl == "copy":
        return _copy(shape)
    if impl == "mlx":
        return _mlx(shape)
    backend, _, isa = impl.partition(":")
    side = _ours(backend, shape)
    return _with_cpu_isa(isa, side) if isa else side


@contextlib.contextmanager
def _cpu_isa_env(isa: str):
    """FLASH_ATTN_CY_CPU_ISA=isa meanwhile (the backend reads it on every call), the caller's value restored after."""
    old = os.environ.get("FLASH_ATTN_CY_CPU_ISA")
    os.environ["FLASH_ATTN_CY_CPU_ISA"] = isa
    try:
        yield
    finally:
        if old is None:
            del os.environ["FLASH_ATTN_CY_CPU_ISA"]
        else:
            os.environ["FLASH_ATTN_CY_CPU_ISA"] = old


def cpu_kernel_set(isa: str) -> str:
    """The CPU backend's kernel path under FLASH_ATTN_CY_CPU_ISA=isa on this machine ("avx512-bf16", "amx", ...), read
    from its public description (``backends()['cpu']``), which names the set the kernels really use."""
    import re

    import flash_attn_cy

    with _cpu_isa_env(isa):
        text = flash_attn_cy.backends()["cpu"].get("description", "")
    m = re.search(r"FlashAttention-2, ([a-z0-9-]+)", text)
    return m.group(1) if m else "unknown"


def cpu_isa_runs(isa: str) -> bool:
    """Whether FLASH_ATTN_CY_CPU_ISA=isa gives that kernel set here: otherwise the backend runs its best set, and a
    column or asv series named after ``isa`` would time another one. "avx512" covers "avx512-bf16"; "amx" is not
    "amx-emulated" (the scalar model of the tiles, a test aid)."""
    path = cpu_kernel_set(isa)
    return path == isa or (path.startswith(isa + "-") and not isa.startswith("amx"))


def _with_cpu_isa(isa: str, side: Side) -> Side:
    if isa not in CPU_ISAS:
        raise ValueError(f"unknown CPU kernel set {isa!r} (choose from {', '.join(CPU_ISAS)})")

    def run():
        with _cpu_isa_env(isa):
            return side()
    return run


def _mps_sync() -> None:
    import torch

    torch.mps.synchronize()


ALIBI_BASE = 8.0  # ALiBi slopes 2 ** (-ALIBI_BASE * (h + 1) / heads), the usual geometric sequence
PAGE = 16  # rows per page of the paged cases (flash_attn's paged caches take multiples of 16)


def alibi_slopes(heads: int) -> np.ndarray:
    return (2.0 ** (-ALIBI_BASE * (np.arange(heads) + 1) / heads)).astype(np.float32)


def _like(x, values):
    """values (NumPy) as an array of x's kind and device, keeping their dtype (float32 slopes, int32 indices)."""
    if isinstance(x, np.ndarray):
        return values
    import torch

    return torch.from_numpy(values).to(x.device)


def _pages(packed, lengths):
    """Packed rows [total, heads, dim] of sequences of `lengths` as pages of PAGE rows ([pages, PAGE, heads, dim],
    each sequence on its own pages, in order) and the int32 block_table (batch, most pages of a sequence)."""
    per = [-(-n // PAGE) for n in lengths]
    rows = (sum(per) * PAGE,) + tuple(packed.shape[1:])
    pages = np.zeros(rows, packed.dtype) if isinstance(packed, np.ndarray) else packed.new_zeros(rows)
    table = np.zeros((len(lengths), max(per)), np.int32)
    start = page = 0
    for b, n in enumerate(lengths):
        pages[page * PAGE:page * PAGE + n] = packed[start:start + n]
        table[b, :per[b]] = np.arange(page, page + per[b])
        start, page = start + n, page + per[b]
    return pages.reshape((sum(per), PAGE) + tuple(packed.shape[1:])), _index(table, packed)


def _stack(xs, axis: int):
    if isinstance(xs[0], np.ndarray):
        return np.stack(xs, axis=axis)
    import torch

    return torch.stack(xs, dim=axis)


def _ours_options(shape: Shape, x: Dict[str, object], kw: dict) -> None:
    """The keyword arguments of shape.option that every mode shares."""
    q = x["q"]
    if shape.option == "alibi":
        kw["alibi_slopes"] = _like(q, alibi_slopes(shape.heads))
    elif shape.option == "dropout":
        kw["dropout_p"] = 0.1
    elif shape.option == "probs":
        kw["return_attn_probs"] = True
    elif shape.option == "window":
        kw["window_size"] = (4, 0)
    elif shape.option == "softcap":
        kw["softcap"] = SOFTCAP


def _ours(backend: str, shape: Shape) -> Side:
    import flash_attn_cy as fa

    x = _ours_arrays(backend, shape, flash_inputs(shape))
    q, k, v = x["q"], x["k"], x["v"]
    kw = dict(causal=shape.causal, backend=backend)
    if shape.window != (-1, -1):
        kw["window_size"] = shape.window
    _ours_options(shape, x, kw)
    if shape.mode == "fwd":
        if shape.option == "qkvpacked":
            qkv = _stack([q, k, v], 2)
            return lambda: fa.flash_attn_qkvpacked_func(qkv, **kw)
        if shape.option == "kvpacked":
            kv = _stack([k, v], 2)
            return lambda: fa.flash_attn_kvpacked_func(q, kv, **kw)
        return lambda: fa.flash_attn_func(q, k, v, **kw)
    if shape.mode == "decode":
        appended = shape.seqlen_q if shape.append else 0
        lens = _index(np.full(shape.batch, shape.seqlen_k - appended), q)
        new = dict(k=x["k_new"], v=x["v_new"]) if shape.append else {}
        if shape.option == "rotary":
            kw["rotary_cos"], kw["rotary_sin"] = (_like(q, t) for t in rotary_tables(shape))
        elif shape.option == "leftpad":
            kw["cache_leftpad"] = _index(np.minimum(1, shape.seqlen_k - appended) * np.ones(shape.batch), q)
        elif shape.option == "paged":
            rows = (shape.seqlen_k,) * shape.batch
            k, kw["block_table"] = _pages(k.reshape((-1,) + tuple(k.shape[2:])), rows)
            v, _ = _pages(v.reshape((-1,) + tuple(v.shape[2:])), rows)
        elif shape.option == "batch_idx":  # the sequences live in the cache's last rows
            k, v = (_stack([c, c], 0).reshape((2 * shape.batch,) + tuple(c.shape[1:])) for c in (k, v))
            kw["cache_batch_idx"] = _index(np.arange(shape.batch) + shape.batch, q)
        # an appending call writes the same cache rows every time: each call is the same decode step
        return lambda: fa.flash_attn_with_kvcache(q, k, v, cache_seqlens=lens, **new, **kw)
    if shape.mode == "varlen":
        cu = _index(np.concatenate([[0], np.cumsum(shape.lengths)]), q)
        m = max(shape.lengths)
        if shape.option == "qkvpacked":
            qkv = _stack([q, k, v], 1)
            return lambda: fa.flash_attn_varlen_qkvpacked_func(qkv, cu, m, **kw)
        if shape.option == "kvpacked":
            kv = _stack([k, v], 1)
            return lambda: fa.flash_attn_varlen_kvpacked_func(q, kv, cu, cu, m, m, **kw)
        if shape.option == "paged":
            kp, kw["block_table"] = _pages(k, shape.lengths)
            vp, _ = _pages(v, shape.lengths)
            return lambda: fa.flash_attn_varlen_func(q, kp, vp, cu, cu, m, m, **kw)
        return lambda: fa.flash_attn_varlen_func(q, k, v, cu, cu, m, m, **kw)
    if shape.mode == "bwd":
        out, lse, _ = fa.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
        dout = x["dout"]
        return lambda: fa.backward(dout, q, k, v, out, lse, **kw)
    if shape.mode == "fwd+bwd":
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        dout, on_mps = x["dout"], q.device.type == "mps"

        def fwd_bwd():
            fa.flash_attn_func(q, k, v, **kw).backward(dout)
            if on_mps:
                _mps_sync()  # autograd's own MPS work (gradient accumulation) is queued on PyTorch's stream
        return fwd_bwd
    raise ValueError(f"unknown mode {shape.mode!r}")


def _copy(shape: Shape) -> Side:
    """Copies as many bytes as a decode call reads of K and V (cases.kv_bytes) from one buffer into another, with
    PyTorch's multi-threaded copy (same thread count as the other sides) where installed, else NumPy's: the memory
    bandwidth the decode kernels are measured against (issue 20: decode at >= 70% of it)."""
    if shape.mode != "decode":
        raise NotImplementedError("the copy baseline is for decode (memory-bound) cases")
    from .cases import kv_bytes

    n = int(kv_bytes(shape))
    if _has_module("torch"):
        import torch

        src, dst = torch.ones(n, dtype=torch.uint8), torch.empty(n, dtype=torch.uint8)
        return lambda: dst.copy_(src)
    src, dst = np.ones(n, np.uint8), np.empty(n, np.uint8)

    def copy():
        np.copyto(dst, src)
        return dst
    return copy


def _torch(shape: Shape, device: str) -> Side:
    import torch
    import torch.nn.functional as F

    if shape.window != (-1, -1):
        raise NotImplementedError("scaled_dot_product_attention has no sliding window")
    if shape.mode == "varlen":
        return _torch_varlen(shape, device)
    tdt = _torch_dtype(shape.dtype)
    # SDPA's layout is [batch, heads, seq, dim]; made contiguous once here, outside the timed call.
    t = {n: torch.from_numpy(x).to(device, tdt).transpose(1, 2).contiguous() for n, x in flash_inputs(shape).items()}
    q, k, v, dout = t["q"], t["k"], t["v"], t["dout"]
    kw = {"enable_gqa": True} if shape.kv_heads() != shape.heads else {}
    # torch's is_causal is top-left aligned; it equals flash_attn's bottom-right one only for square attention,
    # and decode (one query seeing the whole cache) is unmasked in both conventions.
    kw["is_causal"] = shape.causal and shape.seqlen_q == shape.seqlen_k
    _torch_options(shape, kw, device)
    sync = _mps_sync if device == "mps" else (lambda: None)
    if shape.mode == "fwd+bwd":
        q, k, v = (x.requires_grad_() for x in (q, k, v))

        def fwd_bwd():
            F.scaled_dot_product_attention(q, k, v, **kw).backward(dout)
            sync()
        return fwd_bwd
    if shape.mode == "bwd":
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, **kw)  # the graph is kept: only the backward is timed

        def bwd():
            q.grad = k.grad = v.grad = None
            out.backward(dout, retain_graph=True)
            sync()
        return bwd

    attention = _eager(shape, device) if shape.option in EAGER_OPTIONS else F.scaled_dot_product_attention
    if shape.mode == "decode" and shape.append:
        # a decode step as PyTorch users write it: the new rows into the cache ([b, hk, s, d]), then attention
        pos, k_new, v_new = shape.seqlen_k - shape.seqlen_q, t["k_new"], t["v_new"]
        rope = _rope(shape, device, pos) if shape.option == "rotary" else None

        def append_fwd():
            if rope is None:
                k[:, :, pos:] = k_new
                v[:, :, pos:] = v_new
                out = attention(q, k, v, **kw)
            else:  # the new key and the query rotated at their position first
                k[:, :, pos:] = rope(k_new)
                v[:, :, pos:] = v_new
                out = attention(rope(q), k, v, **kw)
            sync()
            return out
        return append_fwd

    def fwd():  # the inputs need no grad: autograd records nothing
        out = attention(q, k, v, **kw)
        sync()
        return out
    return fwd


# Options SDPA has no argument for, which PyTorch code computes step by step instead ("eager" attention, as
# transformers' eager_attention_forward): matmul, softcap, mask, softmax (the probabilities), matmul.
EAGER_OPTIONS = ("softcap", "probs")
SOFTCAP = 30.0


def _eager(shape: Shape, device: str):
    """An SDPA-shaped callable (q, k, v, is_causal=..., enable_gqa=...) computing the attention step by step, with
    shape.option's softcap, and the probabilities materialised (which "probs" returns to its caller)."""
    import torch

    rep = shape.heads // shape.kv_heads()
    sq, sk = shape.seqlen_q, shape.seqlen_k
    keep = torch.from_numpy(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)).to(device)
    scale = shape.headdim ** -0.5

    def attention(q, k, v, is_causal=False, enable_gqa=False, **_):
        if rep > 1:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q @ k.transpose(-1, -2) * scale
        if shape.option == "softcap":
            s = SOFTCAP * torch.tanh(s / SOFTCAP)
        if shape.causal:
            s = s.masked_fill(~keep, float("-inf"))
        p = torch.softmax(s, -1)
        out = p @ v
        return (out, p) if shape.option == "probs" else out
    return attention


def rotary_tables(shape: Shape):
    """cos, sin (seqlen_k, headdim / 2) float32: the rotary tables of the "rotary" cases (the whole head dim)."""
    half = shape.headdim // 2
    angles = np.arange(shape.seqlen_k)[:, None] * (1e-4 ** (np.arange(half) / half))[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rope(shape: Shape, device: str, pos: int):
    """x [b, h, 1, d] rotated at position pos, pairs (0, 1), (2, 3), ... (flash_attn's rotary_interleaved=True)."""
    import torch

    cos, sin = (torch.from_numpy(t).to(device) for t in rotary_tables(shape))

    def rope(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        c, s = cos[pos], sin[pos]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), -1).flatten(-2)
    return rope


def option_mask(shape: Shape, seqlen_q: int, seqlen_k: int) -> Optional[np.ndarray]:
    """SDPA's attn_mask for shape.option where SDPA has the feature only as a mask: ALiBi (a float bias, heads x
    seqlen_q x seqlen_k, -inf where causal masks), the window and cache_leftpad (bool); None for every other
    option."""
    if shape.option not in ("alibi", "window", "leftpad"):
        return None
    i = np.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)  # bottom-right aligned, as flash_attn
    j = np.arange(seqlen_k)[None, :]
    keep = (j <= i) if shape.causal else np.ones((seqlen_q, seqlen_k), bool)
    if shape.option == "window":
        return (keep & (j >= i - 4))[None]
    if shape.option == "leftpad":  # the cache's first row is padding (when it holds a row before the new one)
        return (keep & (j >= min(1, seqlen_k - seqlen_q)))[None]
    bias = -alibi_slopes(shape.heads)[:, None, None] * np.abs(i - j)[None]
    return np.where(keep[None], bias, -np.inf).astype(np.float32)


def _torch_options(shape: Shape, kw: dict, device: str) -> None:
    """shape.option on PyTorch's side (see cases._host_cost_forms): a mask instead of is_causal, or dropout_p."""
    import torch

    mask = option_mask(shape, shape.seqlen_q, shape.seqlen_k)
    if mask is not None:
        kw["attn_mask"] = torch.from_numpy(mask).to(device)
        kw["is_causal"] = False
    elif shape.option == "dropout":
        kw["dropout_p"] = 0.1


def _torch_varlen(shape: Shape, device: str) -> Side:
    """What users do without a varlen kernel: pad to the longest sequence and mask (right padding, causal within each
    sequence's valid prefix). Equal lengths need no padding and take SDPA's plain path."""
    import torch
    import torch.nn.functional as F

    lengths, s = shape.lengths, max(shape.lengths)
    tdt = _torch_dtype(shape.dtype)
    x = flash_inputs(shape)
    start = np.concatenate([[0], np.cumsum(lengths)])

    def padded(packed):
        out = np.zeros((len(lengths), s) + packed.shape[1:], np.float32)
        for i, n in enumerate(lengths):
            out[i, :n] = packed[start[i]:start[i] + n]
        return torch.from_numpy(out).to(device, tdt).transpose(1, 2).contiguous()

    q, k, v = padded(x["q"]), padded(x["k"]), padded(x["v"])
    kw = {"enable_gqa": True} if shape.kv_heads() != shape.heads else {}
    if len(set(lengths)) == 1:
        kw["is_causal"] = shape.causal
        _torch_options(shape, kw, device)
    else:
        idx = torch.arange(s)
        valid = idx[None, :] < torch.tensor(lengths)[:, None]
        mask = valid[:, None, :] & ((idx[None, :, None] >= idx[None, None, :]) if shape.causal else True)
        kw["attn_mask"] = mask[:, None].to(device)
    sync = _mps_sync if device == "mps" else (lambda: None)

    def fwd():
        out = F.scaled_dot_product_attention(q, k, v, **kw)
        sync()
        return out
    return fwd


def _mlx(shape: Shape) -> Side:
    """MLX's fused attention on its default device, [batch, heads, seqlen, dim] inputs, evaluated inside the call."""
    import mlx.core as mx

    if shape.window != (-1, -1):
        raise NotImplementedError("mlx.core.fast.scaled_dot_product_attention has no sliding window")
    if shape.mode == "varlen":
        raise NotImplementedError("mlx has no variable-length attention")
    mdt = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}[shape.dtype]
    t = {n: mx.array(x.transpose(0, 2, 1, 3)).astype(mdt) for n, x in flash_inputs(shape).items()}
    q, k, v, dout = t["q"], t["k"], t["v"], t["dout"]
    mask = "causal" if shape.causal and shape.seqlen_q == shape.seqlen_k else None  # as for torch
    scale = shape.headdim ** -0.5

    def attention(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)

    if shape.mode in ("fwd+bwd", "bwd"):  # mx.vjp re-runs the forward: MLX keeps no graph
        def fwd_bwd():
            out, grads = mx.vjp(attention, [q, k, v], [dout])
            mx.eval(out, grads)
        return fwd_bwd

    def fwd():
        out = attention(q, k, v)
        mx.eval(out)
        return out
    return fwd


def _generate(impl: str, shape: Shape) -> Side:
    """transformers generate() of a tiny random Llama (no download) with attn_implementation ``impl``: the prompt
    is ``seqlen_q`` tokens (left padding in every row but the first when batch > 1), then ``seqlen_k - seqlen_q``
    greedy tokens."""
    if impl not in GENERATE_SIDES:
        raise ValueError(f"generate: unknown attn_implementation {impl!r} (choose from {', '.join(GENERATE_SIDES)})")
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise NotImplementedError("transformers is not installed")
    import flash_attn_cy

    if impl == "flash_attn_cy":
        flash_attn_cy.register_transformers()
    torch.manual_seed(0)
    config = LlamaConfig(**TINY_LLAMA, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads())
    model = LlamaForCausalLM._from_config(config, attn_implementation=impl)
    model.eval()
    ids = torch.randint(1, TINY_LLAMA["vocab_size"], (shape.batch, shape.seqlen_q),
                        generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if shape.batch > 1:
        mask[1:, : shape.seqlen_q // 4] = 0  # a quarter of the prompt is padding
    new = shape.seqlen_k - shape.seqlen_q
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                  pad_token_id=0)

    def generate():
        with torch.no_grad():
            return model.generate(**kwargs)
    return generate
