"""flash_attn.bert_padding and flash_attn.layers.rotary as served by flash_attn_cy (pure PyTorch helpers)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flash_attn_cy import bert_padding as bp  # noqa: E402
from flash_attn_cy.flash_attn_compat.layers import rotary  # noqa: E402
from flash_attn_cy.reference import rotary_ref  # noqa: E402


def _mask(batch=3, seqlen=11):
    mask = torch.ones(batch, seqlen, dtype=torch.bool)
    mask[0, 7:] = False   # right padding
    mask[1, :4] = False   # left padding
    mask[2, 5] = False    # a hole
    return mask


def test_unpad_input_returns_flash_attn_2_8_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 2, 5, generator=g)
    mask = _mask()
    packed, indices, cu_seqlens, max_seqlen, seqused = bp.unpad_input(x, mask.to(torch.int64))
    lengths = mask.sum(1)
    assert packed.shape == (int(lengths.sum()), 2, 5)
    assert indices.dtype == torch.int64 and cu_seqlens.dtype == torch.int32 and seqused.dtype == torch.int32
    assert cu_seqlens.tolist() == [0] + torch.cumsum(lengths, 0).tolist()
    assert isinstance(max_seqlen, int) and max_seqlen == int(lengths.max())
    assert seqused.tolist() == lengths.tolist()
    assert torch.equal(packed, x.reshape(33, 2, 5)[mask.flatten()])
    # pad_input is the exact inverse on valid rows and zero elsewhere
    back = bp.pad_input(packed, indices, 3, 11)
    assert torch.equal(back[mask], x[mask]) and torch.all(back[~mask] == 0)


def test_unpad_input_unused_mask_counts_in_cu_seqlens_not_in_seqused():
    x = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 6, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    unused = torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 1, 1, 1, 0]])
    packed, indices, cu, max_s, used = bp.unpad_input(x, mask, unused)
    assert cu.tolist() == [0, 4, 9] and used.tolist() == [3, 2] and max_s == 5
    assert indices.tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10]


def test_unpad_input_for_concatenated_sequences():
    x = torch.randn(3, 6, 4)
    lengths = torch.tensor([[2, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0], [6, 0, 0, 0, 0, 0]])
    packed, indices, cu, max_s = bp.unpad_input_for_concatenated_sequences(x, lengths)
    assert cu.tolist() == [0, 2, 5, 8, 10, 16] and max_s == 6
    assert indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10] + list(range(12, 18))
    assert torch.equal(packed, x.reshape(18, 4)[indices])


def test_padding_helpers_are_differentiable():
    x = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    packed, indices, *_ = bp.unpad_input(x, mask)
    w = torch.randn_like(packed)
    (bp.pad_input(packed * w, indices, 2, 5).sum()).backward()
    expected = torch.zeros(2, 5, 3)
    expected[mask.bool()] = w
    assert torch.equal(x.grad, expected)


def test_padding_helpers_reject_bad_arguments():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="attention_mask"):
        bp.unpad_input(x, torch.ones(2, 4))
    with pytest.raises(TypeError, match="indices"):
        bp.index_first_axis(x.reshape(10, 3), torch.ones(3))
    with pytest.raises(ValueError, match="indices"):
        bp.index_put_first_axis(torch.randn(3, 3), torch.arange(2), 10)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rotary_emb_matches_reference(interleaved, dtype):
    g = torch.Generator().manual_seed(1)
    batch, seqlen, h, d, rotary_dim = 2, 9, 3, 24, 16
    x = torch.randn(batch, seqlen, h, d, generator=g).to(dtype)
    angles = torch.rand(40, rotary_dim // 2, generator=g, dtype=torch.float64) * 6
    cos, sin = angles.cos().float(), angles.sin().float()
    offsets = torch.tensor([3, 17], dtype=torch.int32)
    out = rotary.apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offsets)
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for b in range(batch):
        pos = np.arange(seqlen) + int(offsets[b])
        ref = rotary_ref(x[b].float().numpy(), cos.numpy(), sin.numpy(), pos, interleaved=interleaved)
        np.testing.assert_allclose(out[b].float().numpy(), ref, atol=tol, rtol=tol)
    # packed (varlen) form gives the same per-sequence result; in place writes into x
    packed = x.reshape(batch * seqlen, h, d).clone()
    cu = torch.tensor([0, seqlen, 2 * seqlen], dtype=torch.int32)
    res = rotary.apply_rotary_emb(packed, cos, sin, interleaved=interleaved, seqlen_offsets=offsets, cu_seqlens=cu,
                                  max_seqlen=seqlen, inplace=True)
    assert res is packed and torch.equal(packed.reshape(batch, seqlen, h, d), out)


def test_apply_rotary_emb_qkv_and_kv_in_place():
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(2, 7, 3, 4, 16, generator=g)
    angles = torch.rand(10, 8, generator=g)
    cos, sin = angles.cos(), angles.sin()
    q_exp = rotary.apply_rotary_emb(qkv[:, :, 0], cos, sin, seqlen_offsets=2)
    k_exp = rotary.apply_rotary_emb(qkv[:, :, 1], cos, sin, seqlen_offsets=2)
    v_before = qkv[:, :, 2].clone()
    assert rotary.apply_rotary_emb_qkv_(qkv, cos, sin, seqlen_offsets=2) is qkv
    assert torch.equal(qkv[:, :, 0], q_exp) and torch.equal(qkv[:, :, 1], k_exp)
    assert torch.equal(qkv[:, :, 2], v_before)
    kv = torch.randn(2, 7, 2, 4, 16, generator=g)
    k_exp = rotary.apply_rotary_emb(kv[:, :, 0], cos, sin)
    rotary.apply_rotary_emb_kv_(kv, cos, sin)
    assert torch.equal(kv[:, :, 0], k_exp)
    with pytest.raises(ValueError, match="rows"):
        rotary.apply_rotary_emb(torch.randn(1, 12, 1, 16), cos, sin)  # positions beyond cos/sin
