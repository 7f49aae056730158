"""The mask band rule (kernels/fa_mask.h), checked against its definition, and the extremes of window_size.

kernels/fa_mask.h is the one place where the causal / sliding-window rule is written (the Metal kernels, the CPU
forward, decode and backward, and the plan include it). The definition (flash_attn, bottom-right aligned): query i of
sq sees key j of sk iff i + sk - sq - left <= j <= i + sk - sq + right, -1 = unbounded. The header is compiled here
as MSL by the simulator (the same text the Metal kernels include) and every function is compared with that
definition, evaluated in Python integers (no overflow), exhaustively over small shapes and at the int32 limits.
Then window sizes at INT32_MAX - 1 go through the public API on every backend.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from _paths import ROOT
from _tolerance import assert_close_to_ref
from conftest import available_backends, randn

import flash_attn_cy
import flash_attn_cy.interface as fa
from flash_attn_cy.reference import attention_ref

HEADER = ROOT / "kernels" / "fa_mask.h"
I32MAX = 2**31 - 1

# One thread per case: (i, j, sq, sk, left, right) in, (visible, key_lo(i), key_hi(i), row_lo(j), row_hi(j),
# block_full(i..i+1, j..j+2)) out. The header is pasted in (as the kernels' #include does).
PROBE = """
#include <metal_stdlib>
using namespace metal;
""" + HEADER.read_text() + """
kernel void mask_probe(device const int* cases [[buffer(0)]], device int* out [[buffer(1)]],
                       constant uint& n [[buffer(2)]], uint t [[thread_position_in_grid]]) {
    if (t >= n) return;
    device const int* c = cases + 6 * t;
    const long i = c[0], j = c[1], sq = c[2], sk = c[3];
    const int left = c[4], right = c[5];
    device int* o = out + 6 * t;
    o[0] = fa_mask_visible(i, j, sq, sk, left, right) ? 1 : 0;
    o[1] = int(fa_mask_key_lo(i, sq, sk, left));
    o[2] = int(fa_mask_key_hi(i, sq, sk, right));
    o[3] = int(fa_mask_row_lo(j, sq, sk, right));
    o[4] = int(fa_mask_row_hi(j, sq, sk, left));
    o[5] = fa_mask_block_full(i, i + 1, j, j + 2, sq, sk, left, right) ? 1 : 0;
}
"""


def sees(i, j, sq, sk, left, right):
    """The definition, in Python integers."""
    if not (0 <= j < sk):
        return False
    d = i + sk - sq
    return (left < 0 or j >= d - left) and (right < 0 or j <= d + right)


def expected(i, j, sq, sk, left, right):
    """What each header function must return, derived from `sees` (keys scanned where the range is small)."""
    clamp = lambda x, lo, hi: max(lo, min(hi, x))  # noqa: E731
    d = i + sk - sq
    key_lo = 0 if left < 0 else clamp(d - left, 0, sk)
    key_hi = sk if right < 0 else clamp(d + right + 1, 0, sk)
    row_lo = 0 if right < 0 else clamp(j - (sk - sq) - right, 0, sq)
    row_hi = sq if left < 0 else clamp(j - (sk - sq) + left + 1, 0, sq)
    full = all(sees(ii, jj, sq, sk, left, right) for ii in (i, i + 1) for jj in (j, j + 1)) if i + 1 < sq else None
    return [int(sees(i, j, sq, sk, left, right)), key_lo, key_hi, row_lo, row_hi, full]


def run_probe(cases):
    sim = pytest.importorskip("flash_attn_cy.sim")
    arr = np.asarray(cases, dtype=np.int64)
    assert arr.min() >= -(2**31) and arr.max() <= I32MAX
    arr = arr.astype(np.int32)
    n = len(arr)
    res = sim.run(PROBE, "mask_probe", grid=(n + 63) // 64, threadgroup=64,
                  buffers={0: arr.reshape(-1), 1: np.zeros(6 * n, np.int32)}, bytes={2: np.uint32(n)}, schedules=1)
    assert not res.faults, res.faults
    return res.buffers[1].reshape(n, 6)


def check_cases(cases):
    got = run_probe(cases)
    for c, g in zip(cases, got):
        want = expected(*c)
        if want[5] is None:  # block of 2 rows past the last query: only the other five apply
            g, want = g[:5], want[:5]
        assert list(g) == want, f"(i, j, sq, sk, left, right) = {c}: got {list(g)}, want {want}"
    # the visible-key set of each row is exactly [key_lo, key_hi), the visible-row set of each key [row_lo, row_hi)
    for c, g in zip(cases, got):
        i, j, sq, sk, left, right = c
        assert bool(g[0]) == (g[1] <= j < g[2]), c
        assert bool(g[0]) == (g[3] <= i < g[4]) or not (0 <= j < sk), c


def test_band_rule_exhaustive_small_shapes():
    cases = []
    for sq, sk in itertools.product(range(1, 6), range(0, 6)):
        for left, right in itertools.product(range(-1, 7), range(-1, 7)):
            for i, j in itertools.product(range(sq), range(-1, sk + 1)):
                cases.append((i, j, sq, sk, left, right))
    check_cases(cases)


def test_band_rule_at_int32_limits():
    big = [I32MAX, I32MAX - 1, 2**30]
    cases = []
    for sq, sk in [(1, I32MAX), (I32MAX, 1), (I32MAX, I32MAX), (I32MAX - 5, 7), (3, I32MAX - 2), (2**30, 2**31 - 1)]:
        for left, right in itertools.product([-1, 0, 1] + big, [-1, 0, 1] + big):
            for i in sorted(x for x in {0, 1, sq // 2, sq - 2, sq - 1} if 0 <= x < sq):
                for j in sorted(x for x in {-1, 0, 1, sk // 2, sk - 2, sk - 1, sk} if -1 <= x <= sk):
                    cases.append((i, j, sq, sk, left, right))
    check_cases(cases)


# ---- window sizes at the int32 limit through the public API ----

WINDOWS = [(I32MAX - 1, I32MAX - 1), (I32MAX - 1, 0), (0, I32MAX - 1), (I32MAX - 1, -1), (-1, I32MAX - 1),
           (I32MAX, I32MAX), (3, I32MAX - 1)]


@pytest.mark.parametrize("backend", ["cpu", "sim"])
@pytest.mark.parametrize("window", WINDOWS, ids=[f"{w[0]}_{w[1]}" for w in WINDOWS])
@pytest.mark.parametrize("sq,sk", [(5, 40), (40, 5), (1, 37)])
def test_window_near_int32_max_matches_reference(rng, backend, window, sq, sk):
    if backend not in available_backends():
        pytest.skip(f"the {backend} backend is not available in this build")
    q, k, v = randn(rng, (2, sq, 2, 32), "fp32"), randn(rng, (2, sk, 1, 32), "fp32"), randn(rng, (2, sk, 1, 32), "fp32")
    out, lse, _ = fa.flash_attn_func(q, k, v, window_size=window, return_attn_probs=True, backend=backend)
    ref, ref_lse = attention_ref(q, k, v, window_size=window, return_lse=True)
    low = attention_ref(q, k, v, window_size=window, compute_dtype=np.float32)
    assert_close_to_ref(out, ref, low, what="out")
    assert np.allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "sim"])
@pytest.mark.parametrize("window", [(I32MAX - 1, I32MAX - 1), (I32MAX - 1, 0), (2, I32MAX - 1)])
def test_window_near_int32_max_backward(rng, backend, window):
    if backend not in available_backends():
        pytest.skip(f"the {backend} backend is not available in this build")
    from _grad_check import check_grads
    check_grads(rng, "fp32", (1, 19, 2, 16), (1, 23, 1, 16), backend=backend, window_size=window)


@pytest.mark.parametrize("backend", ["cpu", "sim"])
def test_window_near_int32_max_kvcache(rng, backend):
    if backend not in available_backends():
        pytest.skip(f"the {backend} backend is not available in this build")
    window = (I32MAX - 1, I32MAX - 1)
    q = randn(rng, (2, 1, 4, 64), "fp32")
    kc, vc = randn(rng, (2, 50, 1, 64), "fp32"), randn(rng, (2, 50, 1, 64), "fp32")
    seqlens = np.array([17, 50], np.int32)
    out = flash_attn_cy.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, window_size=window, backend=backend)
    for b in range(2):
        n = int(seqlens[b])
        ref = attention_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], window_size=window)
        low = attention_ref(q[b:b + 1], kc[b:b + 1, :n], vc[b:b + 1, :n], window_size=window,
                            compute_dtype=np.float32)
        assert_close_to_ref(out[b:b + 1], ref, low, what=f"out[{b}]")
