"""Independent, deliberately plain reference implementations of flash_attn 2.x attention.

Nothing here shares code with the backends: scores are materialised as a full (seqlen_q, seqlen_k) matrix per
sequence and head, masks are built with broadcasting, and the softmax is the textbook one. It is the yardstick that
every backend is measured against (tests, ``python -m flash_attn_cy verify``).

Semantics follow Dao-AILab flash_attn 2.x (``flash_attn_interface.py`` docstrings and the CUDA kernels):

- dense layout q [batch, seqlen_q, nheads, d], k/v [batch, seqlen_k, nheads_k, d]; varlen layout q [total_q, nheads, d]
  with ``cu_seqlens_q`` (int32, batch + 1), likewise k/v with ``cu_seqlens_k``;
- GQA/MQA: query head h reads key/value head ``h // (nheads // nheads_k)``;
- score = softmax_scale * q.k (default scale d ** -0.5); with ``softcap > 0`` it becomes
  ``softcap * tanh(score / softcap)``; then the ALiBi bias ``-slope * |i + sk - sq - j|`` is added;
- causal and sliding-window masks are aligned to the bottom-right corner: query i sees key j iff
  ``i + sk - sq - left <= j <= i + sk - sq + right`` (-1 = unbounded; ``causal`` sets right = 0);
- a query row that sees no key gives output 0 and log-sum-exp +inf;
- the log-sum-exp (natural log) is returned as (batch, nheads, seqlen_q) for dense inputs and (nheads, total_q) for
  varlen inputs;
- dropout, when a keep-mask is given, multiplies the probabilities by ``mask / (1 - dropout_p)`` after the softmax
  (the log-sum-exp is that of the un-dropped scores).

Two flavours of the NumPy reference exist, selected by ``compute_dtype``:

- ``np.float64`` (default): the exact answer up to float64 rounding;
- ``np.float32``, ``np.float16`` or ``ml_dtypes.bfloat16``: the same computation carried out "in the input dtype" the
  way flash-attention's own tests build their low-precision reference (inputs rounded to the dtype, each matrix
  product accumulated in float32 and rounded to the dtype, the softmax computed in float32 and the probabilities
  rounded, the output rounded). Its distance from the float64 reference is the yardstick of how much error a correct
  low-precision implementation may have (see ``tests/_tolerance.py``).

``attention_ref_torch`` is the same float64 computation in PyTorch, differentiable, for gradient tests.
``kvcache_ref`` and ``rotary_ref`` give the semantics of ``flash_attn_with_kvcache`` (cache append, rotary, paged
caches) on top of ``attention_ref``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

# dtype helpers and the tolerance rule live in their own modules; part of this module's API
from ._reference_dtypes import _is_low_precision, _normalise_compute_dtype, round_to, to_float64
from ._reference_tolerance import TOLERANCE_FLOORS, dtype_name, error_budget, max_error, tolerance_floor  # noqa: F401

__all__ = [
    "attention_ref",
    "attention_ref_torch",
    "rotary_ref",
    "kvcache_ref",
    "visible_mask",
    "alibi_bias",
    "to_float64",
    "round_to",
    "TOLERANCE_FLOORS",
    "tolerance_floor",
    "error_budget",
    "max_error",
]

ArrayLike = Any


# --------------------------------------------------------------------------------------------------------------------
# masks and biases (shared by the NumPy and torch references)


def visible_mask(seqlen_q: int, seqlen_k: int, window_size: Tuple[int, int] = (-1, -1),
                 causal: bool = False) -> np.ndarray:
    """Boolean (seqlen_q, seqlen_k) matrix: True where query i may attend to key j (bottom-right alignment)."""
    left, right = int(window_size[0]), int(window_size[1])
    if causal:
        right = 0
    i = np.arange(seqlen_q, dtype=np.int64)[:, None]
    j = np.arange(seqlen_k, dtype=np.int64)[None, :]
    diag = i + seqlen_k - seqlen_q  # the key aligned with query i
    ok = np.ones((seqlen_q, seqlen_k), dtype=bool)
    if left >= 0:
        ok &= j >= diag - left
    if right >= 0:
        ok &= j <= diag + right
    return ok


def alibi_bias(slopes: np.ndarray, seqlen_q: int, seqlen_k: int) -> np.ndarray:
    """ALiBi bias (nheads, seqlen_q, seqlen_k) = -slope * |i + seqlen_k - seqlen_q - j| for one sequence."""
    i = np.arange(seqlen_q, dtype=np.float64)[:, None]
    j = np.arange(seqlen_k, dtype=np.float64)[None, :]
    dist = np.abs(i + seqlen_k - seqlen_q - j)
    return -np.asarray(slopes, dtype=np.float64)[:, None, None] * dist[None]


# --------------------------------------------------------------------------------------------------------------------
# the NumPy reference


def _attend_one(q, k, v, *, scale, mask, softcap, slopes, keep, dropout_p, dtype):
    """Attention for one sequence. q (sq, h, d), k/v (sk, hk, d) already float64 (or rounded float32 in low precision).

    Returns out (sq, h, d) float64-or-float32 and lse (h, sq).
    """
    sq, h, d = q.shape
    sk, hk, _ = k.shape
    lowp = _is_low_precision(dtype)
    rnd = (lambda x: round_to(x, dtype)) if lowp else (lambda x: x)
    group = h // hk
    # (h, sk, d): each query head with its key/value head (GQA/MQA)
    kh = np.repeat(np.transpose(k, (1, 0, 2)), group, axis=0)
    vh = np.repeat(np.transpose(v, (1, 0, 2)), group, axis=0)
    qh = np.transpose(q, (1, 0, 2))  # (h, sq, d)

    if lowp:
        # flash-attention's low-precision reference scales q in the dtype, multiplies in the dtype (fp32 accumulation)
        s = rnd(np.matmul(rnd(qh * np.float32(scale)), np.transpose(kh, (0, 2, 1))))
        if softcap > 0:
            s = rnd(rnd(np.tanh(rnd(s / np.float32(softcap)))) * np.float32(softcap))
    else:
        s = np.matmul(qh, np.transpose(kh, (0, 2, 1))) * scale
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
    if slopes is not None:
        # the bias is float32 in flash-attention's tests, which promotes the scores to float32 there as well
        s = s + alibi_bias(slopes, sq, sk).astype(s.dtype)

    acc = np.float32 if lowp else np.float64
    s = s.astype(acc)
    m = np.broadcast_to(mask[None], s.shape)
    s_masked = np.where(m, s, -np.inf)
    any_visible = mask.any(axis=1)  # (sq,)
    row_max = np.max(s_masked, axis=-1, keepdims=True)  # NaN if any visible score is NaN (np.max propagates it)
    # Only a row that sees no key has max -inf: shift it by 0 instead (its e is all zeros). NaN and +inf maxima stay,
    # so a NaN anywhere in a row's inputs makes its softmax, output and LSE NaN, as plain float64 math would.
    row_max = np.where(row_max == -np.inf, 0.0, row_max)
    visible = any_visible[None, :, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e = np.where(m, np.exp(s_masked - row_max), 0.0)
        denom = e.sum(axis=-1, keepdims=True)
        p = np.where(visible, e / np.where(visible, denom, 1.0), 0.0)
        # log(sum(exp(s))) of a row holding +inf (and no NaN) is +inf, as torch.logsumexp gives
        lse = np.where(row_max[..., 0] == np.inf, np.inf, np.log(denom[..., 0]) + row_max[..., 0])
        lse = np.where(any_visible[None, :], lse, np.inf)
    p = rnd(p.astype(acc))

    vv = vh
    if keep is not None:
        p = p * keep.astype(acc)
        if lowp:
            vv = rnd(vh / np.float32(1.0 - dropout_p))
        else:
            p = p / (1.0 - dropout_p)
    bad = ~np.isfinite(vv)
    if bad.any():  # a NaN/inf value reaches exactly the rows that see its key (never through a masked key's p = 0)
        with np.errstate(invalid="ignore", over="ignore"):
            seen = np.where(m[..., None], p[..., None] * np.where(bad, vv, 0.0)[:, None], 0.0).sum(axis=2)
        vv = np.where(bad, 0.0, vv).astype(vv.dtype)
        out = rnd(np.matmul(p, vv) + seen.astype(acc))
    else:
        out = rnd(np.matmul(p, vv))  # (h, sq, d)
    out = np.where(any_visible[None, :, None], out, 0.0)
    return np.transpose(out, (1, 0, 2)), lse.astype(acc)


def _real(x, name: str, *, optional: bool = False) -> Optional[float]:
    """A real number argument as float; TypeError naming it otherwise (None allowed when `optional`)."""
    if x is None and optional:
        return None
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}") from None


def _window(window_size) -> Tuple[int, int]:
    """(left, right) as two ints; TypeError/ValueError naming window_size otherwise."""
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise ValueError(f"window_size: expected a pair (left, right), got {window_size!r}") from None
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) for w in (left, right)):
        raise TypeError(f"window_size: expected two ints, got {window_size!r}")
    return int(left), int(right)


def _check_layouts(q, k, v, varlen):
    want = 3 if varlen else 4
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != want:
            layout = "(total, nheads, headdim)" if varlen else "(batch, seqlen, nheads, headdim)"
            raise ValueError(f"{name}: expected {want} dims {layout}, got shape {x.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape:
        raise ValueError(f"q/k/v: incompatible shapes {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-2] % k.shape[-2] != 0:
        raise ValueError(f"nheads of q ({q.shape[-2]}) must be a multiple of nheads of k/v ({k.shape[-2]})")


def _slopes_for(alibi_slopes, b, nheads):
    if alibi_slopes is None:
        return None
    a = np.asarray(alibi_slopes, dtype=np.float64)
    if a.shape == (nheads,):
        return a
    if a.ndim == 2 and a.shape[1] == nheads:
        return a[b]
    raise ValueError(f"alibi_slopes: expected shape ({nheads},) or (batch, {nheads}), got {a.shape}")


def attention_ref(q: ArrayLike, k: ArrayLike, v: ArrayLike, *,
                  softmax_scale: Optional[float] = None,
                  causal: bool = False,
                  window_size: Tuple[int, int] = (-1, -1),
                  softcap: float = 0.0,
                  alibi_slopes: Optional[ArrayLike] = None,
                  cu_seqlens_q: Optional[ArrayLike] = None,
                  cu_seqlens_k: Optional[ArrayLike] = None,
                  seqused_k: Optional[ArrayLike] = None,
                  dropout_mask: Optional[ArrayLike] = None,
                  dropout_p: float = 0.0,
                  compute_dtype=np.float64,
                  return_lse: bool = False):
    """Reference attention with flash_attn 2.x semantics.

    Args:
        q, k, v: dense ``(batch, seqlen, nheads, d)`` or, with ``cu_seqlens_q``/``cu_seqlens_k``, varlen
            ``(total, nheads, d)``. Any float dtype (incl. ``ml_dtypes.bfloat16``) or PyTorch tensors.
        softmax_scale: defaults to ``d ** -0.5``.
        causal, window_size: bottom-right aligned masks; ``window_size=(left, right)``, -1 = unbounded.
        softcap: ``> 0`` applies ``softcap * tanh(score / softcap)``.
        alibi_slopes: ``(nheads,)`` or ``(batch, nheads)``.
        cu_seqlens_q, cu_seqlens_k: int ``(batch + 1,)`` prefix sums for the varlen layout (both or neither).
        seqused_k: ``(batch,)`` number of keys actually used by each sequence (the rest of k/v is ignored, and the
            mask alignment uses this length), as with a KV cache.
        dropout_mask: boolean keep-mask ``(batch, nheads, seqlen_q, seqlen_k)`` (varlen: padded to the max lengths,
            top-left corner used); kept probabilities are scaled by ``1 / (1 - dropout_p)``.
        compute_dtype: ``np.float64`` for the exact reference, or float32/float16/bfloat16 for the low-precision
            reference computed the way flash-attention's tests do (see module docstring).
        return_lse: also return the natural-log log-sum-exp, ``(batch, nheads, seqlen_q)`` dense or
            ``(nheads, total_q)`` varlen; ``+inf`` for rows that see no key.

    Returns:
        ``out`` (same layout as q; float64, or ``compute_dtype`` for the low-precision reference), and ``lse``
        (float64 / float32) when ``return_lse``.
    """
    dtype = _normalise_compute_dtype(compute_dtype)
    lowp = _is_low_precision(dtype)
    q64, k64, v64 = to_float64(q, "q"), to_float64(k, "k"), to_float64(v, "v")
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_k must be given together")
    _check_layouts(q64, k64, v64, varlen)
    if lowp:
        q64, k64, v64 = round_to(q64, dtype), round_to(k64, dtype), round_to(v64, dtype)
    d = q64.shape[-1]
    softmax_scale, softcap = _real(softmax_scale, "softmax_scale", optional=True), _real(softcap, "softcap")
    dropout_p, window_size = _real(dropout_p, "dropout_p"), _window(window_size)
    scale = float(d ** -0.5) if softmax_scale is None else float(softmax_scale)
    if dropout_p and dropout_mask is None:
        raise ValueError("dropout_p > 0 needs the keep-mask (dropout_mask) for a deterministic reference")
    keep_all = None if dropout_mask is None else np.asarray(dropout_mask).astype(bool)
    nheads = q64.shape[-2]

    if varlen:
        cq = np.asarray(cu_seqlens_q, dtype=np.int64)
        ck = np.asarray(cu_seqlens_k, dtype=np.int64)
        if cq.ndim != 1 or ck.shape != cq.shape:
            raise ValueError(f"cu_seqlens_q/k: expected equal 1-d shapes, got {cq.shape} and {ck.shape}")
        batch = cq.shape[0] - 1
    else:
        batch = q64.shape[0]
    used = None if seqused_k is None else np.asarray(seqused_k, dtype=np.int64)

    out_dtype = np.float32 if lowp else np.float64
    out = np.zeros(q64.shape, dtype=out_dtype)
    if varlen:
        lse = np.full((nheads, q64.shape[0]), np.inf, dtype=out_dtype)
    else:
        lse = np.full((batch, nheads, q64.shape[1]), np.inf, dtype=out_dtype)

    for b in range(batch):
        if varlen:
            qs = q64[cq[b]:cq[b + 1]]
            ks = k64[ck[b]:ck[b + 1]]
            vs = v64[ck[b]:ck[b + 1]]
        else:
            qs, ks, vs = q64[b], k64[b], v64[b]
        if used is not None:
            ks, vs = ks[:used[b]], vs[:used[b]]
        sq, sk = qs.shape[0], ks.shape[0]
        if sq == 0 or sk == 0:
            continue  # no query rows, or rows that see no key: zeros and lse = +inf, as initialised
        mask = visible_mask(sq, sk, window_size, causal)
        keep = None if keep_all is None else keep_all[b, :, :sq, :sk]
        o, l = _attend_one(qs, ks, vs, scale=scale, mask=mask, softcap=float(softcap),
                           slopes=_slopes_for(alibi_slopes, b, nheads), keep=keep,
                           dropout_p=float(dropout_p), dtype=dtype)
        if varlen:
            out[cq[b]:cq[b + 1]] = o
            lse[:, cq[b]:cq[b + 1]] = l
        else:
            out[b] = o
            lse[b] = l

    if lowp:
        out = out.astype(dtype)
    if return_lse:
        return out, lse
    return out


# --------------------------------------------------------------------------------------------------------------------
# rotary embedding and the KV cache


def rotary_ref(x: ArrayLike, cos: ArrayLike, sin: ArrayLike, positions: ArrayLike, *,
               interleaved: bool) -> np.ndarray:
    """Rotary embedding of x (rows, nheads, d) at integer ``positions`` (rows,), float64.

    ``cos``/``sin`` are (seqlen_ro, rotary_dim / 2). ``interleaved=True`` rotates the pairs (0, 1), (2, 3), ...
    (GPT-J); ``False`` rotates (x[i], x[i + rotary_dim / 2]) (GPT-NeoX). Dims past rotary_dim are unchanged.
    """
    x = to_float64(x).copy()
    cos, sin = to_float64(cos), to_float64(sin)
    half = cos.shape[1]
    rd = 2 * half
    pos = np.asarray(positions, dtype=np.int64)
    c = cos[pos][:, None, :]  # (rows, 1, half)
    s = sin[pos][:, None, :]
    if interleaved:
        x0, x1 = x[..., 0:rd:2].copy(), x[..., 1:rd:2].copy()
        x[..., 0:rd:2] = x0 * c - x1 * s
        x[..., 1:rd:2] = x0 * s + x1 * c
    else:
        x0, x1 = x[..., :half].copy(), x[..., half:rd].copy()
        x[..., :half] = x0 * c - x1 * s
        x[..., half:rd] = x0 * s + x1 * c
    return x


def kvcache_ref(q: ArrayLike, k_cache: ArrayLike, v_cache: ArrayLike, k: Optional[ArrayLike] = None,
                v: Optional[ArrayLike] = None, *, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                window_size=(-1, -1), softcap=0.0, rotary_interleaved=True, alibi_slopes=None,
                return_lse=False, compute_dtype=np.float64):
    """Reference for ``flash_attn_with_kvcache`` (float64, or low precision through ``compute_dtype``).

    Works on copies: returns ``(out, [lse,] k_cache_new, v_cache_new)`` where the caches are float64 copies with the
    new rows written in (the real function updates the caller's caches in place). Layouts as flash_attn 2.x:
    q (batch, seqlen_q, nheads, d); caches (batch_cache, seqlen_cache, nheads_k, d) or, with ``block_table``
    (batch, max_blocks) int, paged (num_blocks, page_size, nheads_k, d); new rows k/v (batch, seqlen_new,
    nheads_k, d); ``cache_seqlens`` int or (batch,); ``cache_leftpad`` (batch,) first valid cache row.

    As flash_attn 2.x: new rows go to cache rows ``cache_seqlens[b] + i`` (``cache_seqlens`` counts from row 0, the
    leftpad included); keys ``leftpad[b] <= j < cache_seqlens[b] + seqlen_new`` are attended with bottom-right
    alignment; rotary (only when new k is given) rotates new k at positions ``cache_seqlens + i`` (absolute cache
    rows, leftpad or not) and q at the same successive positions when causal or windowed, otherwise every q row at
    ``cache_seqlens``.
    """
    q64 = to_float64(q)
    kc, vc = to_float64(k_cache).copy(), to_float64(v_cache).copy()
    batch, sq, nheads, d = q64.shape
    knew = None if k is None else to_float64(k)
    vnew = None if v is None else to_float64(v)
    if (knew is None) != (vnew is None):
        raise ValueError("k and v must be given together")
    snew = 0 if knew is None else knew.shape[1]
    if cache_seqlens is None:
        # flash_attn: without cache_seqlens the whole cache is attended (seqlen_k = its capacity); appending then has
        # no position, so the public function rejects k/v without cache_seqlens.
        if knew is not None:
            raise ValueError("cache_seqlens: required when k and v are appended")
        capacity = kc.shape[1] if block_table is None else np.shape(block_table)[1] * kc.shape[1]
        lens = np.full(batch, capacity, dtype=np.int64)
    else:
        lens = np.broadcast_to(np.asarray(cache_seqlens, dtype=np.int64), (batch,)).copy()
    leftpad = np.zeros(batch, dtype=np.int64) if cache_leftpad is None else np.asarray(cache_leftpad, np.int64)
    bidx = np.arange(batch) if cache_batch_idx is None else np.asarray(cache_batch_idx, dtype=np.int64)
    rotate = rotary_cos is not None and knew is not None
    if rotate and 2 * np.shape(rotary_cos)[1] > d:
        raise ValueError(f"rotary_cos: rotary_dim {2 * np.shape(rotary_cos)[1]} exceeds headdim {d}")
    windowed = causal or window_size[0] >= 0 or window_size[1] >= 0

    def cache_rows(b, rows):
        """(cache index arrays) addressing logical rows `rows` of sequence b."""
        if block_table is None:
            return (np.full(rows.shape, bidx[b]), rows)
        bt = np.asarray(block_table, dtype=np.int64)
        page = kc.shape[1]
        return (bt[b][rows // page], rows % page)

    outs, lses = [], []
    for b in range(batch):
        q_b = q64[b]
        rot0 = lens[b]  # absolute cache row, also with a leftpad (the CUDA kernel adds leftpad_k to its cos/sin row)
        if rotate:
            qpos = rot0 + np.arange(sq) if windowed else np.full(sq, rot0)
            q_b = rotary_ref(q_b, rotary_cos, rotary_sin, qpos, interleaved=rotary_interleaved)
        if knew is not None:
            kn, vn = knew[b], vnew[b]
            if rotate:
                kn = rotary_ref(kn, rotary_cos, rotary_sin, rot0 + np.arange(snew), interleaved=rotary_interleaved)
            dst = cache_rows(b, lens[b] + np.arange(snew))
            kc[dst] = kn
            vc[dst] = vn
        src = cache_rows(b, np.arange(leftpad[b], lens[b] + snew))
        ks, vs = kc[src], vc[src]
        o, l = attention_ref(q_b[None], ks[None], vs[None], softmax_scale=softmax_scale, causal=causal,
                             window_size=window_size, softcap=softcap,
                             alibi_slopes=_slopes_for(alibi_slopes, b, nheads),
                             compute_dtype=compute_dtype, return_lse=True)
        outs.append(o[0])
        lses.append(l[0])
    out = np.stack(outs)
    lse = np.stack(lses)
    if return_lse:
        return out, lse, kc, vc
    return out, kc, vc


# --------------------------------------------------------------------------------------------------------------------
# the differentiable torch reference (gradients)


def attention_ref_torch(q, k, v, *,
                        softmax_scale: Optional[float] = None,
                        causal: bool = False,
                        window_size: Tuple[int, int] = (-1, -1),
                        softcap: float = 0.0,
                        alibi_slopes=None,
                        cu_seqlens_q=None,
                        cu_seqlens_k=None,
                        seqused_k=None,
                        dropout_mask=None,
                        dropout_p: float = 0.0,
                        compute_dtype=None,
                        return_lse: bool = False):
    """Differentiable PyTorch version of :func:`attention_ref` (same arguments and layouts).

    ``compute_dtype=None`` (default) computes in float64 (inputs are upcast, so gradients flow back to the inputs in
    their own dtype). Passing ``compute_dtype=q.dtype`` (e.g. ``torch.bfloat16``) computes in that dtype the way
    flash-attention's tests build the low-precision reference: matrix products and tanh in the dtype, the ALiBi bias
    in float32, the softmax in float32 and its probabilities cast back to the dtype. Returns ``out`` in the compute
    dtype (and ``lse`` in float32/float64).
    """
    import torch

    cdt = torch.float64 if compute_dtype is None else compute_dtype
    lowp = cdt != torch.float64
    qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    if varlen and (cu_seqlens_q is None or cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q and cu_seqlens_k must be given together")
    if qc.dim() != (3 if varlen else 4):
        raise ValueError(f"q: unexpected shape {tuple(qc.shape)}")
    d = qc.shape[-1]
    scale = float(d ** -0.5) if softmax_scale is None else float(softmax_scale)
    nheads, nheads_k = qc.shape[-2], kc.shape[-2]
    if nheads % nheads_k:
        raise ValueError(f"nheads of q ({nheads}) must be a multiple of nheads of k/v ({nheads_k})")
    group = nheads // nheads_k
    if varlen:
        cq = [int(x) for x in (cu_seqlens_q.tolist() if hasattr(cu_seqlens_q, "tolist") else cu_seqlens_q)]
        ck = [int(x) for x in (cu_seqlens_k.tolist() if hasattr(cu_seqlens_k, "tolist") else cu_seqlens_k)]
        batch = len(cq) - 1
    else:
        batch = qc.shape[0]
    used = None
    if seqused_k is not None:
        used = [int(x) for x in (seqused_k.tolist() if hasattr(seqused_k, "tolist") else seqused_k)]
    slopes_all = None
    if alibi_slopes is not None:
        slopes_all = torch.as_tensor(np.asarray(to_float64(alibi_slopes)))
    acc = torch.float32 if lowp else torch.float64

    outs, lses = [], []
    for b in range(batch):
        if varlen:
            qs, ks, vs = qc[cq[b]:cq[b + 1]], kc[ck[b]:ck[b + 1]], vc[ck[b]:ck[b + 1]]
        else:
            qs, ks, vs = qc[b], kc[b], vc[b]
        if used is not None:
            ks, vs = ks[:used[b]], vs[:used[b]]
        sq, sk = qs.shape[0], ks.shape[0]
        kh = ks.repeat_interleave(group, dim=1).transpose(0, 1)  # (h, sk, d)
        vh = vs.repeat_interleave(group, dim=1).transpose(0, 1)
        qh = qs.transpose(0, 1)  # (h, sq, d)
        s = torch.matmul(qh * scale, kh.transpose(1, 2))
        if softcap > 0:
            s = torch.tanh(s / softcap) * softcap
        if slopes_all is not None:
            sl = slopes_all if slopes_all.dim() == 1 else slopes_all[b]
            bias = torch.as_tensor(alibi_bias(sl.numpy(), sq, sk), dtype=acc)
            s = s.to(acc) + bias
        s = s.to(acc)
        mask = torch.as_tensor(visible_mask(sq, sk, window_size, causal))
        any_visible = mask.any(dim=1)
        # rows without a visible key: give them a harmless finite row so softmax stays NaN-free, then zero them
        fill = mask | ~any_visible[:, None]
        s_m = s.masked_fill(~fill, float("-inf"))
        p = torch.softmax(s_m, dim=-1)
        p = p.masked_fill(~mask, 0.0)
        lse = torch.logsumexp(s_m, dim=-1)
        lse = torch.where(any_visible[None, :], lse, torch.full_like(lse, float("inf")))
        p = p.to(cdt)
        vv = vh
        if dropout_mask is not None:
            keep = torch.as_tensor(np.asarray(dropout_mask)[b, :, :sq, :sk]) if not hasattr(dropout_mask, "dim") \
                else dropout_mask[b, :, :sq, :sk]
            p = p.masked_fill(~keep.bool(), 0.0)
            vv = vh * (1.0 / (1.0 - dropout_p))
        bad = ~torch.isfinite(vv)
        if bool(bad.any()):  # as the NumPy reference: a NaN/inf value reaches only the rows that see its key
            seen = torch.where(mask[None, :, :, None], p[..., None] * torch.where(bad, vv, 0.0)[:, None], 0.0)
            o = (torch.matmul(p, torch.where(bad, 0.0, vv)) + seen.sum(dim=2)).transpose(0, 1)
        else:
            o = torch.matmul(p, vv).transpose(0, 1)  # (sq, h, d)
        outs.append(o)
        lses.append(lse)
    if varlen:
        out = torch.cat(outs, dim=0) if outs else qc[:0]
        lse = torch.cat(lses, dim=1) if lses else torch.zeros((nheads, 0), dtype=acc)
    else:
        out = torch.stack(outs, dim=0)
        lse = torch.stack(lses, dim=0)
    if return_lse:
        return out, lse
    return out
