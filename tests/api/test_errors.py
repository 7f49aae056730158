"""Bad input for every argument of every public function: a ValueError/TypeError naming the argument, raised before
any compute (the spy on _core proves nothing reached the ABI), never a crash."""
from __future__ import annotations

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy import _core

torch = pytest.importorskip("torch")

F32 = np.float32
B, S, H, HK, D = 2, 5, 4, 2, 8


def arr(*shape, dtype=F32):
    return np.ones(shape, dtype=dtype)


def cu(*lens):
    return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


@pytest.fixture(autouse=True)
def no_compute(monkeypatch):
    """Every case here must fail in validation: reaching the ABI is a test failure."""
    def boom(*a, **k):
        raise AssertionError("validation let bad input reach the ABI")
    for name in ("forward", "backward", "kvcache_append"):
        monkeypatch.setattr(_core, name, boom)


def dense(**over):
    args = dict(q=arr(B, S, H, D), k=arr(B, 7, HK, D), v=arr(B, 7, HK, D))
    args.update(over)
    return lambda: fa.flash_attn_func(**args)


def qkvpacked(**over):
    args = dict(qkv=arr(B, S, 3, H, D))
    args.update(over)
    return lambda: fa.flash_attn_qkvpacked_func(**args)


def kvpacked(**over):
    args = dict(q=arr(B, S, H, D), kv=arr(B, 7, 2, HK, D))
    args.update(over)
    return lambda: fa.flash_attn_kvpacked_func(**args)


def varlen(**over):
    args = dict(q=arr(9, H, D), k=arr(11, HK, D), v=arr(11, HK, D), cu_seqlens_q=cu(4, 5), cu_seqlens_k=cu(6, 5),
                max_seqlen_q=5, max_seqlen_k=6)
    args.update(over)
    return lambda: fa.flash_attn_varlen_func(**args)


def varlen_qkv(**over):
    args = dict(qkv=arr(9, 3, H, D), cu_seqlens=cu(4, 5), max_seqlen=5)
    args.update(over)
    return lambda: fa.flash_attn_varlen_qkvpacked_func(**args)


def varlen_kv(**over):
    args = dict(q=arr(9, H, D), kv=arr(11, 2, HK, D), cu_seqlens_q=cu(4, 5), cu_seqlens_k=cu(6, 5), max_seqlen_q=5,
                max_seqlen_k=6)
    args.update(over)
    return lambda: fa.flash_attn_varlen_kvpacked_func(**args)


def kvcache(**over):
    args = dict(q=arr(B, 1, H, D), k_cache=arr(B, 32, HK, D), v_cache=arr(B, 32, HK, D), cache_seqlens=3)
    args.update(over)
    return lambda: fa.flash_attn_with_kvcache(**args)


def common_option_cases(make, name):
    """Options shared by all six attention functions."""
    return [
        (f"{name}-dropout_p-neg", make(dropout_p=-0.1), ValueError, "dropout_p"),
        (f"{name}-dropout_p-one", make(dropout_p=1.0), ValueError, "dropout_p"),
        (f"{name}-dropout_p-str", make(dropout_p="0.1"), TypeError, "dropout_p"),
        (f"{name}-softmax_scale-str", make(softmax_scale="x"), TypeError, "softmax_scale"),
        (f"{name}-softmax_scale-nan", make(softmax_scale=float("nan")), ValueError, "softmax_scale"),
        (f"{name}-causal-str", make(causal="yes"), TypeError, "causal"),
        (f"{name}-window-len3", make(window_size=(1, 2, 3)), ValueError, "window_size"),
        (f"{name}-window-int", make(window_size=3), ValueError, "window_size"),
        (f"{name}-window-neg", make(window_size=(-2, 0)), ValueError, "window_size"),
        (f"{name}-window-float", make(window_size=(1.5, 0)), TypeError, "window_size"),
        (f"{name}-softcap-neg", make(softcap=-1.0), ValueError, "softcap"),
        (f"{name}-softcap-inf", make(softcap=float("inf")), ValueError, "softcap"),
        (f"{name}-softcap-str", make(softcap="1"), TypeError, "softcap"),
        (f"{name}-alibi-shape", make(alibi_slopes=arr(H + 1)), ValueError, "alibi_slopes"),
        (f"{name}-alibi-3d", make(alibi_slopes=arr(B, H, 1)), ValueError, "alibi_slopes"),
        (f"{name}-alibi-dtype", make(alibi_slopes=arr(H, dtype=np.float64)), TypeError, "alibi_slopes"),
        (f"{name}-alibi-torch-dtype", make(alibi_slopes=torch.ones(H, dtype=torch.float16)), TypeError,
         "alibi_slopes"),
        (f"{name}-alibi-list", make(alibi_slopes=[0.1] * H), TypeError, "alibi_slopes"),
        (f"{name}-deterministic", make(deterministic="no"), TypeError, "deterministic"),
        (f"{name}-return_attn_probs", make(return_attn_probs=1.0), TypeError, "return_attn_probs"),
        (f"{name}-backend-unknown", make(backend="cuda"), ValueError, "backend"),
        (f"{name}-backend-type", make(backend=None), TypeError, "backend"),
        (f"{name}-seed-type", make(dropout_p=0.1, seed="x"), TypeError, "seed"),
    ]


CASES = []
# ---- flash_attn_func
CASES += [
    ("func-q-ndim", dense(q=arr(B, S, H)), ValueError, "q"),
    ("func-k-ndim", dense(k=arr(B, 7, HK, D, 1)), ValueError, "k"),
    ("func-v-ndim", dense(v=arr(7, HK, D)), ValueError, "v"),
    ("func-q-list", dense(q=[[[[1.0]]]]), TypeError, "q"),
    ("func-q-int", dense(q=arr(B, S, H, D, dtype=np.int32)), TypeError, "q"),
    ("func-mixed-dtype", dense(k=arr(B, 7, HK, D, dtype=np.float16)), TypeError, "k"),
    ("func-mixed-kind", dense(k=torch.ones(B, 7, HK, D)), TypeError, "k"),
    ("func-batch", dense(k=arr(B + 1, 7, HK, D), v=arr(B + 1, 7, HK, D)), ValueError, "batch"),
    ("func-kv-seqlen", dense(v=arr(B, 8, HK, D)), ValueError, "v"),
    ("func-headdim-k", dense(k=arr(B, 7, HK, D + 1)), ValueError, "head dimension"),
    ("func-headdim-v", dense(v=arr(B, 7, HK, D + 2)), ValueError, "head dimension"),
    ("func-headdim-big", dense(q=arr(1, 2, 1, 257), k=arr(1, 2, 1, 257), v=arr(1, 2, 1, 257)), ValueError,
     "1..256"),
    ("func-headdim-zero", dense(q=arr(1, 2, 1, 0), k=arr(1, 2, 1, 0), v=arr(1, 2, 1, 0)), ValueError, "1..256"),
    ("func-gqa", dense(k=arr(B, 7, 3, D), v=arr(B, 7, 3, D)), ValueError, "multiple"),
    ("func-heads-v", dense(v=arr(B, 7, 1, D)), ValueError, "heads"),
    ("func-alibi-batch", dense(alibi_slopes=arr(B + 1, H)), ValueError, "alibi_slopes"),
    ("func-torch-int", dense(q=torch.ones(B, S, H, D, dtype=torch.int32), k=torch.ones(B, 7, HK, D),
                             v=torch.ones(B, 7, HK, D)), TypeError, "q"),
]
CASES += common_option_cases(dense, "func")
# ---- packed
CASES += [
    ("qkvpacked-shape", qkvpacked(qkv=arr(B, S, 2, H, D)), ValueError, "qkv"),
    ("qkvpacked-ndim", qkvpacked(qkv=arr(B, S, 3, H)), ValueError, "qkv"),
    ("qkvpacked-type", qkvpacked(qkv="qkv"), TypeError, "qkv"),
    ("qkvpacked-dtype", qkvpacked(qkv=arr(B, S, 3, H, D, dtype=np.int64)), TypeError, "qkv"),
    ("kvpacked-kv-shape", kvpacked(kv=arr(B, 7, 3, HK, D)), ValueError, "kv"),
    ("kvpacked-q-ndim", kvpacked(q=arr(B, S, H)), ValueError, "q"),
    ("kvpacked-batch", kvpacked(kv=arr(B + 1, 7, 2, HK, D)), ValueError, "kv"),
    ("kvpacked-gqa", kvpacked(kv=arr(B, 7, 2, 3, D)), ValueError, "multiple"),
    ("kvpacked-headdim", kvpacked(kv=arr(B, 7, 2, HK, D + 1)), ValueError, "head dimension"),
    ("kvpacked-dtype", kvpacked(kv=arr(B, 7, 2, HK, D, dtype=np.float64)), TypeError, "kv"),
]
CASES += common_option_cases(qkvpacked, "qkvpacked") + common_option_cases(kvpacked, "kvpacked")
# ---- varlen
CASES += [
    ("varlen-q-ndim", varlen(q=arr(1, 9, H, D)), ValueError, "q"),
    ("varlen-k-ndim", varlen(k=arr(11, HK, D, 1)), ValueError, "k"),
    ("varlen-v-rows", varlen(v=arr(12, HK, D)), ValueError, "v"),
    ("varlen-mixed-dtype", varlen(v=arr(11, HK, D, dtype=np.float16)), TypeError, "v"),
    ("varlen-gqa", varlen(k=arr(11, 3, D), v=arr(11, 3, D)), ValueError, "multiple"),
    ("varlen-cu_q-start", varlen(cu_seqlens_q=np.array([1, 4, 9], np.int32)), ValueError, "cu_seqlens_q"),
    ("varlen-cu_q-decreasing", varlen(cu_seqlens_q=np.array([0, 6, 4], np.int32)), ValueError, "cu_seqlens_q"),
    ("varlen-cu_q-total", varlen(cu_seqlens_q=cu(4, 6)), ValueError, "cu_seqlens_q"),
    ("varlen-cu_q-float", varlen(cu_seqlens_q=np.array([0, 4, 9], np.float32)), TypeError, "cu_seqlens_q"),
    # other integer dtypes are converted, but only when every value fits in int32
    ("varlen-cu_q-int64-range", varlen(cu_seqlens_q=np.array([0, 4, 2**31 + 4], np.int64)), ValueError,
     "cu_seqlens_q"),
    ("varlen-cu_k-bool", varlen(cu_seqlens_k=np.array([False, True, True])), TypeError, "cu_seqlens_k"),
    ("varlen-cu_q-2d", varlen(cu_seqlens_q=np.array([[0, 4, 9]], np.int32)), ValueError, "cu_seqlens_q"),
    ("varlen-cu_q-list", varlen(cu_seqlens_q=[0, 4, 9]), TypeError, "cu_seqlens_q"),
    ("varlen-cu_k-len", varlen(cu_seqlens_k=cu(6, 3, 2)), ValueError, "cu_seqlens_k"),
    ("varlen-cu_k-decreasing", varlen(cu_seqlens_k=np.array([0, 7, 5], np.int32)), ValueError, "cu_seqlens_k"),
    ("varlen-cu_k-total", varlen(cu_seqlens_k=cu(6, 6)), ValueError, "cu_seqlens_k"),
    ("varlen-cu_k-start", varlen(cu_seqlens_k=np.array([2, 6, 11], np.int32)), ValueError, "cu_seqlens_k"),
    ("varlen-max_q-small", varlen(max_seqlen_q=4), ValueError, "max_seqlen_q"),
    ("varlen-max_k-small", varlen(max_seqlen_k=5), ValueError, "max_seqlen_k"),
    ("varlen-max_q-type", varlen(max_seqlen_q=5.0), TypeError, "max_seqlen_q"),
    ("varlen-max_k-neg", varlen(max_seqlen_k=-1), ValueError, "max_seqlen_k"),
    ("varlen-max_q-huge", varlen(max_seqlen_q=2 ** 40), ValueError, "max_seqlen_q"),
    ("varlen-window-huge", varlen(window_size=(2 ** 33, 0)), ValueError, "window_size"),
    ("kvcache-splits-huge", kvcache(num_splits=2 ** 31), ValueError, "num_splits"),
    ("varlen-alibi-batch", varlen(alibi_slopes=arr(3, H)), ValueError, "alibi_slopes"),
    ("varlen-block_table-kdim", varlen(block_table=np.zeros((2, 1), np.int32)), ValueError, "k"),
    ("varlen-block_table-range", varlen(k=arr(3, 16, HK, D), v=arr(3, 16, HK, D),
                                        block_table=np.array([[0], [3]], np.int32)), ValueError, "block_table"),
    ("varlen-block_table-rows", varlen(k=arr(3, 16, HK, D), v=arr(3, 16, HK, D),
                                       block_table=np.zeros((3, 1), np.int32)), ValueError, "block_table"),
    ("varlen-block_table-page", varlen(k=arr(3, 8, HK, D), v=arr(3, 8, HK, D),
                                       block_table=np.zeros((2, 1), np.int32)), ValueError, "page"),
    ("varlen-block_table-cols", varlen(k=arr(3, 16, HK, D), v=arr(3, 16, HK, D), cu_seqlens_k=cu(17, 5),
                                       max_seqlen_k=17, block_table=np.zeros((2, 1), np.int32)), ValueError,
     "block_table"),
    ("varlen-block_table-float", varlen(k=arr(3, 16, HK, D), v=arr(3, 16, HK, D),
                                        block_table=np.zeros((2, 1), np.float32)), TypeError, "block_table"),
]
CASES += common_option_cases(varlen, "varlen")
CASES += [
    ("varlen_qkv-shape", varlen_qkv(qkv=arr(9, 2, H, D)), ValueError, "qkv"),
    ("varlen_qkv-cu", varlen_qkv(cu_seqlens=np.array([0, 5, 3], np.int32)), ValueError, "cu_seqlens"),
    ("varlen_qkv-cu-total", varlen_qkv(cu_seqlens=cu(5, 5)), ValueError, "cu_seqlens"),
    ("varlen_qkv-max", varlen_qkv(max_seqlen=4), ValueError, "max_seqlen"),
    ("varlen_kv-shape", varlen_kv(kv=arr(11, 3, HK, D)), ValueError, "kv"),
    ("varlen_kv-q-ndim", varlen_kv(q=arr(9, H)), ValueError, "q"),
    ("varlen_kv-cu_k", varlen_kv(cu_seqlens_k=cu(6, 6)), ValueError, "cu_seqlens_k"),
    ("varlen_kv-gqa", varlen_kv(kv=arr(11, 2, 3, D)), ValueError, "multiple"),
]
CASES += common_option_cases(varlen_qkv, "varlen_qkv") + common_option_cases(varlen_kv, "varlen_kv")
# ---- KV cache
CASES += [
    ("kvcache-q-ndim", kvcache(q=arr(B, H, D)), ValueError, "q"),
    ("kvcache-k_cache-ndim", kvcache(k_cache=arr(B, 32, HK)), ValueError, "k_cache"),
    ("kvcache-v_cache-shape", kvcache(v_cache=arr(B, 31, HK, D)), ValueError, "v_cache"),
    ("kvcache-cache-dtype", kvcache(k_cache=arr(B, 32, HK, D, dtype=np.float16)), TypeError, "k_cache"),
    ("kvcache-gqa", kvcache(k_cache=arr(B, 32, 3, D), v_cache=arr(B, 32, 3, D)), ValueError, "multiple"),
    ("kvcache-headdim", kvcache(k_cache=arr(B, 32, HK, D + 1), v_cache=arr(B, 32, HK, D + 1)), ValueError,
     "head dimension"),
    ("kvcache-cache-batch", kvcache(k_cache=arr(1, 32, HK, D), v_cache=arr(1, 32, HK, D)), ValueError, "k_cache"),
    ("kvcache-k-without-v", kvcache(k=arr(B, 1, HK, D)), ValueError, "k and v"),
    ("kvcache-k-shape", kvcache(k=arr(B, 1, HK + 1, D), v=arr(B, 1, HK + 1, D)), ValueError, "k"),
    ("kvcache-v-shape", kvcache(k=arr(B, 1, HK, D), v=arr(B, 2, HK, D)), ValueError, "v"),
    ("kvcache-k-dtype", kvcache(k=arr(B, 1, HK, D, dtype=np.float64), v=arr(B, 1, HK, D, dtype=np.float64)),
     TypeError, "k"),
    ("kvcache-k-overflow", kvcache(k=arr(B, 30, HK, D), v=arr(B, 30, HK, D)), ValueError, "cache"),
    ("kvcache-k-readonly", kvcache(k_cache=np.broadcast_to(arr(1, 32, HK, D), (B, 32, HK, D)),
                                   k=arr(B, 1, HK, D), v=arr(B, 1, HK, D)), ValueError, "k_cache"),
    ("kvcache-k-no-seqlens", kvcache(cache_seqlens=None, k=arr(B, 1, HK, D), v=arr(B, 1, HK, D)), ValueError,
     "cache_seqlens"),
    ("kvcache-seqlens-neg", kvcache(cache_seqlens=-1), ValueError, "cache_seqlens"),
    ("kvcache-seqlens-big", kvcache(cache_seqlens=33), ValueError, "cache_seqlens"),
    ("kvcache-seqlens-arr-big", kvcache(cache_seqlens=np.array([3, 40], np.int32)), ValueError, "cache_seqlens"),
    ("kvcache-seqlens-shape", kvcache(cache_seqlens=np.array([3, 4, 5], np.int32)), ValueError, "cache_seqlens"),
    ("kvcache-seqlens-float", kvcache(cache_seqlens=3.0), TypeError, "cache_seqlens"),
    ("kvcache-seqlens-farr", kvcache(cache_seqlens=np.array([3.0, 4.0])), TypeError, "cache_seqlens"),
    ("kvcache-rotary-alone", kvcache(rotary_cos=arr(32, 4)), ValueError, "rotary"),
    ("kvcache-rotary-no-k", kvcache(rotary_cos=arr(32, 4), rotary_sin=arr(32, 4)), ValueError, "rotary"),
    ("kvcache-rotary-dim", kvcache(k=arr(B, 1, HK, D), v=arr(B, 1, HK, D), rotary_cos=arr(32, 5),
                                   rotary_sin=arr(32, 5)), ValueError, "rotary"),
    ("kvcache-rotary-shape", kvcache(k=arr(B, 1, HK, D), v=arr(B, 1, HK, D), rotary_cos=arr(32, 4),
                                     rotary_sin=arr(32, 2)), ValueError, "rotary_sin"),
    ("kvcache-rotary-len", kvcache(k=arr(B, 1, HK, D), v=arr(B, 1, HK, D), rotary_cos=arr(3, 4),
                                   rotary_sin=arr(3, 4)), ValueError, "rotary_cos"),
    ("kvcache-rotary-dtype", kvcache(k=arr(B, 1, HK, D), v=arr(B, 1, HK, D), rotary_cos=arr(32, 4, dtype=np.float64),
                                     rotary_sin=arr(32, 4, dtype=np.float64)), TypeError, "rotary_cos"),
    ("kvcache-rotary-ndim", kvcache(k=arr(B, 1, HK, D), v=arr(B, 1, HK, D), rotary_cos=arr(32, 4, 1),
                                    rotary_sin=arr(32, 4, 1)), ValueError, "rotary_cos"),
    ("kvcache-interleaved", kvcache(rotary_interleaved="yes"), TypeError, "rotary_interleaved"),
    ("kvcache-batch_idx-range", kvcache(cache_batch_idx=np.array([0, 2], np.int32)), ValueError,
     "cache_batch_idx"),
    ("kvcache-batch_idx-neg", kvcache(cache_batch_idx=np.array([-1, 0], np.int32)), ValueError, "cache_batch_idx"),
    ("kvcache-batch_idx-shape", kvcache(cache_batch_idx=np.array([0], np.int32)), ValueError, "cache_batch_idx"),
    ("kvcache-seqlens-int64-range", kvcache(cache_seqlens=np.array([3, 2**40], np.int64)), ValueError,
     "cache_seqlens"),
    ("kvcache-paged-int64-range", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D),
                                          block_table=np.full((B, 2), -2**33, np.int64)), ValueError, "block_table"),
    ("kvcache-batch_idx-float", kvcache(cache_batch_idx=np.array([0.0, 1.0])), TypeError, "cache_batch_idx"),
    ("kvcache-leftpad-big", kvcache(cache_leftpad=np.array([0, 4], np.int32)), ValueError, "cache_leftpad"),
    ("kvcache-leftpad-neg", kvcache(cache_leftpad=np.array([-1, 0], np.int32)), ValueError, "cache_leftpad"),
    ("kvcache-leftpad-shape", kvcache(cache_leftpad=np.zeros(3, np.int32)), ValueError, "cache_leftpad"),
    ("kvcache-paged-page", kvcache(k_cache=arr(4, 8, HK, D), v_cache=arr(4, 8, HK, D),
                                   block_table=np.zeros((B, 2), np.int32)), ValueError, "page"),
    ("kvcache-paged-range", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D),
                                    block_table=np.array([[0, 1], [4, 2]], np.int32)), ValueError, "block_table"),
    ("kvcache-paged-rows", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D),
                                   block_table=np.zeros((3, 2), np.int32)), ValueError, "block_table"),
    ("kvcache-paged-ndim", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D),
                                   block_table=np.zeros(2, np.int32)), ValueError, "block_table"),
    ("kvcache-paged-batch_idx", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D),
                                        block_table=np.zeros((B, 2), np.int32),
                                        cache_batch_idx=np.zeros(B, np.int32)), ValueError, "cache_batch_idx"),
    ("kvcache-paged-leftpad", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D),
                                      block_table=np.zeros((B, 2), np.int32), cache_leftpad=np.zeros(B, np.int32)),
     ValueError, "cache_leftpad"),
    ("kvcache-paged-capacity", kvcache(k_cache=arr(4, 16, HK, D), v_cache=arr(4, 16, HK, D), cache_seqlens=33,
                                       block_table=np.zeros((B, 2), np.int32)), ValueError, "cache_seqlens"),
    ("kvcache-scale", kvcache(softmax_scale="s"), TypeError, "softmax_scale"),
    ("kvcache-causal", kvcache(causal=None), TypeError, "causal"),
    ("kvcache-window", kvcache(window_size=(-5, 1)), ValueError, "window_size"),
    ("kvcache-softcap", kvcache(softcap=-0.5), ValueError, "softcap"),
    ("kvcache-alibi", kvcache(alibi_slopes=arr(H, 2)), ValueError, "alibi_slopes"),
    ("kvcache-alibi-dtype", kvcache(alibi_slopes=arr(H, dtype=np.float16)), TypeError, "alibi_slopes"),
    ("kvcache-num_splits", kvcache(num_splits=-1), ValueError, "num_splits"),
    ("kvcache-num_splits-type", kvcache(num_splits=1.5), TypeError, "num_splits"),
    ("kvcache-return_lse", kvcache(return_softmax_lse="y"), TypeError, "return_softmax_lse"),
    ("kvcache-backend", kvcache(backend="gpu"), ValueError, "backend"),
]


@pytest.mark.parametrize("call,exc,match", [pytest.param(c, e, m, id=i) for i, c, e, m in CASES])
def test_bad_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_set_num_threads_rejects_bad_values():
    with pytest.raises(ValueError, match="num_threads"):
        fa.set_num_threads(-1)
    with pytest.raises(TypeError, match="set_num_threads"):
        fa.set_num_threads(1.5)


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError) as info:
        fa.flash_attn_func(arr(1, 2, 1, 8), arr(1, 2, 1, 8), arr(1, 2, 1, 8), backend="tpu")
    msg = str(info.value)
    for name in ("auto", "cpu", "sim", "metal"):
        assert repr(name) in msg


@pytest.mark.parametrize("seed", [1 << 64, -(1 << 63) - 1, (0, 1 << 64)])
def test_dropout_seed_outside_64_bits_is_rejected(seed):
    q = np.zeros((1, 4, 1, 8), np.float32)
    with pytest.raises(ValueError, match="seed"):
        fa.flash_attn_func(q, q, q, dropout_p=0.1, seed=seed, backend="cpu")


def test_torch_tensors_without_strides_or_on_other_devices_name_the_argument():
    torch = pytest.importorskip("torch")
    dense = torch.zeros(1, 3, 2, 8)
    with pytest.raises(TypeError, match="k: torch tensors of layout torch.sparse_coo are not supported"):
        fa.flash_attn_func(dense, dense.to_sparse(), dense)
    with pytest.raises(ValueError, match="q: tensors on device 'meta' are not supported"):
        fa.flash_attn_func(dense.to("meta"), dense, dense)


def test_torch_func_transforms_name_the_argument():
    """vmap/grad wrap tensors without storage of their own; the call used to die in torch ("Cannot access data
    pointer of Tensor that doesn't have storage")."""
    torch = pytest.importorskip("torch")
    import flash_attn_cy as fa

    q = torch.randn(3, 1, 16, 2, 8)
    with pytest.raises(TypeError, match=r"q: torch\.func transforms"):
        torch.vmap(lambda x: fa.flash_attn_func(x, x, x))(q)
    with pytest.raises(TypeError, match=r"q: torch\.func transforms"):
        torch.func.grad(lambda x: fa.flash_attn_func(x, x, x).sum())(q[0])
