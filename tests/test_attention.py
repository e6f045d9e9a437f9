"""Attention kernels: the block-sparse axial path equals masked SDPA; fused rotary equals the library's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rotary_embedding_torch import apply_rotary_emb

from dalle_core.models.attention import AxialPattern, apply_rotary, axial_attention, rotary_tables
from dalle_core.models.masks import attention_mask


@pytest.mark.parametrize("axis, attn_type", [(0, "axial_row"), (1, "axial_col")])
@pytest.mark.parametrize("num_image", [1, 5, 15, 16])
def test_axial_attention_equals_masked_sdpa(axis, attn_type, num_image):
    text_positions, fmap = 5, 4
    n = text_positions + num_image
    q, k, v = torch.randn(3, 2, 3, n, 8).unbind(0)
    mask = attention_mask(attn_type, text_positions, fmap)[:n, :n]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = axial_attention(q, k, v, AxialPattern(text_positions, fmap, axis))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_axial_attention_gradients_equal_masked_sdpa():
    text_positions, fmap, n = 4, 4, 19
    qkv = torch.randn(3, 2, 2, n, 8, requires_grad=True)
    mask = attention_mask("axial_col", text_positions, fmap)[:n, :n]
    F.scaled_dot_product_attention(*qkv.unbind(0), attn_mask=mask).square().sum().backward()
    expected = qkv.grad.clone()
    qkv.grad = None
    axial_attention(*qkv.unbind(0), AxialPattern(text_positions, fmap, 1)).square().sum().backward()
    torch.testing.assert_close(qkv.grad, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim_head", [32, 33])
def test_complex_rotary_equals_rotary_embedding_torch(dim_head):
    t = torch.randn(3, 2, 4, 7, dim_head)
    freqs = torch.randn(7, 15).repeat_interleave(2, dim=-1)  # the library repeats each angle per pair
    torch.testing.assert_close(apply_rotary(t, rotary_tables(freqs, dim_head)), apply_rotary_emb(freqs, t),
                               atol=1e-6, rtol=1e-6)
