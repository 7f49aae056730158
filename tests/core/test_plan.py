"""Unit tests of the dispatch plan (csrc/plan) through `_core.describe_plan`: the grid covers every output row
exactly once, bindings and memory stay in range, tile sizes come from the tile table, and causal / sliding-window
attention skips the key tiles that are entirely masked."""
from __future__ import annotations

import numpy as np
import pytest

from _metal_support import describe_forward, rand

LIMIT_TG_MEMORY = 32768
LIMIT_THREADS = 1024


def _attention_launch(plan):
    launches = [l for l in plan["launches"] if l["kernel"].startswith(("fa_fwd_", "fa_dec_", "fa_vec"))]
    assert len(launches) == 1, plan
    return launches[0]


def _check_common(plan):
    for l in plan["launches"]:
        threads = l["threads"][0] * l["threads"][1] * l["threads"][2]
        assert 0 < threads <= LIMIT_THREADS and threads % 32 == 0, l
        assert l["threadgroup_memory_bytes"] <= LIMIT_TG_MEMORY, l
        indices = [b["index"] for b in l["bindings"]]
        assert len(indices) == len(set(indices)), f"duplicate buffer index in {l['kernel']}"
        assert l["constants_index"] not in indices
        for b in l["bindings"]:
            name = b["buffer"]
            size = (plan["buffer_bytes"].get(name, 0) if not name.startswith("scratch")
                    else plan["scratch_bytes"][int(name[-1])])
            assert size > 0, f"{l['kernel']} binds {name} with no memory"
            assert 0 <= b["byte_offset"] < size


def _rows_covered(att, rows_per_head_block):
    """Query rows each threadgroup row-tile covers, as the kernel derives them: tile x covers rows
    [x * bq, (x + 1) * bq) of the packed (query, head-in-group) rows of its head block."""
    bq = att["attention"]["bq"]
    gx = att["grid"][0]
    covered = np.zeros(gx * bq, dtype=np.int64)
    for x in range(gx):
        covered[x * bq:(x + 1) * bq] += 1
    return covered[:rows_per_head_block], covered[rows_per_head_block:]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("d", [1, 40, 64, 80, 96, 100, 128, 129, 200, 256])
@pytest.mark.parametrize("sq,sk,hq,hkv", [(37, 45, 4, 2), (1, 1000, 8, 2), (300, 300, 2, 2), (5, 64, 6, 1)])
def test_grid_covers_every_row_once(dtype, d, sq, sk, hq, hkv, rng):
    b = 2
    q, k, v = rand(rng, (b, sq, hq, d), dtype), rand(rng, (b, sk, hkv, d), dtype), rand(rng, (b, sk, hkv, d), dtype)
    plan = describe_forward(q, k, v, lse_shape=(b, hq, sq))
    _check_common(plan)
    att = _attention_launch(plan)
    info = att["attention"]
    bucket = next(x for x in (64, 80, 96, 128, 256) if d <= x)
    assert att["kernel"].endswith(f"_d{bucket}") and info["bd"] == bucket
    assert att["kernel"].split("_")[2] == {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}[dtype]
    pack = info["pack"]
    assert pack in (1, hq // hkv)
    assert att["grid"][1] * pack == hq  # head blocks x heads per block = every head once
    assert att["grid"][2] == b * info["num_splits"]
    once, beyond = _rows_covered(att, sq * pack)
    assert (once == 1).all() and beyond.size < info["bq"]  # every row once, less than one tile of padding
    assert att["threads"][0] == 32 * info["simdgroups"]
    # the selection rule of kernels/fa_tiles.h: vector decode up to 4 packed rows, 8-row fragments up to 8
    rows = sq * pack
    kind = "vector" if rows <= 4 else "fragment" if rows <= 8 else "prefill"
    assert info["kind"] == kind and att["kernel"].startswith({"vector": f"fa_vec{1 if rows == 1 else 4}_",
                                                              "fragment": "fa_dec_", "prefill": "fa_fwd_"}[kind])
    elem = 4 if dtype == "fp32" else 2
    if kind == "vector":
        # 8 simdgroups; per simdgroup one partial O row (fp32, lanes x vector chunks >= bucket) plus its max and sum
        width = 4 if bucket % 128 == 0 else 2 if bucket == 64 else 1
        span = 32 * width * -(-bucket // (32 * width))
        assert info["bq"] == (1 if rows == 1 else 4) and info["simdgroups"] == 8 and info["vector_width"] == width
        assert att["threadgroup_memory_bytes"] == (8 * span + 16) * 4
    else:
        assert info["bq"] == 8 * info["simdgroups"]
        # tile table: MLX-style BK (32 up to d96, else 16), halved until K+V tiles fit 32 KiB
        assert att["threadgroup_memory_bytes"] == 2 * info["bk"] * (bucket + 8) * elem
    if kind == "prefill":
        assert info["bk"] in ((32,) if bucket <= 96 else (16, 8))
    # split-KV: partials + a merge launch writing out/lse; otherwise one launch writing them itself
    if info["num_splits"] > 1:
        assert plan["nlaunches"] == 2 and plan["launches"][1]["kernel"] == f"fa_merge_{att['kernel'].split('_')[2]}"
        assert plan["launches"][1]["grid"] == [sq, hq, b]
        assert plan["scratch_bytes"][0] == info["num_splits"] * hq * b * sq * d * 4
    else:
        assert plan["nlaunches"] == 1
        assert {"out", "lse"} <= {x["buffer"] for x in att["bindings"]}


def test_buffer_sizes_match_strides(rng):
    """Non-contiguous views: the byte extents the executor bounds-checks come from the strides."""
    base_q = rand(rng, (2, 10, 6, 64), "fp32")
    q = base_q[:, :, 1:5, :]  # head stride 64 with 4 heads out of 6 -> non-contiguous
    k = rand(rng, (2, 12, 2, 64), "fp32")
    v = rand(rng, (2, 12, 2, 64), "fp32")
    plan = describe_forward(q, k, v, lse_shape=(2, 4, 10))
    assert plan["buffer_bytes"]["k"] == k.nbytes and plan["buffer_bytes"]["v"] == v.nbytes
    assert plan["buffer_bytes"]["lse"] == 2 * 4 * 10 * 4
    q_strides = [s // 4 for s in q.strides]
    extent = sum((n - 1) * s for n, s in zip(q.shape[:3], q_strides[:3])) + 64
    # q may be passed as given or copied contiguous by the Python layer: either way the extent is exact
    assert plan["buffer_bytes"]["q"] in (extent * 4, q.size * 4)


@pytest.mark.parametrize("d", [64, 128])
def test_causal_skips_masked_tiles_at_4096(d, rng):
    """Causal at seqlen 4096: a query tile visits only the key tiles up to the diagonal."""
    s = 4096
    q = np.zeros((1, s, 1, d), np.float16)
    k = np.zeros((1, s, 1, d), np.float16)
    plan = describe_forward(q, k, k, lse_shape=(1, 1, s), window_left=-1, window_right=0)
    info = _attention_launch(plan)["attention"]
    bq, bk = info["bq"], info["bk"]
    qt, kt = s // bq, s // bk
    expected = sum(((m + 1) * bq + bk - 1) // bk for m in range(qt))
    assert info["key_tiles_total"] == qt * kt
    assert info["key_tiles_visited"] == expected
    skipped = 1 - expected / (qt * kt)
    assert 0.49 < skipped < 0.5  # (1 - 1/qt) / 2 of the tiles are never loaded


def test_window_skips_tiles(rng):
    s, d = 4096, 64
    q = np.zeros((1, s, 1, d), np.float16)
    plan = describe_forward(q, q, q, lse_shape=(1, 1, s), window_left=256, window_right=0)
    info = _attention_launch(plan)["attention"]
    # each 32-row tile sees at most 256 + 32 keys -> at most 10 key tiles of 32
    assert info["key_tiles_visited"] <= (s // 32) * 10
    assert info["key_tiles_visited"] / info["key_tiles_total"] < 0.08


def test_num_splits_contract(rng):
    q = rand(rng, (1, 1, 4, 64), "fp32")
    k = rand(rng, (1, 2048, 4, 64), "fp32")
    auto = _attention_launch(describe_forward(q, k, k, lse_shape=(1, 4, 1)))["attention"]
    assert auto["num_splits"] > 1  # 4 threadgroups cannot fill a GPU: the plan splits the keys
    none = _attention_launch(describe_forward(q, k, k, lse_shape=(1, 4, 1), num_splits=1))["attention"]
    assert none["num_splits"] == 1
    three = describe_forward(q, k, k, lse_shape=(1, 4, 1), num_splits=3)
    assert _attention_launch(three)["attention"]["num_splits"] == 3 and three["nlaunches"] == 2
    big = rand(rng, (4, 512, 8, 64), "fp32")
    prefill = _attention_launch(describe_forward(big, big, big, lse_shape=(4, 8, 512)))["attention"]
    assert prefill["num_splits"] == 1  # 512 threadgroups already: no split


def test_gqa_packs_short_queries(rng):
    q = rand(rng, (1, 2, 8, 64), "fp16")
    k = rand(rng, (1, 100, 2, 64), "fp16")
    att = _attention_launch(describe_forward(q, k, k, lse_shape=(1, 8, 2), num_splits=1))
    assert att["kernel"] == "fa_dec_f16_d64"  # 2 queries x 4 heads = 8 packed rows: one decode tile
    assert att["attention"]["pack"] == 4 and att["grid"] == [1, 2, 1]


def test_attn_probs_adds_the_debug_launch(rng):
    q = rand(rng, (2, 4, 3, 32), "fp32")
    k = rand(rng, (2, 100, 3, 32), "fp32")
    probs = np.zeros((2, 3, 4, 100), np.float32)
    plan = describe_forward(q, k, k, lse_shape=(2, 3, 4), attn_probs=probs, dropout_p=0.1, num_splits=2)
    _check_common(plan)
    kernels = [l["kernel"] for l in plan["launches"]]
    assert kernels[-1] == "fa_probs_f32" and "fa_merge_f32" in kernels
    last = plan["launches"][-1]
    assert last["grid"] == [4, 3, 2]
    assert plan["buffer_bytes"]["attn_probs"] == probs.nbytes
    assert "attn_probs" in {b["buffer"] for b in last["bindings"]}
    assert "fa_probs_f32" not in [l["kernel"] for l in describe_forward(q, k, k, lse_shape=(2, 3, 4))["launches"]]


def _describe_kvcache(q, kc, vc, knew, vnew, **options):
    from flash_attn_cy import _core
    from _metal_support import dtype_name, host_view

    hv = lambda x: None if x is None else host_view(x)  # noqa: E731
    options.setdefault("softmax_scale", 0.125)
    return _core.describe_plan("kvcache", "sim", dtype_name(q.dtype), hv(q), hv(kc), hv(vc), hv(knew), hv(vnew),
                               **options)


@pytest.mark.parametrize("paged", [False, True])
def test_kvcache_append_plan(paged, rng):
    b, sq, snew, hq, hkv, d, cap, page = 3, 2, 3, 4, 2, 64, 48, 16
    q = rand(rng, (b, sq, hq, d), "fp16")
    knew, vnew = rand(rng, (b, snew, hkv, d), "fp16"), rand(rng, (b, snew, hkv, d), "fp16")
    opts = dict(seqused_k=np.array([1, 5, 9], np.int32), max_seqlen_k=cap)
    if paged:
        kc = rand(rng, (9, page, hkv, d), "fp16")
        opts["block_table"] = np.arange(9, dtype=np.int32).reshape(3, 3)
    else:
        kc = rand(rng, (b, cap, hkv, d), "fp16")
    cos = np.ones((cap, 8), np.float16)
    cos16 = cos.view(np.uint16)  # 16-bit tables travel as their bits, like q/k/v
    plan = _describe_kvcache(q, kc, kc.copy(), knew, vnew, rotary_cos=cos16, rotary_sin=cos16, rotate_q_causal=True,
                             **opts)
    _check_common(plan)
    assert plan["nlaunches"] == 1
    l = plan["launches"][0]
    assert l["kernel"] == "fa_kvcache_append_f16"
    # one threadgroup per (row, head, sequence): rows cover q rows and new rows, heads cover q heads then kv heads
    assert l["grid"] == [max(sq, snew), hq + hkv, b]
    bound = {x["buffer"] for x in l["bindings"]}
    assert {"q", "k", "v", "knew", "vnew", "rotary_cos", "rotary_sin", "seqused_k"} <= bound
    assert ("block_table" in bound) == paged
    assert plan["buffer_bytes"]["k"] == kc.nbytes and plan["buffer_bytes"]["knew"] == knew.nbytes


@pytest.mark.parametrize("sq,hq,hkv,kind", [
    (1, 8, 8, "vector"),     # plain decode, no GQA: one row per head block
    (1, 32, 8, "vector"),    # GQA 4 (Llama-3-8B): the 4 heads of a group share each K/V load
    (2, 4, 2, "vector"),     # 2 queries x 2 heads
    (1, 6, 1, "fragment"),   # 6 packed rows: the 8x8 fragments are 3/4 used
    (1, 64, 8, "fragment"),  # GQA 8 (Llama-3-70B): exactly one fragment
    (3, 4, 4, "vector"),     # 3 queries, no GQA
    (5, 4, 4, "fragment"),
    (9, 2, 2, "prefill"),
])
def test_decode_kernel_selection(sq, hq, hkv, kind, rng):
    q = rand(rng, (2, sq, hq, 128), "fp16")
    k = rand(rng, (2, 300, hkv, 128), "fp16")
    att = _attention_launch(describe_forward(q, k, k, lse_shape=(2, hq, sq), num_splits=1))
    info = att["attention"]
    assert info["kind"] == kind, att["kernel"]
    rows = sq * info["pack"]
    if kind == "vector":  # one-row variant for one row, registers for 4 rows otherwise
        assert att["kernel"] == ("fa_vec1_f16_d128" if rows == 1 else "fa_vec4_f16_d128")
        assert info["bq"] == (1 if rows == 1 else 4)
    assert att["grid"] == [-(-rows // info["bq"]), hq // info["pack"], 2]


def _vec_info(q, k, v, **kw):
    att = _attention_launch(describe_forward(q, k, v, lse_shape=(q.shape[0], q.shape[2], q.shape[1]), **kw))
    assert att["attention"]["kind"] == "vector"
    return att["attention"]


def test_vector_loads_need_aligned_kv(rng):
    """FA_FLAG_KV_ALIGNED (vector K/V loads) only when headdim, the k/v strides and base addresses are multiples of
    the vector width (4 elements at d128); any other layout gets the scalar path."""
    q = rand(rng, (1, 1, 2, 128), "fp16")
    k = rand(rng, (1, 64, 2, 128), "fp16")
    assert _vec_info(q, k, k)["kv_vector_loads"] is True
    # rows 130 elements apart (a slice of a wider buffer): not a multiple of 4
    wide = rand(rng, (1, 64, 2, 130), "fp16")
    assert _vec_info(q, wide[..., :128], k)["kv_vector_loads"] is False
    # base address 2 elements past an aligned one
    flat = rand(rng, (64 * 2 * 128 + 2,), "fp16")
    shifted = flat[2:].reshape(1, 64, 2, 128)
    assert shifted.ctypes.data % 8 != 0
    assert _vec_info(q, k, shifted)["kv_vector_loads"] is False
    # headdim 126 (bucket 128) is not a multiple of 4
    q126, k126 = rand(rng, (1, 1, 2, 126), "fp16"), rand(rng, (1, 64, 2, 126), "fp16")
    assert _vec_info(q126, k126, k126)["kv_vector_loads"] is False
    # d80 and d96 load scalars (width 1): always "aligned"
    q96, k96 = rand(rng, (1, 1, 2, 96), "fp16"), rand(rng, (1, 64, 2, 96), "fp16")
    info = _vec_info(q96, k96, k96)
    assert info["vector_width"] == 1 and info["kv_vector_loads"] is True


def test_vector_decode_splits_long_caches(rng):
    """One token against 8192 keys on 8 heads: 16 threadgroups cannot fill a GPU, so the keys are split and merged."""
    q = rand(rng, (2, 1, 8, 128), "fp16")
    k = np.zeros((2, 8192, 8, 128), np.float16)
    plan = describe_forward(q, k, k, lse_shape=(2, 8, 1))
    _check_common(plan)
    att = _attention_launch(plan)
    info = att["attention"]
    assert info["kind"] == "vector" and info["num_splits"] > 1
    assert att["grid"] == [1, 8, 2 * info["num_splits"]]
    assert plan["launches"][1]["kernel"] == "fa_merge_f16" and plan["launches"][1]["grid"] == [1, 8, 2]
    assert 8192 / info["num_splits"] >= 256  # no split shorter than kMinKeysPerSplit


def test_vector_decode_window_skips_key_blocks(rng):
    """A decode step with a 256-key sliding window over 4096 cached keys: the vector kernel's key range starts at the
    window (the JSON counts 32-key blocks with the kernel's own range arithmetic)."""
    q = np.zeros((1, 1, 2, 128), np.float16)
    k = np.zeros((1, 4096, 2, 128), np.float16)
    info = _attention_launch(describe_forward(q, k, k, lse_shape=(1, 2, 1), window_left=256, window_right=0,
                                              num_splits=1))["attention"]
    assert info["kind"] == "vector" and info["bk"] == 32
    assert info["key_tiles_total"] == 2 * 128
    # keys 3839..4095 (257 keys) lie in blocks 119..127
    assert info["key_tiles_visited"] == 2 * 9
