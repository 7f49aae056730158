# Host memory the package allocates itself (csrc/fa_host_memory.h). Included by _core.pyx.

cdef extern from "fa_host_memory.h" nogil:
    void *_host_allocate "fa_host::allocate"(size_t bytes, size_t *region_bytes)
    void _host_release "fa_host::release"(void *p)
    bint _host_owned "fa_host::owned_region"(const void *ptr, size_t bytes, void **base, size_t *region_bytes)


cdef class HostBuffer:
    """`nbytes` of zeroed host memory in whole pages from mmap, registered as the package's own: the only host memory
    the Metal backend wraps without a copy (Apple forbids wrapping malloc'd memory; a caller's arrays are copied).
    Exposes the buffer protocol (bytes, writable); unmapped when the last reference goes."""
    cdef void *ptr
    cdef Py_ssize_t nbytes
    cdef Py_ssize_t shape[1]

    def __cinit__(self, Py_ssize_t nbytes):
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0, got %d" % nbytes)
        self.ptr = _host_allocate(<size_t>nbytes, NULL)
        if self.ptr == NULL:
            raise MemoryError("could not allocate %d bytes of page-aligned host memory" % nbytes)
        self.nbytes = nbytes
        self.shape[0] = nbytes

    def __dealloc__(self):
        if self.ptr != NULL:
            _host_release(self.ptr)
            self.ptr = NULL

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf = self.ptr
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        else:
            view.format = NULL
        view.ndim = 1
        view.shape = self.shape
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass

    @property
    def address(self):
        return <size_t>self.ptr


def host_memory_owned(size_t address, size_t nbytes):
    """Whether [address, address + nbytes) lies in one HostBuffer (memory the Metal backend may wrap)."""
    return bool(_host_owned(<const void *>address, nbytes, NULL, NULL))
