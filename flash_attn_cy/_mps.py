"""Tensors that already live in Metal buffers: PyTorch MPS tensors and DLPack arrays on the Metal device.

The Metal backend binds such a tensor's own ``MTLBuffer`` at the tensor's byte offset, so no byte is copied
(``fa_device_buffers`` in csrc/fa_abi.h). This module finds that buffer:

1. **PyTorch storage** (every PyTorch MPS tensor): an MPS tensor's untyped storage ``data_ptr()`` is its
   ``MTLBuffer`` - the mapping PyTorch's own guide for custom MPS operations relies on (``getMTLBufferStorage``) -
   and ``storage_offset() * element_size()`` the offset. PyTorch tensors never go through DLPack: the first
   releases that export MPS tensors through DLPack (2.9.0, 2.9.1) put ``buffer + offset`` in the ``data`` field of a
   sliced view (k/v sliced out of a packed qkv, a cache slice), which is not an MTLBuffer at all; messaging it would
   crash the process.
2. **DLPack** (any other framework, e.g. MLX since mlx PR 3531): an array whose ``__dlpack_device__()`` is
   ``(kDLMetal = 8, id)`` exports a capsule whose ``data`` field is the ``id<MTLBuffer>`` and ``byte_offset`` the
   offset of element 0 inside it (DLPack's convention for Metal). Both the legacy ``"dltensor"`` and the versioned
   ``"dltensor_versioned"`` capsules are read.

Ordering: the shim runs on its own Metal command queue, so ``synchronize()`` (``torch.mps.synchronize()``) is
called before each call to finish the work PyTorch has queued on those tensors; the shim waits for its own command
buffer before returning, so PyTorch sees the results. Outputs are allocated by the caller as MPS tensors.

None of the Metal paths has run on Apple hardware yet (there is no Mac where this was written); the capsule parsing
is tested on any machine with real CPU DLPack producers (NumPy, PyTorch) and hand-made kDLMetal capsules.
"""
from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any, Optional, Tuple

# DLPack's DLDeviceType values used here (dlpack.h).
KDL_CPU = 1
KDL_METAL = 8
# DLDataTypeCode
_KDL_INT, _KDL_UINT, _KDL_FLOAT, _KDL_BFLOAT = 0, 1, 2, 4
_DTYPES = {(_KDL_FLOAT, 16): "float16", (_KDL_FLOAT, 32): "float32", (_KDL_FLOAT, 64): "float64",
           (_KDL_BFLOAT, 16): "bfloat16", (_KDL_INT, 32): "int32", (_KDL_UINT, 16): "uint16"}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_pyapi = ctypes.pythonapi
_pyapi.PyCapsule_IsValid.restype = ctypes.c_int
_pyapi.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_pyapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
_pyapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


@dataclass(frozen=True)
class MetalBufferView:
    """Where a tensor lives: `handle` (the id<MTLBuffer> pointer for Metal, a host address for CPU producers),
    `byte_offset` of element [0, ..., 0], `byte_length` bytes addressable from there (the tensor's extent),
    `shape`, `strides` in elements, `dtype` name, and the DLPack `device` (type, id)."""
    handle: int
    byte_offset: int
    byte_length: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    dtype: str
    device: Tuple[int, int]


def _extent_bytes(shape: Tuple[int, ...], strides: Tuple[int, ...], itemsize: int) -> int:
    """Bytes from element 0 to one past the furthest element (0 for an empty tensor)."""
    if any(n == 0 for n in shape):
        return 0
    if any(s < 0 for n, s in zip(shape, strides) if n > 1):
        raise ValueError("negative strides are not supported for Metal tensors")
    return (sum((n - 1) * s for n, s in zip(shape, strides)) + 1) * itemsize


def parse_capsule(capsule: Any) -> MetalBufferView:
    """Read a DLPack capsule ("dltensor" or "dltensor_versioned") without consuming it: the producer's capsule
    destructor still releases it, and the memory stays valid while the exporting array is alive."""
    if _pyapi.PyCapsule_IsValid(capsule, b"dltensor_versioned"):
        managed = _DLManagedTensorVersioned.from_address(_pyapi.PyCapsule_GetPointer(capsule, b"dltensor_versioned"))
        if managed.version.major != 1:
            raise ValueError(f"DLPack: unsupported capsule version {managed.version.major}.{managed.version.minor}")
        t = managed.dl_tensor
    elif _pyapi.PyCapsule_IsValid(capsule, b"dltensor"):
        t = _DLManagedTensor.from_address(_pyapi.PyCapsule_GetPointer(capsule, b"dltensor")).dl_tensor
    else:
        raise TypeError("DLPack: expected an unconsumed 'dltensor' or 'dltensor_versioned' capsule")
    ndim = int(t.ndim)
    if ndim < 0 or ndim > 64:
        raise ValueError(f"DLPack: implausible ndim {ndim}")
    shape = tuple(int(t.shape[i]) for i in range(ndim))
    if t.strides:
        strides = tuple(int(t.strides[i]) for i in range(ndim))
    else:  # NULL strides: compact row-major
        acc, rev = 1, []
        for n in reversed(shape):
            rev.append(acc)
            acc *= max(n, 1)
        strides = tuple(reversed(rev))
    key = (int(t.dtype.code), int(t.dtype.bits))
    if int(t.dtype.lanes) != 1 or key not in _DTYPES:
        raise TypeError(f"DLPack: unsupported element type code={key[0]} bits={key[1]} lanes={int(t.dtype.lanes)}")
    itemsize = key[1] // 8
    return MetalBufferView(handle=int(t.data or 0), byte_offset=int(t.byte_offset),
                           byte_length=_extent_bytes(shape, strides, itemsize), shape=shape, strides=strides,
                           dtype=_DTYPES[key], device=(int(t.device.device_type), int(t.device.device_id)))


def _export(x: Any) -> Any:
    """x.__dlpack__(), asking for a versioned capsule where the producer supports it."""
    try:
        return x.__dlpack__(max_version=(1, 0))
    except TypeError:  # producers older than the DLPack 2023 Python API take no max_version
        return x.__dlpack__()


def _torch():
    return sys.modules.get("torch")


def _is_torch_mps(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor) and x.device.type == "mps"


def is_metal_array(x: Any) -> bool:
    """True for a PyTorch MPS tensor or any DLPack producer on the Metal device (kDLMetal)."""
    if _is_torch_mps(x):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) == KDL_METAL
    except Exception:
        return False


def _torch_storage_view(t: Any) -> MetalBufferView:
    """PyTorch MPS tensor -> its MTLBuffer through the storage (no DLPack)."""
    torch = _torch()
    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
             torch.float64: "float64", torch.int32: "int32"}
    if t.dtype not in names:
        raise TypeError(f"MPS tensor of dtype {t.dtype} is not supported")
    storage = t.untyped_storage()
    offset = t.storage_offset() * t.element_size()
    shape, strides = tuple(t.shape), tuple(t.stride())
    length = _extent_bytes(shape, strides, t.element_size())
    if offset + length > storage.nbytes():
        raise ValueError("MPS tensor extends past its storage")
    index = t.device.index if t.device.index is not None else 0
    return MetalBufferView(handle=int(storage.data_ptr()), byte_offset=offset, byte_length=length, shape=shape,
                           strides=strides, dtype=names[t.dtype], device=(KDL_METAL, index))


def buffer_view(x: Any) -> MetalBufferView:
    """Where the Metal array `x` lives: a PyTorch MPS tensor's storage (never its DLPack export, see the module
    docstring), any other kDLMetal producer's DLPack capsule."""
    if _is_torch_mps(x):
        # Conjugate/negative views are lazy flags in PyTorch: the bytes in the buffer are not the values.
        if x.is_neg() or x.is_conj():
            raise ValueError("MPS tensor is a lazy negated/conjugated view; call .resolve_neg() first")
        return _torch_storage_view(x)
    if hasattr(x, "__dlpack__") and is_metal_array(x):
        view = parse_capsule(_export(x))
        if view.device[0] != KDL_METAL:
            raise ValueError(f"expected a Metal (kDLMetal={KDL_METAL}) DLPack tensor, got device {view.device}")
        return view
    raise TypeError(f"{type(x).__name__} is not a Metal array (PyTorch MPS tensor or DLPack kDLMetal producer)")


def device_tensor(x: Any):
    """`_core.DeviceTensor` for a Metal array (what `_arrays.core_view` passes to `_core` for MPS tensors)."""
    from ._core import DeviceTensor
    v = buffer_view(x)
    if not v.handle:
        raise ValueError("Metal array has no MTLBuffer (NULL data handle)")
    return DeviceTensor(v.handle, v.byte_offset, v.byte_length, v.shape, v.strides)


def synchronize(x: Optional[Any] = None) -> None:
    """Finish the work PyTorch (or MLX, for an MLX array `x`) has queued, so the shim's own command queue reads
    final values. A no-op when neither framework has Metal work."""
    torch = _torch()
    if torch is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.synchronize()
    mx = sys.modules.get("mlx.core")
    if mx is not None and x is not None and type(x).__module__.startswith("mlx"):
        mx.eval(x)
        mx.synchronize()
