"""Save a tiny dVAE, DALLE and CLIP with a given dalle_core checkout, and their outputs on fixed inputs, so that
later versions can be tested to load them unchanged (tests/test_checkpoints.py).

    PYTHONPATH=/path/to/old/checkout python tests/reference/make_saved_models.py tests/fixtures/saved_0.1.0

Writes OUT/{vae,dalle,clip}/ (save_pretrained) and OUT/expected.pt (inputs and outputs, plain tensors).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import dalle_core
from dalle_core import CLIP, DALLE, DiscreteVAE


def main(out: Path) -> None:
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=16, num_layers=2, num_tokens=32, codebook_dim=16, hidden_dim=8).eval()
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=40, text_seq_len=6, depth=2, heads=2, dim_head=16,
                  attn_types=("full", "axial_row"), shared_ff_ids=(0, 0)).eval()
    clip = CLIP(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=40, text_enc_depth=1, text_seq_len=6,
                text_heads=2, visual_enc_depth=1, visual_heads=2, visual_image_size=16, visual_patch_size=8).eval()
    with torch.no_grad():  # LayerScale starts small: widen it so that every layer shapes the output
        for block in dalle.transformer.layers:
            block.attn_scale.uniform_(0.5, 1.0)
            block.ff_scale.uniform_(0.5, 1.0)
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(1, 40, (2, 6), generator=gen)
    images = torch.rand(2, 3, 16, 16, generator=gen)
    codes = torch.randint(0, 32, (2, 16), generator=gen)
    with torch.no_grad():
        expected = {"text": text, "images": images, "codes": codes, "vae_codes": vae.get_codebook_indices(images),
                    "vae_decoded": vae.decode(codes), "dalle_logits": dalle(text, codes),
                    "clip_scores": clip(text, images)}
    for name, model in (("vae", vae), ("dalle", dalle), ("clip", clip)):
        model.save_pretrained(out / name)
    torch.save(expected, out / "expected.pt")
    print(f"saved with dalle_core {dalle_core.__version__} from {dalle_core.__file__} to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
