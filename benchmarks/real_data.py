"""Learning on real data: scikit-learn's handwritten digits, dalle_core beside dalle-pytorch 1.6.6.

The task: 1,797 real 8x8 handwritten digits (they ship inside scikit-learn: no download) upscaled to 32x32 RGB,
captioned from a few templates ("the digit seven", "a handwritten 7", ...). Each library trains a dVAE, a DALLE
and a CLIP through its public DALLE-pytorch-style API with one plain recipe (Adam at a fixed learning rate,
batch 64, `null_cond_prob=0.1`, every other argument at its constructor default); the same recipe, data order and
seeds for both. A judge (a small CNN trained on the real digits' training split, its accuracy on the held-out
split reported) then reads every generated image:

- codebook usage and perplexity of the dVAE's codes over the training images;
- the judge on dVAE reconstructions of the held-out digits (the ceiling of what a DALLE over those codes can draw);
- plain samples right (temperature 1, top-k keeping 10% of the image vocabulary), guided (cond_scale 3, each
  library's own guidance: dalle_core's default extrapolates probabilities, dalle-pytorch's logits; tables made
  before 2026-12-05 guided dalle_core on logits too), and CLIP best of 4 (the plain candidates of each prompt,
  reranked by the run's own CLIP). `real_data_sampling.py` compares sampling settings on runs kept with
  `--keep-models`.

    python benchmarks/real_data.py --seeds 0 1 2 --recipes base slow wide \
        --peer-python .peer-venv/bin/python --out benchmarks/real_data

Each (library, recipe, seed) is one worker process (`--worker`), two at a time, one thread each; the worker
imports only torch and the library, so the reference's runs in its own venv. `results.md` / `results.json` in
`--out` hold the table. Needs `pip install -e ".[bench]"` (scikit-learn) on our side.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["the digit {w}", "a handwritten {w}", "the number {w}", "{w}", "a picture of a {w}",
             "handwritten digit {d}", "the digit {d}", "a {w} written by hand"]
TEXT_SEQ_LEN = 8
IMAGE_SIZE = 32

# Recipes: what a user would plausibly pick. Model sizes and step counts fit a 2-core CPU (a run of
# `base` takes about 8 minutes on one thread of this project's machine); every argument
# not named here is the library's constructor default.
RECIPES: Dict[str, Dict[str, Any]] = {
    "base": dict(vae=dict(num_tokens=256, codebook_dim=64, hidden_dim=32, num_layers=2), vae_lr=1e-3,
                 vae_steps=1000, dalle=dict(dim=64, depth=2, heads=4, dim_head=16), dalle_lr=1e-3,
                 dalle_steps=2000, clip_lr=1e-3, clip_steps=500),
    "slow": dict(vae=dict(num_tokens=256, codebook_dim=64, hidden_dim=32, num_layers=2), vae_lr=3e-4,
                 vae_steps=1500, dalle=dict(dim=64, depth=2, heads=4, dim_head=16), dalle_lr=3e-4,
                 dalle_steps=3000, clip_lr=1e-3, clip_steps=500),
    "wide": dict(vae=dict(num_tokens=512, codebook_dim=128, hidden_dim=64, num_layers=2), vae_lr=1e-3,
                 vae_steps=1000, dalle=dict(dim=96, depth=3, heads=4, dim_head=24), dalle_lr=5e-4,
                 dalle_steps=2000, clip_lr=1e-3, clip_steps=500),
}
CLIP_CONFIG = dict(dim_text=64, dim_image=64, dim_latent=64, text_enc_depth=2, text_heads=4,
                   visual_enc_depth=2, visual_heads=4, visual_image_size=IMAGE_SIZE, visual_patch_size=8)


# --- data and judge (our side only) --------------------------------------------------------------------------


def load_digits_tensors() -> Dict[str, torch.Tensor]:
    """Digits as (N, 3, 32, 32) in [0, 1] (white strokes on black), labels, and a fixed train/test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    test = order[:297]
    train = order[297:]
    return {"train_images": images[train], "train_labels": labels[train], "test_images": images[test],
            "test_labels": labels[test]}


def caption_table() -> tuple:
    """(ids (10, templates, TEXT_SEQ_LEN) with 0 as padding, vocabulary size with padding)."""
    vocab: Dict[str, int] = {}
    rows = []
    for digit, word in enumerate(WORDS):
        per_template = []
        for template in TEMPLATES:
            tokens = template.format(w=word, d=digit).split()
            ids = [vocab.setdefault(t, len(vocab) + 1) for t in tokens]
            per_template.append(ids + [0] * (TEXT_SEQ_LEN - len(ids)))
        rows.append(per_template)
    return torch.tensor(rows, dtype=torch.long), len(vocab) + 1


class Judge(nn.Module):
    """A small CNN digit classifier on 32x32 images."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.mean(dim=1, keepdim=True))


def train_judge(data: Dict[str, torch.Tensor], steps: int = 1500) -> tuple:
    """The judge trained on the training digits (random shifts), and its accuracy on the held-out digits."""
    torch.manual_seed(0)
    judge = Judge()
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    images, labels = data["train_images"], data["train_labels"]
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (64,))
        batch = images[idx]
        shift = torch.randint(-2, 3, (2,)).tolist()
        batch = torch.roll(batch, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(judge(batch), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    judge.eval()
    return judge, accuracy(judge, data["test_images"], data["test_labels"])


@torch.no_grad()
def accuracy(judge: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of `images` the judge reads as `labels`."""
    preds = torch.cat([judge(images[i:i + 500]).argmax(-1) for i in range(0, len(images), 500)])
    return float((preds == labels).float().mean())


# --- one training run, in either library (this part imports only torch and the library) ----------------------


def to_unit(images: torch.Tensor, lib_name: str) -> torch.Tensor:
    """Decoded images in [0, 1]: dalle_core returns them so; dalle-pytorch returns its normalised space."""
    if lib_name == "dalle_pytorch":
        images = images * 0.5 + 0.5  # its default normalization: means 0.5, stds 0.5
    return images.clamp(0, 1)


def worker(args: argparse.Namespace) -> None:
    """Train dVAE -> DALLE -> CLIP with one recipe and seed in one library; save samples and stats."""
    torch.set_num_threads(1)
    lib = importlib.import_module(args.lib)
    recipe = {k: (max(1, round(v * args.steps_scale)) if k.endswith("_steps") else v)
              for k, v in RECIPES[args.recipe].items()}
    for key, value in json.loads(args.override or "{}").items():  # an experiment: {"vae": {...}, "dalle_lr": ...}
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    data = torch.load(args.data, weights_only=True)
    images, labels, captions = data["train_images"], data["train_labels"], data["captions"]
    vocab = int(data["vocab"])
    gen = torch.Generator().manual_seed(args.seed)  # the data order: the same for both libraries
    times: Dict[str, float] = {}
    batch = 64

    def draw() -> tuple:
        idx = torch.randint(0, len(labels), (batch,), generator=gen)
        template = torch.randint(0, captions.shape[1], (batch,), generator=gen)
        return idx, captions[labels[idx], template]

    torch.manual_seed(args.seed)
    vae_class = getattr(lib, recipe.get("vae_class", "DiscreteVAE"))  # e.g. {"vae_class": "VQVAE"} (ours only)
    vae = vae_class(image_size=IMAGE_SIZE, **recipe["vae"])
    opt = torch.optim.Adam(vae.parameters(), lr=recipe["vae_lr"])
    start = time.perf_counter()
    for _ in range(recipe["vae_steps"]):
        idx, _ = draw()
        loss = vae(images[idx], return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    times["vae"] = time.perf_counter() - start
    vae.eval()
    with torch.no_grad():
        codes = torch.cat([vae.get_codebook_indices(images[i:i + 256]) for i in range(0, len(images), 256)])
        recons = to_unit(vae.decode(vae.get_codebook_indices(data["test_images"])), args.lib)
    counts = torch.bincount(codes.flatten(), minlength=recipe["vae"]["num_tokens"]).double()
    probs = counts / counts.sum()
    perplexity = float(torch.exp(-torch.special.xlogy(probs, probs).sum()))

    torch.manual_seed(args.seed)
    dalle = lib.DALLE(vae=vae, num_text_tokens=vocab, text_seq_len=TEXT_SEQ_LEN, **recipe["dalle"])
    opt = torch.optim.Adam([p for p in dalle.parameters() if p.requires_grad], lr=recipe["dalle_lr"])
    dalle.train()
    start = time.perf_counter()
    dalle_losses = []
    for _ in range(recipe["dalle_steps"]):
        idx, text = draw()
        loss = dalle(text, codes[idx], return_loss=True, null_cond_prob=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dalle_losses.append(float(loss))
    times["dalle"] = time.perf_counter() - start
    dalle.eval()

    torch.manual_seed(args.seed)
    clip = lib.CLIP(num_text_tokens=vocab, text_seq_len=TEXT_SEQ_LEN, **CLIP_CONFIG)
    opt = torch.optim.Adam(clip.parameters(), lr=recipe["clip_lr"])
    start = time.perf_counter()
    for _ in range(recipe["clip_steps"]):
        idx, text = draw()
        loss = clip(text, images[idx], text_mask=text != 0, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    times["clip"] = time.perf_counter() - start
    clip.eval()

    # prompts: args.prompts per run, digits in turn, templates at random
    pgen = torch.Generator().manual_seed(10_000 + args.seed)
    prompt_labels = torch.arange(args.prompts) % 10
    prompt_text = captions[prompt_labels, torch.randint(0, captions.shape[1], (args.prompts,), generator=pgen)]
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    plain, guided, best = [], [], []
    chunk = 50
    with torch.no_grad():
        for i in range(0, args.prompts, chunk):
            text = prompt_text[i:i + chunk]
            cands = to_unit(dalle.generate_images(text.repeat_interleave(4, 0), filter_thres=0.9, use_cache=True),
                            args.lib)  # (4 * b, 3, H, W), four candidates per prompt in a row
            scores = clip(text.repeat_interleave(4, 0), cands, text_mask=text.repeat_interleave(4, 0) != 0)
            choice = scores.view(-1, 4).argmax(-1)
            plain.append(cands)
            best.append(cands.view(-1, 4, *cands.shape[1:])[torch.arange(len(text)), choice])
            guided.append(to_unit(dalle.generate_images(text, filter_thres=0.9, cond_scale=3.0, use_cache=True),
                                  args.lib))
    times["sampling"] = time.perf_counter() - start

    def u8(t: torch.Tensor) -> torch.Tensor:
        return (torch.cat(t) if isinstance(t, list) else t).mul(255).round().to(torch.uint8)

    torch.save({"plain": u8(plain), "plain_labels": prompt_labels.repeat_interleave(4, 0), "guided": u8(guided),
                "best": u8(best), "prompt_labels": prompt_labels, "recons": u8(recons),
                "usage": float((counts > 0).float().mean()), "perplexity": perplexity, "times": times,
                "dalle_loss_last100": sum(dalle_losses[-100:]) / 100}, args.out)
    if args.keep_models:  # for sampling experiments on the trained models (`real_data_sampling.py`)
        torch.save({"recipe": recipe, "vae": vae.state_dict(), "dalle": dalle.state_dict(),
                    "clip": clip.state_dict()}, models_path(Path(args.out)))


# --- the driver ------------------------------------------------------------------------------------------------


def models_path(run_file: Path) -> Path:
    """Where `--keep-models` saves a run's trained weights: beside its samples."""
    return run_file.with_name(run_file.stem + "-models.pt")


def run_one(python: str, lib: str, recipe: str, seed: int, data_path: Path, out: Path, prompts: int,
            steps_scale: float, override: str = "", keep_models: bool = False) -> Path:
    """One worker process; returns its output file (reused when it exists)."""
    target = out / f"{lib}-{recipe}-seed{seed}.pt"
    if target.exists():
        return target
    cmd = [python, os.path.abspath(__file__), "--worker", "--lib", lib, "--recipe", recipe, "--seed", str(seed),
           "--data", str(data_path), "--prompts", str(prompts), "--run-out", str(target),
           "--steps-scale", str(steps_scale), "--override", override] + (["--keep-models"] * keep_models)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} {recipe} seed {seed} failed:\n{proc.stderr[-3000:]}")
    print(f"  {lib:13s} {recipe:6s} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return target


def score(judge: nn.Module, result: Dict[str, Any], test_labels: torch.Tensor) -> Dict[str, float]:
    """The run's metrics from its saved images."""
    f = lambda key: result[key].float() / 255  # noqa: E731
    return {"usage": result["usage"], "perplexity": result["perplexity"],
            "recon": accuracy(judge, f("recons"), test_labels),
            "plain": accuracy(judge, f("plain"), result["plain_labels"]),
            "guided": accuracy(judge, f("guided"), result["prompt_labels"]),
            "clip4": accuracy(judge, f("best"), result["prompt_labels"]),
            "dalle_loss": result["dalle_loss_last100"], "seconds": sum(result["times"].values())}


def table(rows: List[Dict[str, Any]]) -> str:
    """Markdown: per recipe and library, the mean and the per-seed values of each metric."""
    lines = ["| recipe | library | codebook in use | perplexity | judge on recons | plain | guided (3) | "
             "CLIP best of 4 | DALLE loss (last 100) | seconds |", "|---|---|" + "---:|" * 8]
    keys = ["usage", "perplexity", "recon", "plain", "guided", "clip4", "dalle_loss", "seconds"]
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["recipe"], row["lib"]), []).append(row)
    for (recipe, lib), runs in groups.items():
        cells = []
        for key in keys:
            values = [r[key] for r in runs]
            mean = sum(values) / len(values)
            if key in ("usage", "recon", "plain", "guided", "clip4"):
                cells.append(f"{mean:.1%} ({', '.join(f'{v:.0%}' for v in values)})")
            elif key == "seconds":
                cells.append(f"{mean:.0f}")
            else:
                cells.append(f"{mean:.2f} ({', '.join(f'{v:.2f}' for v in values)})")
        lines.append(f"| {recipe} | {lib} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--libs", nargs="+", default=["dalle_core", "dalle_pytorch"],
                        choices=["dalle_core", "dalle_pytorch"])
    parser.add_argument("--prompts", type=int, default=500, help="prompts per run (x4 plain samples)")
    parser.add_argument("--peer-python", default=os.environ.get("DALLE_CORE_PEER_PYTHON", ".peer-venv/bin/python"))
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every recipe's step counts")
    parser.add_argument("--override", default="", help="JSON merged into each recipe, e.g. "
                        "'{\"vae\": {\"straight_through\": true}}' or '{\"vae_class\": \"VQVAE\"}' "
                        "(an experiment; use another --out)")
    parser.add_argument("--judge", type=Path, help="a judge.pt saved by an earlier run (default: --out/judge.pt)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes at once (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/real_data"))
    parser.add_argument("--keep-models", action="store_true",
                        help="also save each run's trained weights (`RUN-models.pt`, state dicts and the recipe)")
    # worker mode
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run-out", dest="out_file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.out = args.out_file
        worker(args)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    data = load_digits_tensors()
    captions, vocab = caption_table()
    data_path = args.out / "digits.pt"
    torch.save({**data, "captions": captions, "vocab": torch.tensor(vocab)}, data_path)
    judge_path = args.judge or args.out / "judge.pt"
    if Path(judge_path).exists():  # the judge is deterministic: reuse one trained for another --out
        judge = Judge()
        judge.load_state_dict(torch.load(judge_path, weights_only=True))
        judge.eval()
        judge_acc = accuracy(judge, data["test_images"], data["test_labels"])
    else:
        judge, judge_acc = train_judge(data)
        torch.save(judge.state_dict(), judge_path)
    print(f"judge: {judge_acc:.1%} on {len(data['test_labels'])} held-out real digits", flush=True)
    pythons = {"dalle_core": sys.executable, "dalle_pytorch": args.peer_python}
    jobs = [(lib, recipe, seed) for recipe in args.recipes for seed in args.seeds for lib in args.libs]
    with ThreadPoolExecutor(args.jobs) as pool:
        files = list(pool.map(lambda j: run_one(pythons[j[0]], *j, data_path, args.out, args.prompts,
                                                      args.steps_scale, args.override, args.keep_models), jobs))
    rows = []
    for (lib, recipe, seed), path in zip(jobs, files):
        result = torch.load(path, weights_only=True)
        rows.append({"lib": lib, "recipe": recipe, "seed": seed, **score(judge, result, data["test_labels"])})
    md = (f"Judge: {judge_acc:.1%} on {len(data['test_labels'])} held-out real digits. Load average at the end: "
          f"{os.getloadavg()[0]:.2f}. Means over seeds, then each seed in brackets.\n\n" + table(rows) + "\n")
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(json.dumps({"judge_accuracy": judge_acc, "runs": rows,
                                                       "override": args.override,
                                                       "recipes": RECIPES, "clip": CLIP_CONFIG}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
