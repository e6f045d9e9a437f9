"""Attention patterns pictured for 6 text positions and a 4x4 image, as in the paper's Figure 11.

`row` and `col` are the paper's masks (a) and (b) cell for cell. `conv` follows the caption of (d) — a causal
3x3 kernel with raster wraparound like the row mask; the figure's drawing of (d) also marks cells two rows up
(raster offset 2w - 1) that no 3x3 kernel reaches, so we follow the text. `axial_row` and `conv_like` are
DALLE-pytorch's patterns (their equality with it is proven by the parity tests).
"""
from __future__ import annotations

import pytest
import torch

from dalle_core import DALLE, DiscreteVAE
from dalle_core.models import masks as masks_module
from dalle_core.models.masks import ATTN_TYPES, attention_mask

PICTURES = {
    "row": """
        1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 1 1 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 1 1 1 1 1 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 1 1 1 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 1 1 1 1 1 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 1 1 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 1 1 1 1 1 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 1 1 1 1 1 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 1 1 1 1 1 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1 1
    """,
    "col": """
        1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 1 0 0 0 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 1 0 0 0 1 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 1 0 0 0 1 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 0 0 0 1 0 0 0 1 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 1 0 0 0 1 0 0 0 1 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 1 0 0 0 1 0 0 0 1 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 1 0 0 0 1 0 0 0 1 0 0 0
        1 1 1 1 1 1 0 1 0 0 0 1 0 0 0 1 0 0 0 1 0 0
        1 1 1 1 1 1 0 0 1 0 0 0 1 0 0 0 1 0 0 0 1 0
        1 1 1 1 1 1 0 0 0 1 0 0 0 1 0 0 0 1 0 0 0 1
    """,
    "conv": """
        1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 1 1 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 1 1 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 0 1 1 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 1 1 0 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 1 1 1 0 1 1 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 1 1 1 0 1 1 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 1 0 1 1 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 1 1 1 0 1 1 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 1 1 1 0 1 1 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 1 1 1 0 1 1 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 1 1 1 0 1 1 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 1 1 1 0 1 1 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 1 1 1 0 1 1
    """,
    "axial_row": """
        1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 1 1 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 1 1 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 1 1 1 1 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 1 1 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 1 1 1 1
    """,
    "conv_like": """
        1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 1 1 0 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 1 1 0 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 0 1 1 1 0 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 0 1 1 1 0 1 1 1 0 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 0 0 0 1 0 0 0 1 0 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 0 0 1 1 0 0 1 1 0 0 0 0 0 0
        1 1 1 1 1 1 1 1 1 0 1 1 1 0 1 1 1 0 0 0 0 0
        1 1 1 1 1 1 0 1 1 1 0 1 1 1 0 1 1 1 0 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 0 0 0 1 0 0 0 1 0 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 0 0 1 1 0 0 1 1 0 0
        1 1 1 1 1 1 0 0 0 0 1 1 1 0 1 1 1 0 1 1 1 0
        1 1 1 1 1 1 0 0 0 0 0 1 1 1 0 1 1 1 0 1 1 1
    """,
}
KERNELS = {"conv": 3, "conv_like": 3}


def _picture(text: str) -> torch.Tensor:
    return torch.tensor([[int(c) for c in line.split()] for line in text.strip().splitlines()], dtype=torch.bool)


@pytest.mark.parametrize("attn_type", sorted(PICTURES))
def test_mask_matches_picture(attn_type):
    mask = attention_mask(attn_type, text_positions=6, fmap_size=4, kernel_size=KERNELS.get(attn_type, 5))
    assert torch.equal(mask, _picture(PICTURES[attn_type]))


def test_paper_column_mask_is_dalle_pytorch_axial_col():
    assert torch.equal(attention_mask("col", 6, 4), attention_mask("axial_col", 6, 4))


@pytest.mark.parametrize("attn_type", ATTN_TYPES)
def test_every_pattern_is_causal_text_causal_and_image_sees_all_text(attn_type):
    mask = attention_mask(attn_type, text_positions=5, fmap_size=6, kernel_size=5)
    assert not mask.triu(1).any()  # nothing from the future
    assert mask[:5, :5].equal(torch.ones(5, 5, dtype=torch.bool).tril())
    assert mask[5:, :5].all()
    assert mask.diagonal().all()  # every token sees itself


def test_paper_conv_with_large_kernel_is_full_causal_on_small_image():
    assert torch.equal(attention_mask("conv", 3, 4, kernel_size=11), attention_mask("full", 3, 4))


def test_unknown_attention_type_raises():
    with pytest.raises(ValueError, match="unknown attention type 'diagonal'"):
        attention_mask("diagonal", 3, 4)
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
    with pytest.raises(ValueError, match="'sparse'"):
        DALLE(dim=32, vae=vae, num_text_tokens=20, text_seq_len=4, depth=1, heads=2, dim_head=16,
              attn_types=("sparse",))


def test_masks_are_built_once_not_per_forward(monkeypatch):
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=20, text_seq_len=4, depth=4, heads=2, dim_head=16,
                  attn_types=("full", "axial_row", "axial_col", "conv_like"))

    def fail(*args, **kwargs):
        raise AssertionError("a mask was rebuilt during forward")

    monkeypatch.setattr(masks_module, "attention_mask", fail)
    monkeypatch.setattr(masks_module, "image_visibility", fail)
    import dalle_core.models.transformer as transformer_module

    monkeypatch.setattr(transformer_module, "attention_mask", fail)
    text = torch.randint(1, 20, (2, 4))
    codes = torch.randint(0, 32, (2, 16))
    dalle(text, codes, return_loss=True).backward()
    dalle.generate_image_codes(text, use_cache=True)
