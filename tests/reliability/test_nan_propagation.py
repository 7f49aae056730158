"""A NaN in the inputs reaches the output (as in flash_attn and torch SDPA) instead of being hidden as the zeros of
an empty row: a diverging training run must show NaN, on every CPU kernel path (prefill tiles, decode row layout,
split-KV decode merge).

The CPU backend only: Metal compiles with fast math, under which NaN propagation is not guaranteed, and the kernels
(hence the simulator) deliberately never test for NaN (see kernels/README.md)."""
import numpy as np
import pytest

import flash_attn_cy as fa



@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(70, 90), (3, 90), (1, 700)])
def test_nan_in_q_gives_nan_row_only(dtype, seqlen_q, seqlen_k):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, seqlen_q, 2, 16)).astype(dtype)
    k = rng.standard_normal((1, seqlen_k, 2, 16)).astype(dtype)
    v = rng.standard_normal((1, seqlen_k, 2, 16)).astype(dtype)
    q[0, 0, 1, 3] = np.nan
    out = np.asarray(fa.flash_attn_func(q, k, v, backend="cpu"), np.float32)
    assert np.isnan(out[0, 0, 1]).all()
    assert np.isfinite(out[0, :, 0]).all() and np.isfinite(out[0, 1:, 1]).all()


def test_nan_in_v_reaches_every_row_that_sees_it():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((1, 40, 1, 32)).astype(np.float32) for _ in range(3))
    v[0, 20, 0, 5] = np.nan
    out = np.asarray(fa.flash_attn_func(q, k, v, causal=True, backend="cpu"))
    # rows before 20 may see NaN too (0 * NaN inside a shared tile, as in torch's P @ V); the other columns may not
    assert np.isnan(out[0, 20:, 0, 5]).all()
    assert np.isfinite(np.delete(out, 5, axis=-1)).all()
