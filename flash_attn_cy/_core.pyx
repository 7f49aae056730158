# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Low-level bridge from Python to the C ABI (csrc/fa_abi.h). Public API lives in interface.py / kvcache.py."""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memset

cdef extern from "fa_abi.h" nogil:
    ctypedef enum fa_backend:
        FA_BACKEND_CPU
        FA_BACKEND_SIM
        FA_BACKEND_METAL
    int fa_backend_available(fa_backend backend, char *why, size_t whylen)
    int fa_backend_describe(fa_backend backend, char *out, size_t outlen)
    void fa_set_num_threads(int n)
    int fa_get_num_threads()

_BACKENDS = {"cpu": FA_BACKEND_CPU, "sim": FA_BACKEND_SIM, "metal": FA_BACKEND_METAL}


def backend_available(str name):
    cdef char why[512]
    memset(why, 0, sizeof(why))
    ok = fa_backend_available(_BACKENDS[name], why, sizeof(why))
    return bool(ok), why.decode("utf-8", "replace")


def set_num_threads(int n):
    fa_set_num_threads(n)


def get_num_threads():
    return fa_get_num_threads()
