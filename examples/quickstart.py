# %% [markdown]
# # dalle-core quickstart: dVAE -> DALLE -> sampling, on toy data, in about a minute on a laptop CPU
# Captions are two ids (a colour and a side); images are 32x32 pictures of a coloured half.
# Run: `python examples/quickstart.py [--out outputs/quickstart]`

# %%
import argparse
from pathlib import Path

import torch
from PIL import Image

from dalle_core import DALLE, DiscreteVAE

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, default=Path("outputs/quickstart"))
parser.add_argument("--steps", type=int, default=300)
args, _ = parser.parse_known_args()  # a notebook kernel adds its own flags (-f kernel.json): ignore them
torch.manual_seed(0)

COLOURS = {1: (1.0, 0.1, 0.1), 2: (0.1, 0.8, 0.1), 3: (0.1, 0.2, 1.0)}  # caption id -> RGB
SIDES = {4: "left", 5: "right", 6: "top", 7: "bottom"}


def picture(colour: int, side: int) -> torch.Tensor:
    img = torch.full((3, 32, 32), 0.9)
    region = {4: (slice(None), slice(0, 16)), 5: (slice(None), slice(16, 32)),
              6: (slice(0, 16), slice(None)), 7: (slice(16, 32), slice(None))}[side]
    for c in range(3):
        img[c][region] = COLOURS[colour][c]
    return img


pairs = [(c, s) for c in COLOURS for s in SIDES]
text = torch.tensor(pairs)  # (12, 2)
images = torch.stack([picture(c, s) for c, s in pairs])

# %% Stage 1: the discrete VAE
vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=64, codebook_dim=32, hidden_dim=32)
opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
for step in range(args.steps):
    loss = vae(images, return_loss=True)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"dVAE loss {loss.item():.4f}; codebook usage {vae.codebook_usage(images).usage:.0%}")

# %% Stage 2: DALLE on the frozen dVAE's codes
codes = vae.get_codebook_indices(images)
dalle = DALLE(dim=64, vae=vae, num_text_tokens=8, text_seq_len=2, depth=2, heads=4, dim_head=16)
opt = torch.optim.Adam(dalle.parameters(), lr=1e-3)
for step in range(args.steps):
    loss = dalle(text, codes, return_loss=True)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"DALLE loss {loss.item():.4f}")

# %% Sampling: cached decoding, with and without classifier-free guidance
prompts = torch.tensor([[1, 4], [2, 5], [3, 6], [1, 7]])
plain = dalle.generate_images(prompts, filter_thres=0.9, use_cache=True)
guided = dalle.generate_images(prompts, filter_thres=0.9, use_cache=True, cond_scale=2.0)
targets = torch.stack([picture(c, s) for c, s in prompts.tolist()])

grid = torch.cat([torch.cat(list(row), dim=2) for row in (targets, plain, guided)], dim=1)  # (3, 96, 128)
args.out.mkdir(parents=True, exist_ok=True)
Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()).resize((512, 384), Image.NEAREST).save(
    args.out / "samples.png")
print(f"wrote {args.out / 'samples.png'} (rows: target, sampled, guided); "
      f"mean abs error to target {(plain - targets).abs().mean():.3f}")
