"""An appending flash_attn_with_kvcache writes into the caller's caches; when two written elements are one address
(two sequences on one cache row or page, a zero stride on a written axis) or a written element is also read by the
call (the other cache, q, the new k/v), the append tears: identical calls give different caches. Every such call is
refused with a ValueError naming the argument BEFORE anything is written, by the C ABI's checks (csrc/fa_check.cpp),
so NumPy, torch and Metal-buffer callers and every backend get the same refusal. Reading shared pages stays allowed.
"""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core
from flash_attn_cy.reference import kvcache_ref

torch = pytest.importorskip("torch")

B, S, H, D = 2, 64, 2, 16
BACKENDS = ["cpu", "sim"]


def _new(rng, n=1, kind="numpy"):
    arrs = [rng.standard_normal((B, n, H, D)).astype(np.float32) for _ in range(3)]
    return [torch.from_numpy(a) for a in arrs] if kind == "torch" else arrs


def _refused(match, q, kc, vc, k, v, **kw):
    """The call raises ValueError matching `match` and leaves both caches as they were."""
    before = [np.asarray(x).copy() for x in (kc, vc)]
    with pytest.raises(ValueError, match=match):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, **kw)
    for b, x in zip(before, (kc, vc)):
        np.testing.assert_array_equal(np.asarray(x), b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_duplicated_cache_batch_idx_is_refused_when_appending(rng, backend, kind):
    q, k, v = _new(rng, kind=kind)
    zeros = (lambda *s: torch.zeros(*s)) if kind == "torch" else (lambda *s: np.zeros(s, np.float32))
    kc, vc = zeros(3, S, H, D), zeros(3, S, H, D)
    idx = np.array([1, 1], np.int32)
    _refused(r"cache_batch_idx: sequences 0 and 1 both append to cache row 1", q, kc, vc, k, v,
             cache_seqlens=np.array([3, 7], np.int32), cache_batch_idx=idx, backend=backend)
    # without an append, two sequences may read one cache row
    out = fa.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=np.array([3, 7], np.int32), cache_batch_idx=idx,
                                     backend=backend)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_page_written_by_two_sequences_is_refused(rng, backend):
    q, k, v = _new(rng)
    kc, vc = np.zeros((4, 16, H, D), np.float32), np.zeros((4, 16, H, D), np.float32)
    seqlens = np.array([20, 20], np.int32)  # both append at row 20: into their second page
    _refused(r"block_table: page 1 is appended to by sequences 0 and 1", q, kc, vc, k, v, cache_seqlens=seqlens,
             block_table=np.array([[0, 1], [2, 1]], np.int32), backend=backend)
    # a sequence that names one page twice among the pages it writes (two new rows across a page boundary)
    q2, k2, v2 = _new(rng, n=2)
    _refused(r"block_table: page 3 is appended to twice by sequence 1", q2[:, :1], kc, vc, k2, v2,
             cache_seqlens=np.array([3, 15], np.int32), block_table=np.array([[0, 1], [3, 3]], np.int32),
             backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_pages_that_are_only_read_stay_allowed(rng, backend):
    """A common prefix page (page 0) read by both sequences while each appends into a page of its own."""
    q, k, v = _new(rng)
    kc = rng.standard_normal((4, 16, H, D)).astype(np.float32)
    vc = rng.standard_normal((4, 16, H, D)).astype(np.float32)
    bt = np.array([[0, 1], [0, 2]], np.int32)
    seqlens = np.array([20, 17], np.int32)
    want, want_k, want_v = kvcache_ref(q, kc, vc, k, v, cache_seqlens=seqlens, block_table=bt)
    out = fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqlens, block_table=bt, backend=backend)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_array_equal(kc, want_k.astype(np.float32))
    np.testing.assert_array_equal(vc, want_v.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["k_cache", "v_cache"])
def test_expanded_cache_is_refused(rng, backend, which):
    q, k, v = _new(rng, kind="torch")
    caches = {"k_cache": torch.zeros(B, S, H, D), "v_cache": torch.zeros(B, S, H, D)}
    caches[which] = torch.zeros(1, S, H, D).expand(B, S, H, D)  # stride 0 on the batch axis
    with pytest.raises(ValueError, match=f"{which}: the rows being appended overlap one another"):
        fa.flash_attn_with_kvcache(q, caches["k_cache"], caches["v_cache"], k, v, cache_seqlens=5, backend=backend)
    assert not caches["k_cache"].any() and not caches["v_cache"].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_stride_on_the_row_axis_is_refused_only_when_rows_are_written_there(rng, backend):
    base = np.zeros((B, 1, H, D), np.float32)
    rows0 = np.lib.stride_tricks.as_strided(base, (B, S, H, D), (base.strides[0], 0) + base.strides[2:],
                                            writeable=True)
    q, k, v = _new(rng, n=2)
    vc = np.zeros((B, S, H, D), np.float32)
    _refused(r"k_cache: the rows being appended overlap", q[:, :1], rows0, vc, k, v, cache_seqlens=4,
             backend=backend)
    # one new row per sequence: no two written elements meet, so the (odd but unambiguous) cache is accepted
    fa.flash_attn_with_kvcache(q[:, :1], rows0, vc, k[:, :1], v[:, :1], cache_seqlens=4, backend=backend)
    np.testing.assert_array_equal(base[:, 0], k[:, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_caches_are_refused_by_the_abi(rng, backend):
    """The Python layer refuses these first; the C ABI (which direct callers and every front end pass) too."""
    buf = np.zeros((B, S + 1, H, D), np.float32)
    kc, vc = buf[:, :S], buf[:, 1:]  # v_cache is k_cache shifted by one row
    q, k, v = _new(rng)
    seqused = np.array([3, 9], np.int32)
    with pytest.raises(ValueError, match="v_cache: shares memory with k_cache"):
        fa.flash_attn_with_kvcache(q, kc, vc, k, v, cache_seqlens=seqused, backend=backend)
    with pytest.raises(ValueError, match="v_cache: shares memory with the rows of k_cache the append writes"):
        _core.kvcache_append(backend, "float32", q, kc, vc, k, v, seqused_k=seqused, softmax_scale=0.25)
    assert not buf.any()
    # the new rows must not be read from where they are written
    kc2, vc2 = np.zeros((B, S, H, D), np.float32), np.zeros((B, S, H, D), np.float32)
    with pytest.raises(ValueError, match="k: shares memory with the rows of k_cache the append writes"):
        _core.kvcache_append(backend, "float32", q, kc2, vc2, kc2[:, 3:4], v, seqused_k=np.array([3, 3], np.int32),
                             softmax_scale=0.25)
    with pytest.raises(ValueError, match="q: shares memory with the rows of v_cache the append writes"):
        fa.flash_attn_with_kvcache(vc2[:, 9:10], kc2, vc2, k, v,
                                   cache_seqlens=9, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_views_and_reads_of_other_rows_are_allowed(rng, backend):
    q, k, v = _new(rng)
    kv = np.zeros((B, S, 2, H, D), np.float32)  # a (..., 2, nheads_k, headdim) K/V cache
    seq = np.array([4, 11], np.int32)
    want = fa.flash_attn_with_kvcache(q, np.zeros((B, S, H, D), np.float32), np.zeros((B, S, H, D), np.float32),
                                      k, v, cache_seqlens=seq, backend=backend)
    got = fa.flash_attn_with_kvcache(q, kv[:, :, 0], kv[:, :, 1], k, v, cache_seqlens=seq, backend=backend)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(kv[[0, 1], seq, 0], k[:, 0])
    # new rows read from rows of the same cache that are not written (row 0 appended again at row 4)
    kc = rng.standard_normal((B, S, H, D)).astype(np.float32)
    fa.flash_attn_with_kvcache(q, kc, np.zeros((B, S, H, D), np.float32), kc[:, 0:1], v, cache_seqlens=4,
                               backend=backend)
    np.testing.assert_array_equal(kc[:, 4], kc[:, 0])


def _device(handle, offset, shape=(B, S, H, D), strides=(S * H * D, H * D, D, 1)):
    return _core.DeviceTensor(handle, offset, 4 * (1 + sum((n - 1) * s for n, s in zip(shape, strides))), shape,
                              strides)


def test_metal_buffers_are_checked_by_handle_and_offset():
    """Tensors in MTLBuffers (MPS tensors, DLPack kDLMetal): the same handle at overlapping offsets is refused;
    distinct buffers never overlap. Checked through the plan description, which runs the same ABI checks and never
    touches the (fake) buffers."""
    q = _device(0x1000, 0, (B, 1, H, D), (H * D, H * D, D, 1))
    new = _device(0x2000, 0, (B, 1, H, D), (H * D, H * D, D, 1))
    new_v = _device(0x2100, 0, (B, 1, H, D), (H * D, H * D, D, 1))
    seq = np.array([3, 5], np.int32)
    args = dict(seqused_k=seq, softmax_scale=0.25)
    _core.describe_plan("kvcache", "metal", "float32", q, _device(0x3000, 0), _device(0x4000, 0), new, new_v, **args)
    cache = 0x5000
    with pytest.raises(ValueError, match="v_cache: shares memory with the rows of k_cache"):
        _core.describe_plan("kvcache", "metal", "float32", q, _device(cache, 0), _device(cache, 4 * H * D), new,
                            new_v, **args)
    # one MTLBuffer holding both caches one after the other is fine
    _core.describe_plan("kvcache", "metal", "float32", q, _device(cache, 0), _device(cache, 4 * B * S * H * D),
                        new, new_v, **args)
    with pytest.raises(ValueError, match="cache_batch_idx: sequences 0 and 1"):
        _core.describe_plan("kvcache", "metal", "float32", q, _device(0x3000, 0), _device(0x4000, 0), new, new_v,
                            cache_batch_idx=np.array([0, 0], np.int32), **args)
