"""Codebook usage of a VQGAN (`vqgan_architecture()` defaults: 32x32 images, an 8x8 grid of 128 codes) trained with
`VQGANLoss` and a plain Adam loop on the demo's shapes.

    python benchmarks/vqgan_codebook_usage.py [--steps 300] [--batch-size 64] [--lr 1e-3] [--threads 1]
                                              [--loss '{"disc_start": 100}'] [--no-restarts]

Data: 4096 renders of the built-in shapes (seed 0) to train on, 1024 others (seed 1) to measure. Prints, every 100
steps, the loss terms of the step and, on the 1024 held-out images, the codebook usage (fraction of the codes seen
at least once), the perplexity of the code histogram and the reconstruction MSE (pixels in [0, 1]); the time
counts training steps only. `--no-restarts` sets the quantiser's dead_code_threshold to 0 (a plain taming
VectorQuantizer2).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from dalle_core.demo.shapes import ShapesDataset
from dalle_core.models.vqgan import VQGanVAE, VQGANLoss, vqgan_architecture


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--loss", type=json.loads, default={}, help="VQGANLoss keywords, as JSON")
    p.add_argument("--no-restarts", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set, test_set = ShapesDataset(4096, image_size=32, seed=0), ShapesDataset(1024, image_size=32, seed=1)
    train = torch.stack([train_set.sample(i)[1] for i in range(len(train_set))])
    test = torch.stack([test_set.sample(i)[1] for i in range(len(test_set))])
    vae = VQGanVAE(architecture=vqgan_architecture(), image_size=32, trainable=True)
    if args.no_restarts:
        vae.model.quantize.dead_code_threshold = 0.0
    loss_fn = VQGANLoss(**args.loss)
    opt = torch.optim.Adam([*vae.parameters(), *loss_fn.parameters()], lr=args.lr)
    batches = torch.Generator().manual_seed(args.seed)
    seconds = 0.0
    for step in range(args.steps):
        start = time.perf_counter()
        loss, metrics = loss_fn(vae, train[torch.randint(0, len(train), (args.batch_size,), generator=batches)], step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - start
        if step % 100 == 0 or step == args.steps - 1:
            vae.eval()
            with torch.no_grad():
                usage = vae.codebook_usage(test)
                mse = torch.cat([(vae(b) - b).pow(2).flatten(1).mean(1) for b in test.split(256)]).mean()
            vae.train()
            print(f"step {step:4d}: loss {metrics['loss']:.4f} (rec {metrics['rec_loss']:.4f}, codebook "
                  f"{metrics['codebook_loss']:.4f}, d_weight {metrics['d_weight']:.3f}), usage {usage.usage:.1%} of "
                  f"{vae.num_tokens}, perplexity {usage.perplexity:.1f}, MSE {float(mse):.4f} ({seconds:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
