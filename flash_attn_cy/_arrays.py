"""Array plumbing between the public API and `_core`: which kind of array the caller gave (NumPy or PyTorch),
its element type, zero-copy host views for the ABI, and output allocation in the caller's kind.

`_core` takes plain buffers: NumPy views that share the caller's memory, with fp16/bf16 reinterpreted as uint16
(the C side knows the real type from the dtype name). Contiguous inputs are never copied; strided inputs pass their
strides when the last axis has stride 1, otherwise they are copied once. Tensors on Apple's MPS device are handed to
the shim helper module `flash_attn_cy._mps` (`device_tensor(t) -> _core.DeviceTensor`).
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Tuple

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_NP_FLOAT_NAMES = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def _torch():
    """The torch module if the caller has imported it (a torch tensor cannot exist otherwise)."""
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def compiling() -> bool:
    """True while torch.compile (dynamo) traces the caller: then tensors must stay tensors (no NumPy views, no
    Python ints read from tensor values), so the public functions route through the torch custom ops."""
    torch = _torch()
    if torch is None:
        return False
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    if is_compiling is not None and is_compiling():
        return True
    # torch.jit.trace records only torch ops: a result computed through NumPy views would be traced as the
    # torch.empty it was written into (a graph returning uninitialised memory), so the custom ops carry the call
    return bool(torch.jit.is_tracing())


_is_compiling: Any = None  # torch.compiler.is_compiling, once a call has found torch imported (see dynamo_compiling)


def dynamo_compiling() -> bool:
    """True while torch.compile traces the caller: asked by the public functions on every call before the plan cache
    (which dynamo cannot trace into), so it must be cheap: torch's own function is looked up once and kept (dynamo
    folds a call of it to True while tracing). torch.jit.trace is noticed by the plan cache itself."""
    global _is_compiling
    if _is_compiling is not None:
        return _is_compiling()
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if is_compiling is None:  # a torch without torch.compiler.is_compiling
        return compiling()
    _is_compiling = is_compiling
    return is_compiling()


def _functorch_wrapped(x: Any) -> bool:
    """A tensor inside torch.func.vmap/grad: a wrapper without storage of its own. Eager only: while compiling or
    tracing the custom ops carry the call and never read storage, and dynamo cannot trace the check (so it goes
    second). Looked up on every call, not cached in module state: dynamo would guard on such state."""
    if compiling():
        return False
    wrapped = getattr(getattr(_torch()._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return wrapped is not None and wrapped(x)


def kind_of(x: Any, name: str) -> str:
    """'numpy' or 'torch' (CPU) or 'mps'; TypeError for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    if is_torch(x):
        if x.is_cpu:  # the flags avoid building a torch.device per call
            if x.layout is not _torch().strided:  # sparse or mkldnn tensors have no strides to address
                raise TypeError(f"{name}: torch tensors of layout {x.layout} are not supported; pass a dense "
                                "(strided) tensor, e.g. x.to_dense()")
            if _functorch_wrapped(x):
                raise TypeError(f"{name}: torch.func transforms (vmap, grad, jacrev, ...) are not supported by "
                                "flash_attn_cy; call it outside the transform (batch through the leading axis, "
                                "differentiate with torch.autograd / .backward())")
            return "torch"
        if x.is_mps:
            return "mps"
        dev = x.device.type
        raise ValueError(f"{name}: tensors on device '{dev}' are not supported; use CPU or MPS tensors")
    raise TypeError(f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}")


# str(torch dtype) -> FLOAT_DTYPES name. Keyed by the dtype's name, a constant table: a dict filled lazily on first
# use made torch.compile guard on its contents and compile every function twice (before and after the filling).
_TORCH_FLOAT_NAMES = {"torch.float16": "float16", "torch.bfloat16": "bfloat16", "torch.float32": "float32",
                      "torch.float64": "float64"}


def float_dtype(x: Any, name: str) -> str:
    """The element type name of a float array/tensor, one of FLOAT_DTYPES; TypeError otherwise."""
    if isinstance(x, np.ndarray):
        known = _NP_FLOAT_NAMES.get(x.dtype)
        if known is not None:
            return known
        dname = x.dtype.name  # ml_dtypes.bfloat16 (its dtype object is not a NumPy builtin)
        if dname in FLOAT_DTYPES:
            return dname
    else:
        known = _TORCH_FLOAT_NAMES.get(str(x.dtype))
        if known is not None:
            return known
        dname = str(x.dtype)
    raise TypeError(f"{name}: dtype must be float16, bfloat16, float32 or float64, got {dname}")


def _host_numpy(x: Any) -> np.ndarray:
    """A NumPy view sharing x's memory, 16-bit floats reinterpreted as uint16."""
    if isinstance(x, np.ndarray):
        if x.dtype.itemsize == 2 and x.dtype.kind != "u":
            return x.view(np.uint16)
        return x
    torch = _torch()
    t = x.detach() if x.requires_grad else x
    if t.is_neg():  # a lazily negated view (real dtypes only here, so no conjugate bit)
        t = t.resolve_neg()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError")


def _byte_extent(x: Any) -> Optional[Tuple[int, int]]:
    """[first, last + 1) byte addresses x's elements occupy, or None when it has none."""
    if isinstance(x, np.ndarray):
        ptr, strides, itemsize = x.__array_interface__["data"][0], x.strides, x.itemsize
    else:
        ptr, itemsize = x.data_ptr(), x.element_size()
        strides = [s * itemsize for s in x.stride()]
    lo = hi = ptr
    for n, st in zip(x.shape, strides):
        if n == 0:
            return None
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    return lo, hi + itemsize


def shares_memory(a: Any, b: Any) -> bool:
    """True if NumPy arrays / CPU tensors a and b have an element in common (exact, so that interleaved views of one
    buffer, like dq/dk/dv of a packed dqkv, do not count). MPS tensors are not inspected (False)."""
    if any(not isinstance(x, np.ndarray) and not x.is_cpu for x in (a, b)):
        return False
    ea, eb = _byte_extent(a), _byte_extent(b)
    if ea is None or eb is None or ea[1] <= eb[0] or eb[1] <= ea[0]:  # the common case, decided cheaply
        return False
    x, y = _host_numpy(a), _host_numpy(b)
    try:
        return bool(np.shares_memory(x, y, max_work=100_000))
    except _TooHardError:  # strides too irregular to decide cheaply: the bounds decide
        return bool(np.may_share_memory(x, y))


def check_not_overlapping(written: Any, read: Any) -> None:
    """Raise ValueError naming the pair if a tensor written in place shares memory with another written one or with
    an input: the kernels would read values they are overwriting (silently wrong results). Both are (name, x)
    sequences; None entries are skipped."""
    written = [(n, x) for n, x in written if x is not None]
    read = [(n, x) for n, x in read if x is not None]
    for i, (name, x) in enumerate(written):
        for other, y in written[i + 1:] + read:
            if shares_memory(x, y):
                raise ValueError(f"{name}: shares memory with {other}; an output written in place must not overlap "
                                 "another output or an input")


def check_torch_in_place(x: Any, name: str) -> None:
    """Refuse, as PyTorch refuses any in-place op, to write into a tensor PyTorch would not let one modify: an inference
    tensor outside inference mode, or (with grad mode on) a tensor that requires grad - a leaf or a view of one, as
    torch says, and any other tensor in a graph too, since the write is not differentiable. NumPy arrays pass."""
    if not is_torch(x):
        return
    torch = _torch()
    if x.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{name}: Inplace update to inference tensor outside InferenceMode is not allowed "
                           "(flash_attn_cy writes it in place); clone it first, or call inside torch.inference_mode()")
    if x.requires_grad and torch.is_grad_enabled():
        base = x._base
        if x.is_leaf:
            what = "a leaf Variable that requires grad"
        elif base is not None and base.is_leaf and base.requires_grad:
            what = "a view of a leaf Variable that requires grad"
        else:
            what = "a tensor that requires grad (the in-place KV-cache append is not differentiable)"
        raise RuntimeError(f"{name}: {what} is being used in an in-place operation; detach() it or write under "
                           "torch.no_grad()")


def bump_versions(*xs: Any) -> None:
    """After writing torch tensors in place through their memory: advance their version counters, as an in-place op
    does, so autograd detects a saved tensor that changed (instead of silently computing wrong gradients). Views
    share their base's counter. Inference tensors have none."""
    for x in xs:
        if is_torch(x) and not x.is_inference():
            _torch().autograd.graph.increment_version(x)


def _usable_strides(a: np.ndarray) -> bool:
    """True if the ABI can address `a` in place: last-axis stride 1 (or length 1) and non-negative strides that are
    whole elements."""
    isz = a.dtype.itemsize
    for n, s in zip(a.shape, a.strides):
        if n > 1 and (s < 0 or s % isz):
            return False
    return a.ndim == 0 or a.shape[-1] <= 1 or a.strides[-1] == isz


def _element_strides_fix(a: np.ndarray) -> np.ndarray:
    """Axes of length 1 may carry any stride in NumPy; give them a harmless one so the C stride checks pass."""
    if all(s >= 0 for s in a.strides) and (a.ndim == 0 or a.shape[-1] > 1 or a.strides[-1] == a.dtype.itemsize):
        return a
    strides = list(a.strides)
    for i, (n, s) in enumerate(zip(a.shape, strides)):
        if n <= 1:
            strides[i] = a.dtype.itemsize if i == a.ndim - 1 else 0
    return np.lib.stride_tricks.as_strided(a, a.shape, strides, writeable=a.flags.writeable)


def core_view(x: Any, name: str, *, lead_axis: bool = False, in_place: bool = False, writable: bool = False):
    """Buffer for `_core`: a zero-copy NumPy view (copied once if its strides are unusable), or a DeviceTensor for
    MPS tensors. `lead_axis` prepends an axis of length 1 (the varlen layout travels as [1, total, heads, dim]).
    `in_place`: the ABI writes into this array, so a copy would lose the result; raise instead of copying."""
    if not isinstance(x, np.ndarray):
        if x.is_mps:
            from . import _mps  # provided by the Metal shim component
            t = x.unsqueeze(0) if lead_axis else x
            return _mps.device_tensor(t)
        if x.is_contiguous():  # the common torch case: its NumPy view is C-contiguous, strides >= 0, writable
            a = _host_numpy(x)
            return a[None] if lead_axis else a
    a = _host_numpy(x)
    if lead_axis:
        a = a[None]
    if a.flags.c_contiguous and (a.ndim == 0 or min(a.strides) >= 0):  # the common case, checked cheaply
        if (writable or in_place) and not a.flags.writeable:
            raise ValueError(f"{name}: array is read-only but must be written in place")
        return a
    if not _usable_strides(a):
        if in_place:
            raise ValueError(f"{name}: must have a contiguous last dimension (stride 1) and non-negative strides, "
                             "because it is updated in place")
        a = np.ascontiguousarray(a)
    if (writable or in_place) and not a.flags.writeable:
        raise ValueError(f"{name}: array is read-only but must be written in place")
    return _element_strides_fix(a)


# NumPy outputs of at least this many bytes come from the package's own page allocator (_core.HostBuffer) where the
# Metal shim is built: the only host memory it wraps without a copy (Apple forbids wrapping malloc'd memory, so the
# caller's arrays are copied; see csrc/fa_host_memory.h). Elsewhere (and below it) np.empty: copying is cheaper.
HOST_BUFFER_MIN_BYTES = 16384


def _metal_built() -> bool:
    try:
        from ._build_info import BUILD_INFO
    except ImportError:  # pragma: no cover - a source checkout without the generated file
        return False
    return BUILD_INFO.get("metal shim built") == "yes"


_OUTPUTS_IN_HOST_BUFFERS = _metal_built()


def page_aligned_empty(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised (in fact zeroed) NumPy array in memory from _core.HostBuffer, which it keeps alive."""
    from . import _core
    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(_core.HostBuffer(count * dt.itemsize), dtype=dt, count=count).reshape(shape)


def empty(kind: str, like: Any, shape: Tuple[int, ...], dtype: Optional[str] = None, fill: Optional[float] = None):
    """A new array of the caller's kind (NumPy, or a torch tensor on like's device). dtype: a FLOAT_DTYPES name or
    None for like's own dtype. fill: initial value (None = uninitialised)."""
    if kind == "numpy":
        np_dtype = like.dtype if dtype is None else (_np_bfloat16() if dtype == "bfloat16" else np.dtype(dtype))
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        if _OUTPUTS_IN_HOST_BUFFERS and nbytes >= HOST_BUFFER_MIN_BYTES:
            out = page_aligned_empty(shape, np_dtype)
        else:
            out = np.empty(shape, dtype=np_dtype)
        if fill is not None:
            out[...] = fill
        return out
    torch = _torch()
    t_dtype = like.dtype if dtype is None else getattr(torch, dtype)
    device = None if kind == "torch" else like.device  # "torch" is the CPU kind: skip building a device object
    if fill is None:
        return torch.empty(shape, dtype=t_dtype, device=device)
    return torch.full(shape, fill, dtype=t_dtype, device=device)


def _np_bfloat16():
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - bf16 arrays cannot exist without it
        raise TypeError("bfloat16 NumPy arrays need the ml_dtypes package") from e
    return np.dtype(ml_dtypes.bfloat16)


def host_int32(x: Any, name: str, *, ndim: int = 1) -> np.ndarray:
    """An integer array/tensor (cu_seqlens, cache_seqlens, block_table, ...) as a C-contiguous int32 NumPy array.
    flash_attn documents these as int32; any integer dtype is accepted here (``np.cumsum`` and ``torch.tensor([...])``
    give int64) and converted after a range check, floats and bools are a TypeError. Small metadata arrays only:
    copied freely."""
    if isinstance(x, np.ndarray):
        a = x
    elif is_torch(x):
        a = x.detach().cpu().numpy()
    else:
        raise TypeError(f"{name}: expected an int32 numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: dtype must be int32 (or another integer type), got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {tuple(a.shape)}")
    if a.dtype != np.int32:
        info = np.iinfo(np.int32)
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise ValueError(f"{name}: values must fit in int32, got range [{a.min()}, {a.max()}]")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)


def host_float32(x: Any, name: str) -> np.ndarray:
    """A float32 array/tensor (ALiBi slopes) as a C-contiguous NumPy array; TypeError for other dtypes."""
    if isinstance(x, np.ndarray):
        a = x
    elif is_torch(x):
        a = x.detach().cpu()
        if str(a.dtype) != "torch.float32":
            raise TypeError(f"{name}: dtype must be float32, got {a.dtype}")
        a = a.numpy()
    else:
        raise TypeError(f"{name}: expected a float32 numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name}: dtype must be float32, got {a.dtype}")
    return np.ascontiguousarray(a)


def host_rotary(x: Any, name: str, dtype: str) -> np.ndarray:
    """rotary_cos/sin: 2-d, the dtype of q, as a C-contiguous core view (16-bit as uint16)."""
    if not isinstance(x, np.ndarray) and not is_torch(x):
        raise TypeError(f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    if is_torch(x) and x.device.type != "cpu":
        x = x.cpu()
    got = float_dtype(x, name)
    if got != dtype:
        raise TypeError(f"{name}: dtype must match q ({dtype}), got {got}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (seqlen_ro, rotary_dim / 2), got {tuple(x.shape)}")
    return np.ascontiguousarray(_host_numpy(x))
