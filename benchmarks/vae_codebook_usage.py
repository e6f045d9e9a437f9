"""Codebook usage of a DiscreteVAE trained with a plain Adam loop under several loss settings.

    python benchmarks/vae_codebook_usage.py [--settings reference kl default] [--steps 600] [--image-size 64]

Data: 4000 renders of the built-in shapes (`dalle_core.demo.shapes`). Model: `DiscreteVAE(image_size=...)` with
every other argument at its default (512 codes, 3 layers) except the loss weights of the setting:

- `reference`: DALLE-pytorch's default, no KL and no entropy terms (`kl_div_loss_weight=0, entropy_loss_weight=0`);
- `kl`: KL(q || uniform) with weight 0.01 and no entropy terms (dalle-core's default before the digits benchmark);
- `default`: the constructor's defaults (the entropy terms: `entropy_loss_weight=0.001, diversity_gamma=3`).

Prints, every 100 steps, the loss of the step, the usage and perplexity of the hard codes of 500 training images,
and the mean probability the encoder gives its chosen code (1 = confident, 1/num_tokens = a coin toss). One
thread (about two minutes per setting for 600 steps at 64 pixels on the project's CPU).
"""
from __future__ import annotations

import argparse
import time

import torch

from dalle_core import DiscreteVAE
from dalle_core.demo.shapes import ShapesDataset

SETTINGS = {"reference": dict(kl_div_loss_weight=0.0, entropy_loss_weight=0.0),
            "kl": dict(kl_div_loss_weight=0.01, entropy_loss_weight=0.0),
            "default": dict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = ShapesDataset(4000, image_size=args.image_size, seed=0)
    images = torch.stack([data.sample(i)[1] for i in range(len(data))])
    for name in args.settings:
        torch.manual_seed(0)
        vae = DiscreteVAE(image_size=args.image_size, **SETTINGS[name])
        opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
        start = time.perf_counter()
        for step in range(args.steps):
            loss = vae(images[torch.randint(0, len(images), (args.batch_size,))], return_loss=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == args.steps - 1:
                vae.eval()
                with torch.no_grad():
                    usage = vae.codebook_usage(images[:500])
                    confidence = vae(images[:500], return_logits=True).softmax(1).amax(1).mean()
                vae.train()
                print(f"{name:9s} step {step:5d}: loss {loss.item():.4f}, usage {usage.usage:.1%} of "
                      f"{vae.num_tokens}, perplexity {usage.perplexity:.1f}, confidence {confidence:.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
