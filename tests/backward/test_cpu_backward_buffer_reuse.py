"""The CPU backward takes its q/dO packs and per-thread dQ partials from a process-wide buffer pool
(csrc/cpu/buffer_pool.h), whose memory keeps the previous call's contents. These calls alternate shapes and dtypes
so every call after the first runs on reused buffers: a buffer not fully rewritten (a dQ partial not cleared, a pack
row not refreshed) would leave the previous call's numbers in the gradients.

Tolerance: the project's rule, through test_backward.check_grads (2 x the error of the low-precision reference).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import randn  # noqa: E402
from test_backward import check_grads, forward_with_lse  # noqa: E402

import flash_attn_cy  # noqa: E402
from flash_attn_cy import backward  # noqa: E402

# (q shape, k shape); the second is smaller so the third call reuses buffers larger than it needs
SHAPES = [((2, 130, 4, 64), (2, 150, 2, 64)), ((1, 40, 2, 32), (1, 70, 2, 32)), ((2, 130, 4, 64), (2, 150, 2, 64))]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_alternating_shapes_on_reused_buffers(rng, dtype):
    for q_shape, k_shape in SHAPES + SHAPES:
        check_grads(rng, dtype, q_shape, k_shape, causal=True)  # default schedule: per-thread dQ partials


def test_repeated_call_gives_the_same_bits(rng):
    # One thread: the single-pass dQ is then summed in a fixed order, so a second identical call must reproduce the
    # first bit for bit (its partial buffer comes back from the pool holding the first call's sums).
    q, k, v = randn(rng, (1, 200, 4, 64)), randn(rng, (1, 180, 2, 64)), randn(rng, (1, 180, 2, 64))
    dout = randn(rng, q.shape)
    out, lse = forward_with_lse(q, k, v)
    before = flash_attn_cy.get_num_threads()
    try:
        flash_attn_cy.set_num_threads(1)
        first = backward(dout, q, k, v, out, lse)
        second = backward(dout, q, k, v, out, lse)
    finally:
        flash_attn_cy.set_num_threads(before)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
