"""Parity cases for CLIP, computed by the reference (dalle-pytorch 1.6.6). Runs in the reference venv only.

The reference has no similarity matrix, so it is computed by the reference's own forward over every
(text_i, image_j) pair. Configs are tiny (dim_head is fixed at 64) so each file stays under 100 KB.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from dalle_pytorch import CLIP

BASE = dict(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=40, text_seq_len=8, num_visual_tokens=32,
            visual_image_size=8, visual_patch_size=4)

CONFIGS = {
    "clip_tiny": dict(BASE, dim_text=8, text_enc_depth=1, text_heads=2, visual_enc_depth=1, visual_heads=1,
                      channels=3),
    "clip_deep_gray": dict(BASE, dim_text=8, dim_image=8, text_enc_depth=2, text_heads=2, visual_enc_depth=2,
                           visual_heads=1, visual_patch_size=2, text_seq_len=6, channels=1),
}
LENGTHS = [None, 5, 3, 1]  # caption lengths for the right-padded, masked inputs (None: the full length)
SHORT = 4  # a text shorter than text_seq_len, unpadded: the reference embeds positions [0, SHORT)


def pair_matrix(clip: CLIP, text: torch.Tensor, images: torch.Tensor, text_mask=None) -> torch.Tensor:
    """(B_text, B_image) scores from the reference's forward on every (text_i, image_j) pair."""
    bt, bi = text.shape[0], images.shape[0]
    rows = text.repeat_interleave(bi, dim=0)
    mask = text_mask.repeat_interleave(bi, dim=0) if text_mask is not None else None
    cols = images.repeat(bt, 1, 1, 1)
    return clip(rows, cols, text_mask=mask).view(bt, bi)


def build_case(config: dict, seed: int) -> dict:
    """One case: fresh reference weights from `seed`, a non-default temperature, outputs on random inputs."""
    torch.manual_seed(seed)
    clip = CLIP(**config)
    with torch.no_grad():
        clip.temperature.fill_(0.7)  # exp(0.7) != e: catches a missing or doubled exp
    n, size, channels = config["text_seq_len"], config["visual_image_size"], config["channels"]
    batch = len(LENGTHS)
    lengths = torch.tensor([n if length is None else length for length in LENGTHS])
    text_mask = torch.arange(n)[None, :] < lengths[:, None]  # (B, n) True = real token
    text = torch.randint(1, config["num_text_tokens"], (batch, n)).masked_fill(~text_mask, 0)
    images = torch.rand(batch, channels, size, size)

    with torch.no_grad():
        outputs = {
            "scores": clip(text, images),
            "scores_masked": clip(text, images, text_mask=text_mask),
            "scores_short": clip(text[:, :SHORT], images),
            "loss": clip(text, images, return_loss=True),
            "loss_masked": clip(text, images, text_mask=text_mask, return_loss=True),
            "similarity": pair_matrix(clip, text, images),
            "similarity_masked": pair_matrix(clip, text, images, text_mask),
        }
    return {
        "config": dict(config),
        "state_dict": {k: v.detach().clone() for k, v in clip.state_dict().items()},
        "inputs": {"text": text, "text_mask": text_mask, "images": images, "short_len": SHORT},
        "outputs": outputs,
    }


def build_cases(seed: int) -> Iterator[Tuple[str, dict]]:
    """Yield (name, case) for every CLIP parity case."""
    for i, (name, config) in enumerate(CONFIGS.items()):
        yield name, build_case(config, seed + 100 + i)
