"""flash_attn_cy._mps: finding the MTLBuffer behind PyTorch MPS tensors and DLPack kDLMetal arrays.

Without a Mac, the DLPack reading is checked against real producers on the CPU (NumPy, PyTorch: their capsules must
read back as the arrays' own address, shape, strides and dtype) and against hand-made kDLMetal capsules built with
ctypes. What needs an Apple GPU (a real MPS tensor's MTLBuffer) is marked and skipped elsewhere.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from flash_attn_cy import _mps

try:  # torch is optional: only some tests need it
    import torch
except ImportError:  # pragma: no cover
    torch = None

_pyapi = ctypes.pythonapi
_pyapi.PyCapsule_New.restype = ctypes.py_object
_pyapi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class FakeMetalArray:
    """A DLPack producer on kDLMetal whose 'MTLBuffer' is a fake handle (never dereferenced by _mps)."""

    def __init__(self, handle, shape, strides=None, byte_offset=0, code=2, bits=16, lanes=1, versioned=False,
                 version=(1, 0), device=(8, 0)):
        self.ndim = len(shape)
        self._shape = (ctypes.c_int64 * max(1, self.ndim))(*shape)
        self._strides = (ctypes.c_int64 * max(1, self.ndim))(*strides) if strides is not None else None
        self.versioned = versioned
        t = _mps._DLTensor(data=handle, device=_mps._DLDevice(*device), ndim=self.ndim,
                           dtype=_mps._DLDataType(code, bits, lanes),
                           shape=ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64)),
                           strides=(ctypes.cast(self._strides, ctypes.POINTER(ctypes.c_int64))
                                    if self._strides is not None else None),
                           byte_offset=byte_offset)
        if versioned:
            self._managed = _mps._DLManagedTensorVersioned(version=_mps._DLPackVersion(*version), dl_tensor=t)
        else:
            self._managed = _mps._DLManagedTensor(dl_tensor=t)
        self.device = device
        self.max_versions_seen = []

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, *, stream=None, max_version=None):
        self.max_versions_seen.append(max_version)
        name = b"dltensor_versioned" if (self.versioned and max_version is not None) else b"dltensor"
        return _pyapi.PyCapsule_New(ctypes.addressof(self._managed), name, None)


def test_fake_metal_tensor_view() -> None:
    a = FakeMetalArray(0xABC000, (2, 5, 3, 8), strides=(240, 48, 16, 1), byte_offset=4096)
    assert _mps.is_metal_array(a)
    v = _mps.buffer_view(a)
    assert v.handle == 0xABC000 and v.byte_offset == 4096
    assert v.shape == (2, 5, 3, 8) and v.strides == (240, 48, 16, 1) and v.dtype == "float16"
    assert v.device == (8, 0)
    # extent: last element index 1*240 + 4*48 + 2*16 + 7 = 471 -> 472 elements of 2 bytes
    assert v.byte_length == 472 * 2
    assert a.max_versions_seen == [(1, 0)]  # a versioned capsule was asked for first


def test_versioned_capsule_and_compact_strides() -> None:
    a = FakeMetalArray(0x1000, (3, 4), strides=None, code=4, bits=16, versioned=True)  # bfloat16, NULL strides
    v = _mps.buffer_view(a)
    assert v.strides == (4, 1) and v.dtype == "bfloat16" and v.byte_length == 12 * 2
    bad = FakeMetalArray(0x1000, (3, 4), versioned=True, version=(2, 0))
    with pytest.raises(ValueError, match="version 2.0"):
        _mps.buffer_view(bad)


@pytest.mark.parametrize("kw,match", [(dict(code=5, bits=8), "unsupported element type"),
                                      (dict(code=2, bits=16, lanes=2), "lanes=2")])
def test_unsupported_types(kw, match) -> None:
    with pytest.raises(TypeError, match=match):
        _mps.buffer_view(FakeMetalArray(0x1000, (4,), **kw))


def test_non_metal_producers_are_refused() -> None:
    x = np.zeros((2, 3), np.float32)
    assert not _mps.is_metal_array(x)
    assert not _mps.is_metal_array(object())
    with pytest.raises(TypeError, match="not a Metal array"):
        _mps.buffer_view(x)
    cpu_fake = FakeMetalArray(0x1000, (4,), device=(1, 0))
    with pytest.raises(TypeError):
        _mps.buffer_view(cpu_fake)
    # A producer that claims Metal but exports a CPU capsule is caught after parsing.
    liar = FakeMetalArray(0x1000, (4,), device=(8, 0))
    liar._managed.dl_tensor.device = _mps._DLDevice(1, 0)
    with pytest.raises(ValueError, match="kDLMetal"):
        _mps.buffer_view(liar)


def test_empty_and_negative_strides() -> None:
    assert _mps._extent_bytes((0, 4), (4, 1), 2) == 0
    assert _mps._extent_bytes((3, 1), (1, -5), 4) == 12  # a length-1 axis may carry any stride
    with pytest.raises(ValueError, match="negative strides"):
        _mps._extent_bytes((3, 2), (2, -1), 4)


@pytest.mark.parametrize("versioned", [False, True])
def test_capsule_layout_matches_numpy(versioned: bool) -> None:
    base = np.arange(7 * 6 * 5, dtype=np.float32).reshape(7, 6, 5)
    x = base[1:6:2, :, 1:]  # strided view, offset into the allocation
    try:
        cap = x.__dlpack__(max_version=(1, 0)) if versioned else x.__dlpack__()
    except TypeError:
        pytest.skip("this NumPy predates versioned DLPack capsules")
    v = _mps.parse_capsule(cap)
    assert v.handle + v.byte_offset == x.ctypes.data
    assert v.shape == x.shape and v.strides == tuple(s // 4 for s in x.strides)
    assert v.dtype == "float32" and v.device == (_mps.KDL_CPU, 0)
    last = x.ctypes.data + sum((n - 1) * s for n, s in zip(x.shape, x.strides)) + 4
    assert v.byte_length == last - x.ctypes.data


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("dtype,name", [("float16", "float16"), ("bfloat16", "bfloat16"), ("float32", "float32")])
def test_capsule_layout_matches_torch(dtype: str, name: str) -> None:
    t = torch.zeros(4, 9, 3, 16, dtype=getattr(torch, dtype)).transpose(1, 2)[:, :, 2:7]
    v = _mps.parse_capsule(t.__dlpack__())
    assert v.handle + v.byte_offset == t.data_ptr()
    assert v.shape == tuple(t.shape) and v.strides == tuple(t.stride()) and v.dtype == name
    assert not _mps.is_metal_array(t)


def test_parse_rejects_non_capsules() -> None:
    with pytest.raises(TypeError, match="capsule"):
        _mps.parse_capsule(object())


def test_device_tensor_packs_for_core() -> None:
    from flash_attn_cy import _core
    if not hasattr(_core, "DeviceTensor"):
        pytest.skip("_core.DeviceTensor not in this build yet")
    a = FakeMetalArray(0x2000, (1, 2, 3, 4), strides=(24, 12, 4, 1), byte_offset=64, code=2, bits=32)
    d = _mps.device_tensor(a)
    assert isinstance(d, _core.DeviceTensor)
    assert (d.handle, d.byte_offset, d.byte_length, d.shape, d.strides) == (0x2000, 64, 96, (1, 2, 3, 4),
                                                                              (24, 12, 4, 1))
    with pytest.raises(ValueError, match="NULL"):
        _mps.device_tensor(FakeMetalArray(0, (4,)))


def test_synchronize_without_metal_is_a_no_op() -> None:
    _mps.synchronize()
    _mps.synchronize(np.zeros(3))


@pytest.mark.metal
@pytest.mark.skipif(torch is None or not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()),
                    reason="needs PyTorch with an MPS device (Apple GPU)")
def test_real_mps_tensor_view() -> None:  # pragma: no cover - runs on a Mac only
    t = torch.arange(2 * 3 * 4 * 8, dtype=torch.float16, device="mps").reshape(2, 3, 4, 8)[:, 1:]
    v = _mps.buffer_view(t)
    assert v.device[0] == _mps.KDL_METAL and v.handle != 0
    # The DLPack route and the storage route must agree on buffer and offset.
    s = _mps._torch_storage_view(t)
    assert (s.handle, s.byte_offset, s.shape, s.strides) == (v.handle, v.byte_offset, v.shape, v.strides)


class _FakeStorage:
    def __init__(self, handle: int, nbytes: int):
        self._handle, self._nbytes = handle, nbytes

    def data_ptr(self) -> int:
        return self._handle

    def nbytes(self) -> int:
        return self._nbytes


def _fake_mps_view(handle: int, storage_bytes: int, shape, strides, offset: int, dtype):
    """A PyTorch tensor that says it lives on MPS (a wrapper subclass: no MPS device needed), sliced at `offset`
    elements into a storage whose MTLBuffer is `handle`, and whose DLPack export behaves as PyTorch 2.9.0/2.9.1's:
    `data` = buffer + byte offset, `byte_offset` = 0."""

    class FakeMpsView(torch.Tensor):
        @staticmethod
        def __new__(cls):
            return torch.Tensor._make_wrapper_subclass(cls, shape, strides=strides, storage_offset=offset,
                                                       dtype=dtype, device="meta")

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            raise NotImplementedError(f"fake MPS tensor: {func}")

        @property
        def device(self):
            return torch.device("mps", 0)

        def untyped_storage(self):
            return _FakeStorage(handle, storage_bytes)

        def __dlpack_device__(self):
            return (_mps.KDL_METAL, 0)

        def __dlpack__(self, *, stream=None, max_version=None):
            itemsize = torch.empty((), dtype=dtype).element_size()
            self._exported = FakeMetalArray(handle + offset * itemsize, shape, strides=strides, byte_offset=0,
                                            code=2, bits=8 * itemsize)
            return self._exported.__dlpack__()

    return FakeMpsView()


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
def test_sliced_mps_view_takes_its_buffer_from_the_storage() -> None:
    """k sliced out of a packed (batch, seqlen, 3, heads, dim) qkv MPS tensor: its MTLBuffer is the storage's and
    the slice's start an offset into it, whatever PyTorch 2.9's DLPack export says (buffer + offset as `data`, which
    the shim would message as if it were an MTLBuffer). The DeviceTensor then passes the ABI's Metal-buffer checks
    (through the plan description, which never touches the fake buffers)."""
    from flash_attn_cy import _core
    b, s, h, d = 1, 32, 2, 16
    buffer, nbytes = 0x7000_0000, b * s * 3 * h * d * 2
    strides = (s * 3 * h * d, 3 * h * d, d, 1)
    q, k, v = (_fake_mps_view(buffer, nbytes, (b, s, h, d), strides, i * h * d, torch.float16) for i in range(3))
    assert _mps.parse_capsule(k.__dlpack__()).handle == buffer + h * d * 2  # the 2.9 export, not an MTLBuffer
    view = _mps.buffer_view(k)
    assert (view.handle, view.byte_offset) == (buffer, h * d * 2)
    assert view.shape == (b, s, h, d) and view.strides == strides and view.dtype == "float16"
    dq, dk, dv = (_mps.device_tensor(x) for x in (q, k, v))
    assert {t.handle for t in (dq, dk, dv)} == {buffer} and [t.byte_offset for t in (dq, dk, dv)] == [0, 64, 128]
    out = _core.DeviceTensor(0x7100_0000, 0, b * s * h * d * 2, (b, s, h, d), (s * h * d, h * d, d, 1))
    lse = _core.DeviceTensor(0x7200_0000, 0, b * h * s * 4, (b, h, s), (h * s, s, 1))
    _core.describe_plan("forward", "metal", "float16", dq, dk, dv, out, lse, softmax_scale=0.25)
    # the storage's length bounds the view: one reaching past its storage is refused before the shim sees it
    with pytest.raises(ValueError, match="past its storage"):
        _mps.buffer_view(_fake_mps_view(buffer, nbytes - 2, (b, s, h, d), strides, 2 * h * d, torch.float16))
