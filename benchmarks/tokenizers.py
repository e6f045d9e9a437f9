"""Every image tokenizer kind on the shapes data: the tokenizer alone, then the DALLE the demo trains over it.

    python benchmarks/tokenizers.py demo  [--kinds dvae vq fsq lfq vqgan] [--steps-scale 1] [--threads N]
                                          [--out outputs/tokenizers]
    python benchmarks/tokenizers.py plain [--kinds dvae vq fsq lfq vqgan] [--steps 1500] [--seeds 0]
                                          [--dvae-split-every K]

`demo` runs the whole demo (`dalle_core.demo.runner.run`, the same as `dalle-core demo --tokenizer KIND`) once per
kind: the same 20,000 training renders at 32x32, an 8x8 grid of 128 codes, the same step counts; then it reads each
run's summary.json: the tokenizer's codebook usage and perplexity over every training image, its hard-code
reconstructions' checker pass rate and MSE (2,000 images), its training time, and the DALLE's checker accuracy on
seen and held-out prompts, plain and guided. Results go to OUT/KIND/summary.json and a markdown table on stdout.

`plain` checks the constructors' defaults: each kind built with its constructor's defaults (only image_size=32
and num_layers=2 given: an 8x8 grid; the codebook is the default 512 codes) trained by a plain Adam loop (lr 1e-3,
batch 64, no schedule) on 4,000 renders, then the codebook usage and perplexity of the hard codes of those 4,000
images and their reconstruction MSE. One thread per run. `--dvae-split-every K` is an experiment on the dVAE (not
in the library): every K steps, until 80% of training, each code that was never the argmax in those K steps takes a
noisy copy of a busy code (`split_dead_codes`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

KINDS = ("dvae", "vq", "fsq", "lfq", "vqgan")
NAMES = {"dvae": "dVAE (Gumbel)", "vq": "VQ-VAE (EMA, k-means, restarts)", "fsq": "FSQ-VAE", "lfq": "LFQ-VAE",
         "vqgan": "VQGAN (taming, hinge GAN)"}


def demo(args: argparse.Namespace) -> None:
    from dalle_core.demo.runner import DemoConfig, run

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for kind in args.kinds:
        out = args.out / kind
        if (out / "summary.json").is_file() and not args.rerun:
            summary = json.loads((out / "summary.json").read_text())
        else:
            cfg = DemoConfig(tokenizer=kind, seed=args.seed)
            for name in ("vae_steps", "dalle_steps", "clip_steps"):
                setattr(cfg, name, max(1, round(getattr(cfg, name) * args.steps_scale)))
            summary = run(cfg, out)
        rows.append((kind, summary))
        print(f"{kind}: done ({summary['seconds']['total']:.0f} s)", flush=True)
    print(table(rows))


def table(rows: list) -> str:
    head = ("| tokenizer | codebook used | perplexity | recon. checker | recon. MSE | tokenizer time | seen plain "
            "| seen guided | held-out plain | held-out guided | demo time |")
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for kind, s in rows:
        v, r = s["vae"], s["results"]
        cell = lambda split, setting: f"{r[split][setting]['colour_and_shape']:.1%}"  # noqa: E731
        lines.append(f"| {NAMES[kind]} | {v['codebook_usage']:.0%} of {v['num_tokens']} | {v['perplexity']:.0f} | "
                     f"{v['reconstructions_checker']['colour_and_shape']:.1%} | "
                     f"{v.get('reconstruction_mse', float('nan')):.4f} | {s['seconds']['vae']:.0f} s | "
                     f"{cell('seen', 'plain')} | {cell('seen', 'guided')} | {cell('heldout', 'plain')} | "
                     f"{cell('heldout', 'guided')} | {s['seconds']['total'] / 60:.1f} min |")
    return "\n".join(lines)


def build_default(kind: str, image_size: int) -> torch.nn.Module:
    """The kind's model with its constructor's defaults, at `image_size` with an 8x8 code grid."""
    from dalle_core import DiscreteVAE, VQVAE

    layers = int(round(torch.log2(torch.tensor(image_size / 8)).item()))
    if kind == "dvae":
        return DiscreteVAE(image_size=image_size, num_layers=layers)
    if kind == "vqgan":
        from dalle_core.models.vqgan import VQGanVAE, vqgan_architecture

        return VQGanVAE(architecture=vqgan_architecture(image_size=image_size, num_layers=layers),
                        image_size=image_size, trainable=True)
    return VQVAE(image_size=image_size, num_layers=layers, quantizer=kind)


@torch.no_grad()
def split_dead_codes(model: torch.nn.Module, opt: torch.optim.Optimizer, counts: torch.Tensor) -> int:
    """Give each dVAE code with no count a copy (plus 1% noise) of a code drawn by its count: the encoder's logit
    row and bias and the codebook row; the copies' Adam moments start at zero. Returns how many were split."""
    dead = (counts == 0).nonzero().flatten()
    if not len(dead):
        return 0
    source = torch.multinomial(counts.float(), len(dead), replacement=True)
    last = model.encoder[-1]  # the 1x1 convolution to the code logits
    for param in (last.weight, last.bias, model.codebook.weight):
        param[dead] = param[source] + 0.01 * param[source].std() * torch.randn_like(param[source])
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in opt.state.get(param, {}):
                opt.state[param][moment][dead] = 0
    return len(dead)


def plain(args: argparse.Namespace) -> None:
    from dalle_core.demo.runner import render_set
    from dalle_core.models.vae import codebook_usage

    torch.set_num_threads(1)
    _, images = render_set(4000, "train", 0, args.image_size)
    split = args.dvae_split_every
    print("| tokenizer | seed | steps | codebook used | perplexity | MSE | time |\n|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.kinds:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_default(kind, args.image_size)
            loss_module = None
            if kind == "vqgan":
                from dalle_core.models.vqgan import VQGANLoss

                loss_module = VQGANLoss()
            params = list(model.parameters()) + (list(loss_module.parameters()) if loss_module else [])
            opt = torch.optim.Adam(params, lr=args.lr)
            start = time.perf_counter()
            counts = torch.zeros(model.num_tokens)
            for step in range(args.steps):
                batch = images[torch.randint(0, len(images), (args.batch_size,))]
                loss = loss_module(model, batch, step)[0] if loss_module else model(batch, return_loss=True)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if split and kind == "dvae":
                    with torch.no_grad():
                        counts += torch.bincount(model.get_codebook_indices(batch).flatten(), minlength=len(counts))
                    if (step + 1) % split == 0:
                        if step + 1 < 0.8 * args.steps:
                            split_dead_codes(model, opt, counts)
                        counts.zero_()
            seconds = time.perf_counter() - start
            model.eval()
            with torch.no_grad():
                codes = torch.cat([model.get_codebook_indices(c) for c in images.split(500)])
                recon = torch.cat([model.decode(c) for c in codes[:1000].split(500)])
            usage = codebook_usage(codes, model.num_tokens)
            mse = float(((recon - images[:1000]) ** 2).mean())
            name = NAMES[kind] + (f", dead codes split every {split} steps" if split and kind == "dvae" else "")
            print(f"| {name} | {seed} | {args.steps} | {usage.usage:.1%} of {model.num_tokens} | "
                  f"{usage.perplexity:.1f} | {mse:.4f} | {seconds:.0f} s |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("demo", help="the demo over each kind")
    d.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    d.add_argument("--steps-scale", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", type=Path, default=Path("outputs/tokenizers"))
    d.add_argument("--rerun", action="store_true", help="run kinds whose summary.json exists again")
    d.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    q = sub.add_parser("plain", help="constructor defaults and a plain Adam loop")
    q.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    q.add_argument("--steps", type=int, default=1500)
    q.add_argument("--seeds", type=int, nargs="+", default=[0])
    q.add_argument("--image-size", type=int, default=32)
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--dvae-split-every", type=int, default=0, metavar="K",
                   help="an experiment: split the dVAE's dead codes every K steps (0: never)")
    args = p.parse_args()
    demo(args) if args.mode == "demo" else plain(args)


if __name__ == "__main__":
    main()
