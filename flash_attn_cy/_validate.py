"""Argument validation for the public API, done before any compute.

Every check raises ValueError (bad value or shape) or TypeError (bad type or dtype) with a message that names the
argument and the form it expects. The C side re-checks structurally (csrc/fa_check.cpp) so nothing can index out of
bounds even if this layer missed something; this layer exists to give flash_attn-style, Python-spelled messages.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _arrays, _dropout
from ._core import BACKENDS, backend_available

MAX_HEADDIM = 256
_INT32_MAX = 2 ** 31 - 1
BACKEND_CHOICES = ("auto",) + tuple(BACKENDS)


# Whether each backend can run here, asked once: it cannot change within a process, and a plain dict lookup keeps
# the public functions traceable by torch.compile (dynamo cannot trace into the Cython backend_available).
_AVAILABLE = {name: tuple(backend_available(name)) for name in BACKENDS}


from .errors import BackendUnavailableError  # noqa: E402  (declared with the other exceptions in errors.py)


def resolve_backend(backend: Any) -> str:
    """'auto' -> 'metal' if usable here, else 'cpu'; any other name must be a known backend usable here."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, one of {', '.join(map(repr, BACKEND_CHOICES))}; "
                        f"got {type(backend).__name__}")
    if backend == "auto":
        return "metal" if _AVAILABLE["metal"][0] else "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_CHOICES))}, got {backend!r}")
    ok, why = _AVAILABLE[backend]
    if not ok:
        raise BackendUnavailableError(f"backend: {backend!r} is not available here: {why}")
    return backend


def same_kind_and_dtype(named: Sequence[Tuple[str, Any]]) -> Tuple[str, str]:
    """All tensors share one kind (NumPy / torch CPU / MPS) and one float dtype; returns (kind, dtype)."""
    kinds = [(n, _arrays.kind_of(x, n)) for n, x in named]
    dtypes = [(n, _arrays.float_dtype(x, n)) for n, x in named]
    n0, k0 = kinds[0]
    for n, k in kinds[1:]:
        if k != k0:
            raise TypeError(f"{n}: all tensors must be of one kind; {n0} is {k0} but {n} is {k}")
    n0, d0 = dtypes[0]
    for n, d in dtypes[1:]:
        if d != d0:
            raise TypeError(f"{n}: dtype {d} differs from {n0}'s {d0}; q, k, v must share one dtype")
    return k0, d0


def ndim(x: Any, name: str, want: int, form: str) -> None:
    _arrays.kind_of(x, name)  # TypeError for anything that is not an array/tensor
    if x.ndim != want:
        raise ValueError(f"{name}: expected a {want}-d tensor of shape {form}, got shape {tuple(x.shape)}")


def head_dims(q_shape: Tuple[int, ...], k_shape: Tuple[int, ...], v_shape: Tuple[int, ...],
              k_name: str = "k", v_name: str = "v") -> None:
    """heads and head dim: nheads_q % nheads_kv == 0, head dims equal and in 1..256."""
    hq, d = q_shape[-2], q_shape[-1]
    hk, dk = k_shape[-2], k_shape[-1]
    if not 1 <= d <= MAX_HEADDIM:
        raise ValueError(f"q: head dimension (last axis) must be in 1..{MAX_HEADDIM}, got {d}")
    if dk != d:
        raise ValueError(f"{k_name}: head dimension {dk} must equal q's head dimension {d}")
    if v_shape[-1] != d:
        raise ValueError(f"{v_name}: head dimension {v_shape[-1]} must equal q's head dimension {d}")
    if hq < 1 or hk < 1:
        raise ValueError(f"q/{k_name}: number of heads must be >= 1 (q has {hq}, {k_name} has {hk})")
    if v_shape[-2] != hk:
        raise ValueError(f"{v_name}: number of heads {v_shape[-2]} must equal {k_name}'s {hk}")
    if hq % hk:
        raise ValueError(f"number of heads in q ({hq}) must be a multiple of the number of heads in "
                         f"{k_name}/{v_name} ({hk})")


def dense_shapes(q: Any, k: Any, v: Any) -> None:
    """flash_attn_func: q (batch, seqlen_q, nheads, d); k, v (batch, seqlen_k, nheads_k, d)."""
    ndim(q, "q", 4, "(batch, seqlen_q, nheads, headdim)")
    ndim(k, "k", 4, "(batch, seqlen_k, nheads_k, headdim)")
    ndim(v, "v", 4, "(batch, seqlen_k, nheads_k, headdim)")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k: batch size {k.shape[0]} must equal q's batch size {q.shape[0]}")
    if v.shape[:2] != k.shape[:2]:
        raise ValueError(f"v: (batch, seqlen) {tuple(v.shape[:2])} must equal k's {tuple(k.shape[:2])}")
    head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))


def integer(x: Any, name: str, minimum: Optional[int] = None) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        if _arrays.is_torch(x) and x.ndim == 0 and not x.dtype.is_floating_point:
            x = int(x)
        elif isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iu":
            x = int(x)
        else:
            raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    x = int(x)
    if minimum is not None and x < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {x}")
    if x > _INT32_MAX:
        raise ValueError(f"{name}: must fit in int32 (<= {_INT32_MAX}), got {x}")
    return x


def cu_seqlens(x: Any, name: str, batch: Optional[int], total: Optional[int], max_seqlen: int,
               max_name: str, total_name: str = "the packed tensor", batch_name: str = "cu_seqlens_q") -> np.ndarray:
    """(batch + 1,) int32, starting at 0, non-decreasing, last <= total rows, every length <= max_seqlen.

    Each message starts with the argument to fix: `name` for the array's own form, `max_name` (the caller's
    max_seqlen argument) when a sequence is longer than it, `total_name` is the packed tensor whose rows
    cu_seqlens indexes and `batch_name` the argument that fixed the batch size."""
    a = _arrays.host_int32(x, name)
    if a.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (batch_size + 1,), got an empty array")
    if batch is not None and a.shape[0] != batch + 1:
        raise ValueError(f"{name}: expected shape ({batch + 1},) (batch_size + 1, as {batch_name}), "
                         f"got ({a.shape[0]},)")
    if a[0] != 0:
        raise ValueError(f"{name}: must start at 0, got {name}[0] = {int(a[0])}")
    lens = np.diff(a.astype(np.int64))
    if lens.size and lens.min() < 0:
        i = int(np.argmin(lens))
        raise ValueError(f"{name}: must be non-decreasing, but {name}[{i}] = {int(a[i])} > "
                         f"{name}[{i + 1}] = {int(a[i + 1])}")
    if total is not None and a[-1] > total:
        raise ValueError(f"{name}: last entry {int(a[-1])} exceeds the {total} rows of {total_name}")
    if lens.size and lens.max() > max_seqlen:
        # max_seqlen is the caller's claim about cu_seqlens (usually computed from it): the claim is what is wrong
        i = int(np.argmax(lens))
        raise ValueError(f"{max_name}: {max_seqlen} is less than the longest sequence in {name} (sequence {i} has "
                         f"{int(lens[i])} rows); pass at least {int(lens[i])}")
    return a


def cu_seqlens_traced(x: Any, name: str, batch: Optional[int]) -> Any:
    """cu_seqlens as a torch tensor while torch.compile traces: dtype and shape are checked here; the values
    (start at 0, non-decreasing, within the packed rows and max_seqlen) are data the tracer cannot see, so the C
    layer checks them when the compiled graph runs (csrc/fa_check.cpp, same ValueError)."""
    dt = str(x.dtype).replace("torch.", "")
    if dt not in ("int32", "int64", "int16", "int8", "uint8"):
        raise TypeError(f"{name}: dtype must be int32 (or another integer type), got {dt}")
    if dt != "int32":  # converted, as on the eager path (the C layer checks the values when the graph runs)
        x = x.int()
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (batch_size + 1,), got {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch + 1:
        raise ValueError(f"{name}: expected shape ({batch + 1},) (batch_size + 1), got ({x.shape[0]},)")
    return x


def _finite(x: float) -> bool:
    # Comparisons rather than math.isfinite: under torch.compile(dynamic=True) a float argument arrives as a symbolic
    # float, which comparisons turn into guards while math.isfinite is a graph break (fatal with fullgraph=True).
    return -math.inf < x < math.inf


_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def scalar(x: Any) -> Any:
    """One number as flash_attn lets callers give it: a Python number stays as it is; a NumPy scalar, a 0-d NumPy
    array or a 0-d torch tensor becomes the Python int / float it holds (bools stay bools, so the checks below
    reject them); anything else comes back unchanged for the caller's type check to name.

    The one place that decides what "a number" is for window_size, softmax_scale, dropout_p and softcap (flash_attn
    forwards them to its C++ op, whose int/float arguments accept all of these)."""
    if isinstance(x, (int, float)):  # includes bool: left for the callers to reject
        return x
    if isinstance(x, np.generic) or ((isinstance(x, np.ndarray) or _arrays.is_torch(x)) and x.ndim == 0):
        name = _dtype_name(x)
        if name in _INT_DTYPES:
            return int(x)
        if name.startswith(("float", "bfloat")):
            return float(x)
        if name == "bool":
            return bool(x)
    return x


def _real(x: Any, name: str, form: str) -> float:
    x = scalar(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected {form} (a Python, NumPy or 0-d tensor number), got {type(x).__name__}")
    return float(x)


def dropout(p: Any) -> float:
    p = _real(p, "dropout_p", "a float in [0, 1)")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p: must be in [0, 1), got {p}")
    return p


def softmax_scale(scale: Any, headdim: int) -> float:
    """Default 1/sqrt(headdim) of the original (unpadded) head dimension."""
    if scale is None:
        return headdim ** -0.5
    scale = _real(scale, "softmax_scale", "a float or None")
    if not _finite(scale):
        raise ValueError(f"softmax_scale: must be finite, got {scale}")
    return scale


def softcap(cap: Any) -> float:
    cap = _real(cap, "softcap", "a float >= 0 (0 = off)")
    if not (cap >= 0.0 and _finite(cap)):
        raise ValueError(f"softcap: must be a finite float >= 0 (0 = off), got {cap}")
    return cap


_WINDOW_FORM = ("a pair (left, right) of ints >= -1: a tuple or list of two ints (Python, NumPy or 0-d tensors), "
                "or a 1-D NumPy array / torch tensor of two integers")


def _window_pair(window_size: Any) -> Tuple[Any, Any]:
    """The two entries of window_size in any form flash_attn accepts (it only indexes [0] and [1])."""
    if isinstance(window_size, (tuple, list)):
        if len(window_size) != 2:
            raise ValueError(f"window_size: expected {_WINDOW_FORM}; got {len(window_size)} entries")
        return window_size[0], window_size[1]
    if isinstance(window_size, np.ndarray) or _arrays.is_torch(window_size):
        if tuple(window_size.shape) != (2,):
            raise ValueError(f"window_size: expected {_WINDOW_FORM}; got an array of shape "
                             f"{tuple(window_size.shape)}")
        if _dtype_name(window_size) not in _INT_DTYPES:
            raise TypeError(f"window_size: expected {_WINDOW_FORM}; got dtype {_dtype_name(window_size)}")
        vals = window_size.tolist()
        return vals[0], vals[1]
    raise ValueError(f"window_size: expected {_WINDOW_FORM}; got {type(window_size).__name__}")


def window(window_size: Any, causal: Any) -> Tuple[int, int]:
    """(left, right) with -1 = unbounded; `causal` folds into right = 0 (left kept)."""
    causal = flag(causal, "causal")
    left, right = (scalar(w) for w in _window_pair(window_size))
    for side, val in (("left", left), ("right", right)):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral):
            raise TypeError(f"window_size: {side} must be an int >= -1, got {type(val).__name__}")
        if val < -1:
            raise ValueError(f"window_size: {side} must be -1 (unbounded) or >= 0, got {int(val)}")
        if val > _INT32_MAX:
            raise ValueError(f"window_size: {side} must fit in int32, got {int(val)}")
    left, right = int(left), int(right)
    if causal:
        right = 0
    return left, right


def alibi(slopes: Any, batch: int, nheads: int, traced: bool = False) -> Optional[np.ndarray]:
    """(nheads,) or (batch, nheads) float32 -> a 2-d float32 array (1 or batch rows).

    traced (torch.compile is tracing): a torch tensor stays a tensor, checked on dtype and shape only."""
    if slopes is None:
        return None
    if traced and _arrays.is_torch(slopes):
        if str(slopes.dtype) != "torch.float32":
            raise TypeError(f"alibi_slopes: dtype must be float32, got {slopes.dtype}")
        if tuple(slopes.shape) == (nheads,):
            return slopes.reshape(1, nheads).contiguous()
        if tuple(slopes.shape) == (batch, nheads):
            return slopes.contiguous()
        raise ValueError(f"alibi_slopes: expected shape ({nheads},) or ({batch}, {nheads}), "
                         f"got {tuple(slopes.shape)}")
    a = _arrays.host_float32(slopes, "alibi_slopes")
    if a.shape == (nheads,):
        return a.reshape(1, nheads)
    if a.shape == (batch, nheads):
        return a
    raise ValueError(f"alibi_slopes: expected shape ({nheads},) or ({batch}, {nheads}), got {tuple(a.shape)}")


def flag(x: Any, name: str) -> bool:
    """A bool (also NumPy bool, or the ints 0/1 that C-style callers pass); anything else is a TypeError."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, numbers.Integral) and int(x) in (0, 1):
        return bool(x)
    raise TypeError(f"{name}: expected a bool, got {type(x).__name__} {x!r}")


def block_table(x: Any, batch: int, num_blocks: int, page: int, pages_needed: Optional[np.ndarray]) -> np.ndarray:
    """(batch, max_blocks) int32; page size (k_cache.shape[1]) a multiple of 16; the entries a sequence uses must
    be page indices in [0, num_blocks)."""
    a = _arrays.host_int32(x, "block_table", ndim=2)
    if a.shape[0] != batch:
        raise ValueError(f"block_table: expected shape ({batch}, max_num_blocks_per_seq), got {tuple(a.shape)}")
    if a.shape[1] < 1:
        raise ValueError("block_table: needs at least one page per sequence")
    if page < 1 or page % 16:
        raise ValueError(f"k_cache: page size (k_cache.shape[1]) must be a positive multiple of 16 with a "
                         f"block_table, got {page}")
    if pages_needed is None:
        used = a
    else:
        cols = np.arange(a.shape[1])[None, :]
        used = a[cols < pages_needed[:, None]]
    if used.size and (used.min() < 0 or used.max() >= num_blocks):
        bad = int(used[(used < 0) | (used >= num_blocks)][0])
        raise ValueError(f"block_table: entry {bad} is not a page index in [0, {num_blocks}) of k_cache")
    return a


# The call-level normalisers below take flash_attn's argument names, which shadow the per-argument normalisers of
# the same names: they call these.
_window_fn, _softmax_scale_fn, _softcap_fn, _block_table_fn = window, softmax_scale, softcap, block_table
_dropout_fn = dropout


# ---- the attention functions' shared arguments ------------------------------------------------------------------

def unpack(x, name: str, axis: int, count: int, form: str, want_ndim: int):
    """Split a packed tensor along `axis` into `count` views (no copy)."""
    _arrays.kind_of(x, name)
    if x.ndim != want_ndim or x.shape[axis] != count:
        raise ValueError(f"{name}: expected shape {form}, got {tuple(x.shape)}")
    idx = [slice(None)] * x.ndim
    parts = []
    for i in range(count):
        idx[axis] = i
        parts.append(x[tuple(idx)])
    return parts


def varlen_meta(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, k_name="k",
                 names=("q", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")):
    """Validate the varlen metadata; returns (cu_q, cu_k, max_q, max_k, block_table) normalised. `names`: the
    caller's argument names (q, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k), so that a message names
    what the user passed (the packed variants call them qkv, cu_seqlens, max_seqlen)."""
    q_name, cu_q_name, cu_k_name, max_q_name, max_k_name = names
    max_q = integer(max_seqlen_q, max_q_name, 0)
    max_k = integer(max_seqlen_k, max_k_name, 0)
    if (block_table is None and _arrays.is_torch(q) and _arrays.is_torch(cu_seqlens_q)
            and _arrays.is_torch(cu_seqlens_k) and _arrays.compiling()):
        cu_q = cu_seqlens_traced(cu_seqlens_q, cu_q_name, None)
        cu_k = cu_seqlens_traced(cu_seqlens_k, cu_k_name, cu_q.shape[0] - 1)
        return cu_q, cu_k, max_q, max_k, None
    cu_q = cu_seqlens(cu_seqlens_q, cu_q_name, None, q.shape[0], max_q, max_q_name, q_name)
    batch = cu_q.shape[0] - 1
    total_k = None if block_table is not None else k.shape[0]
    cu_k = cu_seqlens(cu_seqlens_k, cu_k_name, batch, total_k, max_k, max_k_name, k_name, cu_q_name)
    bt_checked = None
    if block_table is not None:
        lens = np.diff(cu_k.astype(np.int64))
        page = k.shape[1]
        bt_arr = _arrays.host_int32(block_table, "block_table", ndim=2)
        if bt_arr.shape[0] == batch and page > 0:
            need = (lens + page - 1) // page
            if need.size and need.max() > bt_arr.shape[1]:
                raise ValueError(f"block_table: sequence lengths need {int(need.max())} pages but block_table has "
                                 f"{bt_arr.shape[1]} columns")
        else:
            need = None
        bt_checked = _block_table_fn(block_table, batch, k.shape[0], page, need)
    return cu_q, cu_k, max_q, max_k, bt_checked


class _ProbsWithDropoutOnly:
    """The type of FLASH_ATTN_PROBS (see there)."""

    def __repr__(self) -> str:
        return "flash_attn_cy.interface.FLASH_ATTN_PROBS"


#: Passed as ``return_attn_probs`` by the flash_attn drop-in (flash_attn_compat): return (out, softmax_lse, S_dmask)
#: but materialise S_dmask only when dropout_p > 0, as flash_attn does (``return_softmax=return_attn_probs and
#: dropout_p > 0``); S_dmask is None otherwise. flash_attn_cy's own ``return_attn_probs=True`` always computes it.
FLASH_ATTN_PROBS = _ProbsWithDropoutOnly()


def needs_grad(kind: str, tensors: Sequence[Any]) -> bool:
    """Whether autograd must record the call: torch tensors, grad mode on, one of them requiring grad."""
    if kind not in ("torch", "mps"):
        return False
    import torch
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def attention(q: Any, k: Any, v: Any, names: Sequence[str], *, cu_seqlens_q: Any = None, cu_seqlens_k: Any = None,
              max_seqlen_q: Any = None, max_seqlen_k: Any = None, dropout_p: Any, softmax_scale: Any, causal: Any,
              window_size: Any, softcap: Any, alibi_slopes: Any, deterministic: Any, return_attn_probs: Any,
              block_table: Any = None, backend: Any, seed: Any) -> Tuple[dict, bool, bool]:
    """The attention functions' options, validated and normalised (q, k, v shapes and the varlen metadata already
    checked by the caller; `names` are the caller's names for q, k, v). Returns (args, use_ops, return_attn_probs):
    args the keyword arguments of `_dispatch.attention_forward` / `autograd.attention_with_grad`; use_ops whether the
    torch custom ops must carry the call (an input requires grad, or torch.compile is tracing)."""
    backend = resolve_backend(backend)
    kind, _ = same_kind_and_dtype(list(zip(names, (q, k, v))))
    dropout_p = dropout(dropout_p)
    win = _window_fn(window_size, causal)
    cap = _softcap_fn(softcap)
    deterministic = flag(deterministic, "deterministic")
    flash_attn_rule = return_attn_probs is FLASH_ATTN_PROBS
    return_attn_probs = flash_attn_rule or flag(return_attn_probs, "return_attn_probs")
    want_probs = return_attn_probs and (dropout_p > 0.0 or not flash_attn_rule)
    scale = _softmax_scale_fn(softmax_scale, q.shape[-1])
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    # torch.compile tracing: everything must stay in torch ops, so the custom ops carry the call (grad or not)
    traced = kind in ("torch", "mps") and block_table is None and _arrays.compiling()
    slopes = alibi(alibi_slopes, batch, q.shape[-2], traced=traced)
    use_ops = traced or needs_grad(kind, (q, k, v))
    if dropout_p == 0.0:
        rng = (0, 0)
    elif use_ops and seed is None and block_table is None:
        rng = None  # drawn from torch's default generator as a tensor by the op path (same draw, no graph break)
    else:
        rng = _dropout.philox_state(kind, seed)
    args = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                max_seqlen_k=max_seqlen_k, dropout_p=dropout_p, softmax_scale=scale, causal=bool(causal),
                window_size=win, softcap=cap, alibi_slopes=slopes, deterministic=deterministic,
                return_attn_probs=want_probs, block_table=block_table, backend=backend, rng=rng)
    return args, use_ops, return_attn_probs


def backward(dout: Any, q: Any, k: Any, v: Any, out: Any, softmax_lse: Any, *, cu_seqlens_q: Any, cu_seqlens_k: Any,
             max_seqlen_q: Any, max_seqlen_k: Any, dropout_p: Any, softmax_scale: Any, causal: Any, window_size: Any,
             softcap: Any, alibi_slopes: Any, deterministic: Any, seed: Any, rng_state: Any, backend: Any, dq: Any,
             dk: Any, dv: Any) -> dict:
    """The low-level backward's arguments (_backward.backward), validated and normalised: the keyword arguments of
    `_dispatch.attention_backward` (dq/dk/dv as given: None ones are allocated there)."""
    backend = resolve_backend(backend)
    kind, dtype = same_kind_and_dtype([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)])
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_k: the varlen layout needs both")
    if varlen:
        for name, x in (("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)):
            ndim(x, name, 3, "(total, nheads, headdim)")
        if max_seqlen_q is None or max_seqlen_k is None:
            raise TypeError("max_seqlen_q and max_seqlen_k: required with cu_seqlens_q/cu_seqlens_k")
        max_q = integer(max_seqlen_q, "max_seqlen_q", 0)
        max_k = integer(max_seqlen_k, "max_seqlen_k", 0)
        cu_q = cu_seqlens(cu_seqlens_q, "cu_seqlens_q", None, q.shape[0], max_q, "max_seqlen_q")
        batch = cu_q.shape[0] - 1
        cu_k = cu_seqlens(cu_seqlens_k, "cu_seqlens_k", batch, k.shape[0], max_k, "max_seqlen_k")
        lse_shape = (q.shape[1], q.shape[0])
    else:
        dense_shapes(q, k, v)
        for name, x in (("out", out), ("dout", dout)):
            ndim(x, name, 4, "(batch, seqlen_q, nheads, headdim)")
        cu_q = cu_k = max_q = max_k = None
        batch = q.shape[0]
        lse_shape = (q.shape[0], q.shape[2], q.shape[1])
    head_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    for name, x in (("out", out), ("dout", dout)):
        if tuple(x.shape) != tuple(q.shape[:-1]) + (v.shape[-1],):
            raise ValueError(f"{name}: expected shape {tuple(q.shape[:-1]) + (v.shape[-1],)}, got {tuple(x.shape)}")
    if tuple(softmax_lse.shape) != lse_shape or _arrays.kind_of(softmax_lse, "softmax_lse") != kind:
        raise ValueError(f"softmax_lse: expected a float32 array of shape {lse_shape} of the kind of q ({kind})")
    dropout_p = _dropout_fn(dropout_p)
    rng = _dropout.rng_pair(seed, rng_state) if dropout_p > 0.0 else (0, 0)
    for name, given, like in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        if given is not None and (tuple(given.shape) != tuple(like.shape) or _arrays.kind_of(given, name) != kind
                                  or _arrays.float_dtype(given, name) != dtype):
            raise ValueError(f"{name}: expected a {kind} array of shape {tuple(like.shape)} and dtype {dtype}")
    _arrays.check_not_overlapping([("dq", dq), ("dk", dk), ("dv", dv)],  # the caller's buffers (None skipped)
                                  [("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out),
                                   ("softmax_lse", softmax_lse)])
    return dict(
        dq=dq, dk=dk, dv=dv, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
        dropout_p=dropout_p, softmax_scale=_softmax_scale_fn(softmax_scale, q.shape[-1]), causal=flag(causal, "causal"),
        window_size=_window_fn(window_size, causal), softcap=_softcap_fn(softcap),
        alibi_slopes=alibi(alibi_slopes, batch, q.shape[-2]), deterministic=flag(deterministic, "deterministic"),
        backend=backend, rng=rng)
