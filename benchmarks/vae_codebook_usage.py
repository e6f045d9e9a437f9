"""Codebook usage of a DiscreteVAE trained with its defaults and a plain Adam loop, for several KL weights.

    python benchmarks/vae_codebook_usage.py [--kl 0 0.01 0.1] [--steps 600] [--image-size 64]

Data: 4000 renders of the built-in shapes (`dalle_core.shapes`). Model: `DiscreteVAE(image_size=...)` with
every other argument at its default (512 codes, 3 layers) except the KL weight. Prints, every 100 steps, the
loss of the step and the usage and perplexity of the hard codes of 500 training images. One thread (about
two minutes per weight for 600 steps at 64 pixels on the project's CPU). The README's numbers come from
`--kl 0 0.01 --steps 600` and `--kl 0.01 --steps 1500`.
"""
from __future__ import annotations

import argparse
import time

import torch

from dalle_core import DiscreteVAE
from dalle_core.shapes import ShapesDataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kl", type=float, nargs="+", default=[0.0, 0.01, 0.1], help="KL weights to compare")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = ShapesDataset(4000, image_size=args.image_size, seed=0)
    images = torch.stack([data.sample(i)[1] for i in range(len(data))])
    for weight in args.kl:
        torch.manual_seed(0)
        vae = DiscreteVAE(image_size=args.image_size, kl_div_loss_weight=weight)
        opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
        start = time.perf_counter()
        for step in range(args.steps):
            loss = vae(images[torch.randint(0, len(images), (args.batch_size,))], return_loss=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 100 == 0 or step == args.steps - 1:
                usage = vae.eval().codebook_usage(images[:500])
                vae.train()
                print(f"kl {weight:g} step {step:5d}: loss {loss.item():.4f}, usage {usage.usage:.1%} of "
                      f"{vae.num_tokens}, perplexity {usage.perplexity:.1f} ({time.perf_counter() - start:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
