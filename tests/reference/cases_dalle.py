"""Parity cases for DALLE, computed by the reference (dalle-pytorch 1.6.6). Runs in the reference venv only.

Each case stores fresh reference weights, padded captions and image codes, the full-sequence logits and the
loss; one more case is a checkpoint in the exact layout train_dalle.py writes, for `load_dalle_pytorch`.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from dalle_pytorch import DALLE, DiscreteVAE

VAE = dict(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8)
BASE = dict(dim=32, num_text_tokens=50, text_seq_len=6, depth=2, heads=2, dim_head=16)
MIX = ("full", "axial_row", "axial_col", "conv_like")

CONFIGS = {
    "dalle_default": dict(BASE),
    "dalle_axial_row": dict(BASE, attn_types=("axial_row",)),
    "dalle_axial_col": dict(BASE, attn_types=("axial_col",)),
    "dalle_conv_like": dict(BASE, attn_types=("conv_like",)),
    "dalle_mix": dict(BASE, depth=4, attn_types=MIX),
    "dalle_stable": dict(BASE, stable=True, attn_types=("full", "axial_row")),
    "dalle_shared_emb": dict(BASE, share_input_output_emb=True),
    "dalle_absolute_pos": dict(BASE, rotary_emb=False, shift_tokens=False),
    "dalle_sandwich_shared_layers": dict(BASE, depth=4, sandwich_norm=True, attn_types=("full", "axial_col"),
                                         shared_attn_ids=(0, 1, 0, 1), shared_ff_ids=(0, 0, 1, 1)),
    "dalle_reversible": dict(BASE, reversible=True, attn_types=MIX),
}


def _inputs(config: dict, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    batch, n = 3, config["text_seq_len"]
    text = torch.randint(1, config["num_text_tokens"], (batch, n), generator=generator)
    text[0, 4:] = 0  # padded captions: unique padding ids per position
    text[1, 1:] = 0
    fmap = VAE["image_size"] // 2 ** VAE["num_layers"]
    codes = torch.randint(0, VAE["num_tokens"], (batch, fmap * fmap), generator=generator)
    return text, codes


def _build(config: dict, seed: int) -> Tuple[DALLE, DiscreteVAE]:
    torch.manual_seed(seed)
    vae = DiscreteVAE(**VAE)
    dalle = DALLE(vae=vae, **config)
    with torch.no_grad():  # LayerScale starts at 0.1; widen it so every layer matters in the comparison
        for name, p in dalle.named_parameters():
            if name.endswith(".scale"):
                p.uniform_(0.5, 1.0)
    return dalle.eval(), vae


def build_cases(seed: int) -> Iterator[Tuple[str, dict]]:
    """Yield (name, case) for every configuration, plus one train_dalle.py-style checkpoint."""
    for index, (name, config) in enumerate(CONFIGS.items()):
        dalle, _ = _build(config, seed + index)
        gen = torch.Generator().manual_seed(seed + 100 + index)
        text, codes = _inputs(config, gen)
        text_in = text.clone()
        with torch.no_grad():
            logits = dalle(text_in, codes)
            loss = dalle(text_in, codes, return_loss=True)
            prefix_logits = dalle(text_in, codes[:, :5])  # a partial image, as during sampling
        yield name, {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "vae_config": dict(VAE),
            "state_dict": {k: v.detach().clone() for k, v in dalle.state_dict().items()},
            "inputs": {"text": text, "codes": codes},
            "outputs": {"logits": logits, "loss": loss, "prefix_logits": prefix_logits},
        }

    # a checkpoint exactly as DALLE-pytorch's train_dalle.py saves one (plus the expected logits)
    config = dict(BASE, attn_types=("full", "axial_row"))
    dalle, vae = _build(config, seed + 999)
    opt = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad], lr=3e-4)
    scheduler = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=10, cooldown=10, min_lr=1e-6)
    gen = torch.Generator().manual_seed(seed + 999)
    text, codes = _inputs(config, gen)
    dalle.train()
    dalle(text.clone(), codes, return_loss=True).backward()
    opt.step()
    scheduler.step(1.0)
    dalle.eval()
    with torch.no_grad():
        logits = dalle(text.clone(), codes)
    yield "dalle_ckpt_train_dalle", {
        "hparams": dict(config),
        "vae_params": dict(VAE),
        "epoch": 3,
        "version": "1.6.6",
        "vae_class_name": "DiscreteVAE",
        "weights": dalle.state_dict(),
        "opt_state": opt.state_dict(),
        "scheduler_state": scheduler.state_dict(),
        "expected": {"text": text, "codes": codes, "logits": logits},
    }
