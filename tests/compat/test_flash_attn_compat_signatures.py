"""The drop-in's public functions against flash_attn 2.8.3's signatures (issue 18, item 8).

The wrappers in flash_attn_compat/flash_attn_interface.py are derived from flash_attn_cy's functions (their
positional-or-keyword parameters); this table, written from flash_attn 2.8.3's flash_attn/flash_attn_interface.py,
is what they must equal: names, order, kinds and defaults.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import flash_attn_cy as fa
from flash_attn_cy.flash_attn_compat import flash_attn_interface as fai

_NO = inspect.Parameter.empty
_COMMON = [("dropout_p", 0.0), ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
           ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False), ("return_attn_probs", False)]
_VARLEN = [("cu_seqlens_q", _NO), ("cu_seqlens_k", _NO), ("max_seqlen_q", _NO), ("max_seqlen_k", _NO)]

# flash_attn 2.8.3: (name, default) in order; _NO = no default. Every parameter is positional-or-keyword.
SIGNATURES_2_8_3 = {
    "flash_attn_qkvpacked_func": [("qkv", _NO)] + _COMMON,
    "flash_attn_kvpacked_func": [("q", _NO), ("kv", _NO)] + _COMMON,
    "flash_attn_func": [("q", _NO), ("k", _NO), ("v", _NO)] + _COMMON,
    "flash_attn_varlen_qkvpacked_func": [("qkv", _NO), ("cu_seqlens", _NO), ("max_seqlen", _NO)] + _COMMON,
    "flash_attn_varlen_kvpacked_func": [("q", _NO), ("kv", _NO)] + _VARLEN + _COMMON,
    "flash_attn_varlen_func": [("q", _NO), ("k", _NO), ("v", _NO)] + _VARLEN + _COMMON + [("block_table", None)],
    "flash_attn_with_kvcache": [
        ("q", _NO), ("k_cache", _NO), ("v_cache", _NO), ("k", None), ("v", None), ("rotary_cos", None),
        ("rotary_sin", None), ("cache_seqlens", None), ("cache_batch_idx", None), ("cache_leftpad", None),
        ("block_table", None), ("softmax_scale", None), ("causal", False), ("window_size", (-1, -1)),
        ("softcap", 0.0), ("rotary_interleaved", True), ("alibi_slopes", None), ("num_splits", 0),
        ("return_softmax_lse", False)],
}


@pytest.mark.parametrize("name", list(SIGNATURES_2_8_3))
def test_wrapper_signature_is_flash_attn_2_8_3(name):
    params = inspect.signature(getattr(fai, name)).parameters.values()
    got = [(p.name, p.default) for p in params]
    assert got == SIGNATURES_2_8_3[name]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    # the defaults are the objects Python binds (not only what the signature shows)
    fn = getattr(fai, name)
    defaults = tuple(d for _, d in SIGNATURES_2_8_3[name] if d is not _NO)
    assert fn.__defaults__ == defaults and fn.__kwdefaults__ is None
    assert fn.__name__ == name and fn.__module__ == fai.__name__ and fn.__doc__


@pytest.mark.parametrize("name", list(SIGNATURES_2_8_3))
def test_wrapper_is_derived_from_the_flash_attn_cy_function(name):
    """flash_attn_cy's function has the same parameters plus keyword-only extras only: the wrapper is its
    positional-or-keyword part, so the two cannot drift apart."""
    real = inspect.signature(getattr(fa, name)).parameters.values()
    positional = [(p.name, p.default) for p in real if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == SIGNATURES_2_8_3[name]
    assert {p.kind for p in real} <= {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    assert fai.flash_attn_signature(getattr(fa, name)) == inspect.signature(getattr(fai, name))


def test_wrappers_bind_like_flash_attn():
    q = np.random.default_rng(0).standard_normal((1, 3, 2, 8)).astype(np.float32)
    every = fai.flash_attn_func(q, q, q, 0.0, None, True, (-1, -1), 0.0, None, False, False)  # all positional
    assert np.array_equal(every, fa.flash_attn_func(q, q, q, causal=True))
    with pytest.raises(TypeError, match="backend"):  # flash_attn has no backend argument
        fai.flash_attn_func(q, q, q, backend="cpu")
    with pytest.raises(TypeError, match="positional"):
        fai.flash_attn_func(q, q, q, 0.0, None, True, (-1, -1), 0.0, None, False, False, "extra")
    with pytest.raises(TypeError, match="causal"):  # given twice
        fai.flash_attn_func(q, q, q, 0.0, None, True, causal=False)
    out, lse, s_dmask = fai.flash_attn_func(q, q, q, return_attn_probs=True)  # flash_attn's rule: no dropout, None
    assert s_dmask is None and lse.shape == (1, 2, 3)
