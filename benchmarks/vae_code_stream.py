"""What a dVAE's code stream asks of the DALLE on scikit-learn's digits: a quick probe of loss settings.

    python benchmarks/vae_code_stream.py --steps 1000 --settings '{}' '{"entropy_loss_weight": 0}' \
        '{"kl_div_loss_weight": 0.01, "entropy_loss_weight": 0}'

Each setting (JSON keywords for `DiscreteVAE`, on top of `benchmarks/real_data.py`'s `base` dVAE) trains on the
digits with Adam (lr 1e-3, batch 64, one thread), then reports over the training digits' hard codes: codes in use
and perplexity; confidence (mean probability of the chosen code); on background patches (4x4 pixels, all black),
how many distinct codes they get and the top one's share; the reconstruction MSE from hard codes; H(code |
position) and H(code | digit, position) in nats (plug-in estimates: what the DALLE must model per token without
and with the caption; lower is easier) and their difference (what the caption tells per token). Needs
`pip install -e ".[bench]"` (scikit-learn). One setting at 1000 steps takes about two and a half minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_data import IMAGE_SIZE, RECIPES, load_digits_tensors  # noqa: E402

from dalle_core import DiscreteVAE  # noqa: E402


def entropy(counts: torch.Tensor) -> float:
    p = counts.double() / counts.sum()
    return float(-torch.special.xlogy(p, p).sum())


def probe(overrides: dict, steps: int, seed: int, images: torch.Tensor, labels: torch.Tensor) -> dict:
    torch.manual_seed(seed)
    vae = DiscreteVAE(image_size=IMAGE_SIZE, **{**RECIPES["base"]["vae"], **overrides})
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = vae(images[torch.randint(0, len(images), (64,), generator=gen)], return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        logits = torch.cat([vae(images[i:i + 500], return_logits=True) for i in range(0, len(images), 500)])
        codes = logits.argmax(1)  # (N, h, w)
        recons = torch.cat([vae.decode(codes[i:i + 500].flatten(1)) for i in range(0, len(images), 500)])
    side = IMAGE_SIZE // codes.shape[-1]
    background = images[:, 0].unfold(1, side, side).unfold(2, side, side).amax((-1, -2)) < 0.02  # (N, h, w)
    n = vae.num_tokens
    flat = codes.flatten(1)
    h_pos = sum(entropy(torch.bincount(flat[:, p], minlength=n)) for p in range(flat.shape[1])) / flat.shape[1]
    h_digit_pos = sum(entropy(torch.bincount(flat[labels == d, p], minlength=n)) * float((labels == d).float().mean())
                      for d in range(10) for p in range(flat.shape[1])) / flat.shape[1]
    counts = torch.bincount(codes.flatten(), minlength=n)
    return {"setting": overrides, "steps": steps, "seed": seed, "codes_in_use": int((counts > 0).sum()),
            "perplexity": round(float(torch.exp(torch.tensor(entropy(counts)))), 1),
            "confidence": round(float(logits.softmax(1).amax(1).mean()), 3),
            "background_codes": int(codes[background].unique().numel()),
            "background_top_share": round(float(torch.bincount(codes[background]).max() / background.sum()), 3),
            "mse": round(float(F.mse_loss(recons, images)), 5), "H_code_given_position": round(h_pos, 3),
            "H_code_given_digit_position": round(h_digit_pos, 3), "caption_information": round(h_pos - h_digit_pos, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["{}"], help="JSON keywords for DiscreteVAE, one per setting")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_digits_tensors()
    for setting in args.settings:
        print(json.dumps(probe(json.loads(setting), args.steps, args.seed, data["train_images"],
                               data["train_labels"])), flush=True)


if __name__ == "__main__":
    main()
