"""Each error message STARTS with the argument the caller has to fix (issue 16 item 14): a max_seqlen_q smaller than
the longest sequence blames max_seqlen_q, not cu_seqlens_q; the packed variants name their own arguments (qkv,
cu_seqlens, max_seqlen); the C layer's checks (csrc/fa_check.cpp, reached directly or under torch.compile) do the
same. One case per message."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core

F32 = np.float32


def z(*shape):
    return np.zeros(shape, F32)


def i32(*xs):
    return np.array(xs, np.int32)


CU = i32(0, 5, 12)  # two sequences of 5 and 7 rows
PY_CASES = [
    ("max_seqlen_q too small", lambda: fa.flash_attn_varlen_func(z(12, 2, 8), z(12, 2, 8), z(12, 2, 8), CU, CU, 6, 7),
     r"^max_seqlen_q: 6 is less than the longest sequence in cu_seqlens_q \(sequence 1 has 7 rows\)"),
    ("max_seqlen_k too small", lambda: fa.flash_attn_varlen_func(z(12, 2, 8), z(12, 2, 8), z(12, 2, 8), CU, CU, 7, 5),
     r"^max_seqlen_k: 5 is less than the longest sequence in cu_seqlens_k"),
    ("qkvpacked max_seqlen", lambda: fa.flash_attn_varlen_qkvpacked_func(z(12, 3, 2, 8), CU, 6),
     r"^max_seqlen: 6 is less than the longest sequence in cu_seqlens \("),
    ("qkvpacked rows", lambda: fa.flash_attn_varlen_qkvpacked_func(z(10, 3, 2, 8), CU, 7),
     r"^cu_seqlens: last entry 12 exceeds the 10 rows of qkv"),
    ("kvpacked rows", lambda: fa.flash_attn_varlen_kvpacked_func(z(12, 2, 8), z(9, 2, 2, 8), CU, CU, 7, 7),
     r"^cu_seqlens_k: last entry 12 exceeds the 9 rows of kv"),
    ("varlen q rows", lambda: fa.flash_attn_varlen_func(z(11, 2, 8), z(12, 2, 8), z(12, 2, 8), CU, CU, 7, 7),
     r"^cu_seqlens_q: last entry 12 exceeds the 11 rows of q"),
    ("cu_seqlens_k batch", lambda: fa.flash_attn_varlen_func(z(12, 2, 8), z(12, 2, 8), z(12, 2, 8), CU, i32(0, 12),
                                                              7, 12),
     r"^cu_seqlens_k: expected shape \(3,\) \(batch_size \+ 1, as cu_seqlens_q\)"),
    # paged varlen: a max_seqlen_k beyond what the block table addresses (checked in fa_check.cpp)
    ("paged max_seqlen_k", lambda: fa.flash_attn_varlen_func(z(10, 2, 8), z(4, 16, 2, 8), z(4, 16, 2, 8),
                                                             i32(0, 5, 10), i32(0, 20, 30), 5, 40,
                                                             block_table=i32(0, 1, 2, 3).reshape(2, 2)),
     r"^max_seqlen_k: 40 is more than the 2 pages x 16 rows that block_table can address"),
]


@pytest.mark.parametrize("call,pattern", [pytest.param(c, p, id=i) for i, c, p in PY_CASES])
def test_public_api_blames_the_argument_to_fix(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def core_varlen(**over):
    kw = dict(softmax_scale=0.3, cu_seqlens_q=i32(0, 2, 5), cu_seqlens_k=i32(0, 3, 7), max_seqlen_q=3, max_seqlen_k=4)
    kw.update(over)
    return lambda: _core.forward("cpu", "float32", z(1, 5, 4, 8), z(1, 7, 2, 8), z(1, 7, 2, 8), z(1, 5, 4, 8),
                                 z(1, 4, 5), **kw)


def core_dense(**kw):
    return lambda: _core.forward("cpu", "float32", z(2, 5, 4, 8), z(2, 7, 2, 8), z(2, 7, 2, 8), z(2, 5, 4, 8),
                                 z(2, 4, 5), softmax_scale=0.3, **kw)


C_CASES = [
    ("max_seqlen_q", core_varlen(max_seqlen_q=2),
     r"^max_seqlen_q: 2 is less than the longest sequence in cu_seqlens_q \(sequence 1 has 3 rows\)"),
    ("max_seqlen_k", core_varlen(max_seqlen_k=3),
     r"^max_seqlen_k: 3 is less than the longest sequence in cu_seqlens_k \(sequence 1 has 4 rows\)"),
    ("max_seqlen_q negative", core_varlen(max_seqlen_q=-1), r"^max_seqlen_q must be >= 0, got -1"),
    ("max_seqlen_k negative", core_varlen(max_seqlen_k=-1), r"^max_seqlen_k must be >= 0, got -1"),
    # without cache_seqlens the whole cache is used: a padding beyond it is cache_leftpad's fault
    ("cache_leftpad beyond the cache", core_dense(leftpad_k=i32(0, 9)),
     r"^cache_leftpad\[1\]=9 exceeds the cache of 7 rows"),
    ("cache_seqlens negative", core_dense(seqused_k=i32(-1, 3)), r"^cache_seqlens\[0\]=-1 must be >= 0"),
]


@pytest.mark.parametrize("call,pattern", [pytest.param(c, p, id=i) for i, c, p in C_CASES])
def test_c_checks_blame_the_argument_to_fix(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
