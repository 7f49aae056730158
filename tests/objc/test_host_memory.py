"""Host memory and Metal's newBufferWithBytesNoCopy: Apple forbids wrapping malloc'd memory (a caller's NumPy arrays
may be), so the shim copies host memory unless the package allocated it itself, in whole pages from mmap
(csrc/fa_host_memory.h, _core.HostBuffer). The shim's side (wrap only such regions, copy everything else) is run
against the mock Metal by test_objc_binding.py, test_objc_execute.py and test_objc_e2e.py; this file checks the
allocator and the Python outputs that use it."""
from __future__ import annotations

import gc

import numpy as np

import flash_attn_cy as fa
from flash_attn_cy import _arrays, _core


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_host_buffer_is_registered_while_alive_and_unmapped_after():
    a = _arrays.page_aligned_empty((3, 1000, 5), np.float32)
    addr = _address(a)
    assert a.flags.writeable and not a.any()  # fresh pages are zero
    assert _core.host_memory_owned(addr, a.nbytes)
    assert not _core.host_memory_owned(addr, a.nbytes + (1 << 20))  # past the region
    tail = a[2:]  # a view keeps the memory (and its registration) alive
    del a
    gc.collect()
    assert _core.host_memory_owned(_address(tail), tail.nbytes)
    del tail
    gc.collect()
    assert not _core.host_memory_owned(addr, 16)


def test_callers_memory_is_never_registered():
    for a in (np.empty((64, 1024), np.float32), np.zeros(1 << 20, np.uint8)):
        assert not _core.host_memory_owned(_address(a), a.nbytes)


def test_outputs_come_from_host_buffers_where_the_shim_is_built(monkeypatch, rng):
    """On a Mac (Metal shim built) large NumPy outputs are the package's own pages, so the shim wraps them instead of
    copying; forced here, the results are the same."""
    q, k, v = (rng.standard_normal((1, 300, 4, 64)).astype(np.float32) for _ in range(3))
    want = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    monkeypatch.setattr(_arrays, "_OUTPUTS_IN_HOST_BUFFERS", True)
    got = fa.flash_attn_func(q, k, v, causal=True, backend="cpu")
    assert _core.host_memory_owned(_address(got), got.nbytes)
    np.testing.assert_array_equal(got, want)
    small = _arrays.empty("numpy", q, (4, 4))  # below HOST_BUFFER_MIN_BYTES: np.empty
    assert not _core.host_memory_owned(_address(small), small.nbytes)
