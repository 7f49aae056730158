"""transformers with ``attn_implementation="flash_attn_cy"`` against ``"eager"`` on tiny random models (no download).

Logits are checked with the project's tolerance rule: the error of the flash_attn_cy model against the same model
run eagerly in float64 must stay within 2x the error of the eager model in the working dtype (+ the dtype floor).
Greedy ``generate()`` (left padding, DynamicCache decode steps) must produce the eager model's tokens and scores.
Skipped when transformers is not installed; CI installs the pinned version from the ``test`` extra.
"""
from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import flash_attn_cy  # noqa: E402
from flash_attn_cy import transformers_integration as ti  # noqa: E402

from _tolerance import assert_close_to_ref  # noqa: E402

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


def _families():
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    return {
        "llama": (LlamaForCausalLM, LlamaConfig(**COMMON)),
        # sliding window much shorter than the sequences below, so the window really cuts keys off
        "mistral-sliding": (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=5)),
        # hybrid: layer 0 full attention, layer 1 sliding window
        "qwen2-hybrid": (Qwen2ForCausalLM, Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=6,
                                                       max_window_layers=1)),
    }


@pytest.fixture(scope="module", autouse=True)
def registered():
    assert flash_attn_cy.register_transformers() == "flash_attn_cy"
    yield


def _pair(family: str, dtype=torch.float32):
    """(eager model, flash_attn_cy model, float64 eager model) sharing one set of random weights."""
    cls, config = _families()[family]
    torch.manual_seed(1234)
    # _from_config stores attn_implementation in the config object it is given: one copy per model
    eager = cls._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    ours = cls._from_config(copy.deepcopy(config), attn_implementation="flash_attn_cy").eval()
    ours.load_state_dict(eager.state_dict())
    ref64 = cls._from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    ref64.load_state_dict(eager.state_dict())
    return eager.to(dtype), ours.to(dtype), ref64.to(torch.float64)


def _batch(batch=3, seqlen=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, seqlen), generator=g)
    mask = torch.ones(batch, seqlen, dtype=torch.long)
    mask[1, :4] = 0     # left padding
    mask[2, :9] = 0     # heavy left padding: 4 real tokens
    return ids, mask


def _reference_logits(ref64, ids, mask) -> torch.Tensor:
    """float64 eager logits of the valid tokens, in ``logits[mask.bool()]`` order, each row run on its own without
    padding (transformers' eager float64 path turns fully padded rows into NaN, which then leak into valid rows).
    Positions are the ones the padded batch uses (arange over the padded row), so the model sees the same input."""
    rows = []
    with torch.no_grad():
        for b in range(ids.shape[0]):
            valid = mask[b].bool()
            pos = torch.arange(ids.shape[1])[valid].unsqueeze(0)
            rows.append(ref64(ids[b:b + 1, valid], position_ids=pos).logits[0])
    return torch.cat(rows)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


@pytest.mark.parametrize("family", ["llama", "mistral-sliding", "qwen2-hybrid"])
def test_padded_batch_logits_match_eager(family):
    eager, ours, ref64 = _pair(family)
    assert ours.config._attn_implementation == "flash_attn_cy" and eager.config._attn_implementation == "eager"
    ids, mask = _batch()
    with torch.no_grad():
        l_ours = ours(ids, attention_mask=mask).logits
        l_eager = eager(ids, attention_mask=mask).logits
    l_ref = _reference_logits(ref64, ids, mask)
    valid = mask.bool()  # padded positions are don't-care in every implementation
    err = assert_close_to_ref(_numpy(l_ours[valid]), _numpy(l_ref), _numpy(l_eager[valid]).astype(np.float32),
                              what=f"{family} logits")
    assert err < 1e-3
    # no-padding batch takes the dense flash_attn_func path
    with torch.no_grad():
        full_ours, full_eager, full_ref = (m(ids).logits for m in (ours, eager, ref64))
    assert_close_to_ref(_numpy(full_ours), _numpy(full_ref), _numpy(full_eager).astype(np.float32),
                        what=f"{family} logits without padding")


def test_sliding_window_is_really_applied():
    # Guard for the test above: at these sizes the Mistral window changes the logits, so matching eager means the
    # window was honoured (not just that both ignore it).
    from transformers import MistralConfig, MistralForCausalLM

    eager, ours, _ = _pair("mistral-sliding")
    no_window = MistralForCausalLM._from_config(MistralConfig(**COMMON, sliding_window=None),
                                                attn_implementation="flash_attn_cy").eval()
    no_window.load_state_dict(ours.state_dict())
    ids, _ = _batch()
    with torch.no_grad():
        diff = (ours(ids).logits - no_window(ids).logits).abs().max().item()
    assert diff > 1e-4


def test_bf16_logits_match_eager():
    eager, ours, ref64 = _pair("llama", torch.bfloat16)
    ids, mask = _batch(seed=1)
    with torch.no_grad():
        l_ours, l_eager = (m(ids, attention_mask=mask).logits for m in (ours, eager))
    l_ref = _reference_logits(ref64, ids, mask)
    assert l_ours.dtype == torch.bfloat16
    valid = mask.bool()
    assert_close_to_ref(_numpy(l_ours[valid]), _numpy(l_ref), _numpy(l_eager[valid]).astype(np.float32),
                        dtype="bfloat16", what="bf16 logits")


@pytest.mark.parametrize("family", ["llama", "mistral-sliding", "qwen2-hybrid"])
def test_greedy_generate_with_left_padding_matches_eager(family):
    eager, ours, _ = _pair(family)
    ids, mask = _batch(seed=2)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, output_scores=True,
                  return_dict_in_generate=True, pad_token_id=0)
    with torch.no_grad():
        g_ours = ours.generate(ids, **kwargs)
        g_eager = eager.generate(ids, **kwargs)
    assert g_ours.sequences.shape == (3, 13 + 6)
    assert torch.equal(g_ours.sequences, g_eager.sequences)
    for s_ours, s_eager in zip(g_ours.scores, g_eager.scores):
        assert torch.allclose(s_ours, s_eager, atol=1e-4, rtol=0)


def test_packed_sequences_from_position_ids_match_eager():
    # Padding-free batching: two sequences packed in one row, positions restart at the boundary.
    eager, ours, _ = _pair("llama")
    ids = torch.randint(1, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    with torch.no_grad():  # use_cache=False: transformers only detects packing without a cache
        l_ours = ours(ids, position_ids=pos, use_cache=False).logits
        l_eager = eager(ids, position_ids=pos, use_cache=False).logits
        l_second = eager(ids[:, 5:], position_ids=pos[:, 5:], use_cache=False).logits
    assert torch.allclose(l_eager[:, 5:], l_second, atol=1e-5)  # eager really isolates the packed sequences
    assert torch.allclose(l_ours, l_eager, atol=1e-5, rtol=0)


def test_set_attn_implementation_switches_an_existing_model():
    eager, _, _ = _pair("llama")
    ids, mask = _batch(seed=4)
    with torch.no_grad():
        before = eager(ids, attention_mask=mask).logits
        eager.set_attn_implementation("flash_attn_cy")
        after = eager(ids, attention_mask=mask).logits
    assert eager.config._attn_implementation == "flash_attn_cy"
    assert torch.allclose(before[mask.bool()], after[mask.bool()], atol=1e-5, rtol=0)


def _grads(model, ids, mask=None):
    labels = ids.masked_fill(mask == 0, -100) if mask is not None else ids
    model.zero_grad(set_to_none=True)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    return torch.cat([p.grad.reshape(-1).to(torch.float64) for p in model.parameters()])


@pytest.mark.skipif(importlib.util.find_spec("flash_attn_cy.autograd") is None,
                    reason="this build has no flash_attn_cy.autograd (backward) yet")
@pytest.mark.parametrize("family", ["llama", "mistral-sliding"])
def test_training_gradients_match_eager(family):
    eager, ours, ref64 = _pair(family)
    for m in (eager, ours, ref64):
        m.train()  # attention_dropout is 0.0 in these configs: deterministic
    ids, mask = _batch(seed=6)
    # dense path (no padding): tolerance rule against the float64 eager model
    g_ours, g_eager, g_ref = (_grads(m, ids) for m in (ours, eager, ref64))
    assert_close_to_ref(g_ours.numpy(), g_ref.numpy(), g_eager.to(torch.float32).numpy(), what=f"{family} grads")
    # Padded batch through unpad/varlen/pad: same gradients as eager (float64 eager NaNs on padded rows, see above).
    # Right padding here: with left padding the last pad position's logits predict the first real token, so the loss
    # would depend on pad rows, whose attention output is arbitrary (eager: uniform mix, flash: zeros).
    mask = torch.ones_like(mask)
    mask[1, -4:] = 0
    mask[2, -9:] = 0
    g_ours, g_eager = _grads(ours, ids, mask), _grads(eager, ids, mask)
    assert torch.isfinite(g_ours).all()
    assert (g_ours - g_eager).abs().max() <= 1e-4 * g_eager.abs().max()


def test_unsupported_inputs_raise_clear_errors():
    class Module(torch.nn.Module):
        is_causal = True

    q = torch.randn(1, 4, 5, 16)
    k = torch.randn(1, 2, 5, 16)
    with pytest.raises(ValueError, match="4-D mask"):
        ti.flash_attn_cy_attention_forward(Module(), q, k, k, torch.zeros(1, 1, 5, 5))
    with pytest.raises(NotImplementedError, match="s_aux"):
        ti.flash_attn_cy_attention_forward(Module(), q, k, k, None, s_aux=torch.zeros(4))


def test_attention_function_layout_and_window_mapping():
    class Module(torch.nn.Module):
        is_causal = True

    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 9, 16, generator=g)
    k = torch.randn(2, 2, 9, 16, generator=g)
    v = torch.randn(2, 2, 9, 16, generator=g)
    out, weights = ti.flash_attn_cy_attention_forward(Module(), q, k, v, None, scaling=0.3, sliding_window=3)
    assert weights is None and out.shape == (2, 9, 4, 16)
    # eager equivalent: causal, each query sees itself and the 2 keys before it
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = (q @ kk.transpose(-1, -2)) * 0.3
    i, j = torch.arange(9)[:, None], torch.arange(9)[None, :]
    scores = scores.masked_fill(~((j <= i) & (j > i - 3)), float("-inf"))
    expected = (scores.softmax(-1) @ vv).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


def _eager_rows(q, k, v, mask, scaling, window=None):
    """float64 attention of [b, h, q_len, d] queries (the LAST q_len positions) over each row's valid keys."""
    b, h, q_len, _ = q.shape
    group = h // k.shape[1]
    out = torch.zeros(b, q_len, h, q.shape[-1], dtype=torch.float64)
    for r in range(b):
        keys = torch.nonzero(mask[r]).flatten()
        kr, vr = (x[r].double().repeat_interleave(group, 0)[:, keys] for x in (k, v))
        qpos = torch.arange(mask.shape[1] - q_len, mask.shape[1])
        scores = (q[r].double() @ kr.transpose(-1, -2)) * scaling
        ok = keys[None, :] <= qpos[:, None]
        if window is not None:
            ok &= keys[None, :] > qpos[:, None] - window
        probs = scores.masked_fill(~ok, float("-inf")).softmax(-1).nan_to_num(0.0)
        out[r] = (probs @ vr).transpose(0, 1)
    return out


@pytest.mark.parametrize("q_len", [1, 3])
def test_decode_on_left_padded_cache_reads_the_cache_in_place(monkeypatch, q_len):
    class Module(torch.nn.Module):
        is_causal = True

    g = torch.Generator().manual_seed(7)
    q = torch.randn(3, 4, q_len, 32, generator=g)
    k = torch.randn(3, 2, 21, 32, generator=g)
    v = torch.randn(3, 2, 21, 32, generator=g)
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :19] = 0   # fewer tokens than a 3-token chunk: its first query row is a pad (zeros)

    def not_expected(*args, **kwargs):
        raise AssertionError("a left-padded decode step must not pack the cache through the varlen path")

    monkeypatch.setattr(flash_attn_cy.interface, "flash_attn_varlen_func", not_expected)
    for window in (None, 4):
        out, _ = ti.flash_attn_cy_attention_forward(Module(), q, k, v, mask, scaling=0.2, sliding_window=window)
        expected = _eager_rows(q, k, v, mask, 0.2, window)
        assert out.shape == (3, q_len, 4, 32)
        assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)


def test_decode_with_a_hole_in_the_mask_takes_the_varlen_path(monkeypatch):
    class Module(torch.nn.Module):
        is_causal = True

    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 1, 16, generator=g)
    k = torch.randn(2, 4, 9, 16, generator=g)
    v = torch.randn(2, 4, 9, 16, generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 3] = 0   # not left padding

    def not_expected(*args, **kwargs):
        raise AssertionError("cache_leftpad cannot express a hole in the mask")

    monkeypatch.setattr(flash_attn_cy.kvcache, "flash_attn_with_kvcache", not_expected)
    out, _ = ti.flash_attn_cy_attention_forward(Module(), q, k, v, mask, scaling=0.25)
    assert torch.allclose(out.double(), _eager_rows(q, k, v, mask, 0.25), atol=1e-5, rtol=0)
