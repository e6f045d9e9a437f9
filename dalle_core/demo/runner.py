"""The demo: dVAE -> DALLE -> CLIP trained on the built-in shapes data on a CPU in about ten minutes, then scored.

    dalle-core demo [--out outputs/demo] [--quick] [--steps-scale 2] [--image-size 64]   (or python -m dalle_core.demo)

It renders captioned shapes (`dalle_core.demo.shapes`), trains the three models with the library's trainers
(`dalle_core.training.train_vae`, `train_dalle`, `train_clip`, on the rendered pictures held in memory),
generates images for captions of seen colour-shape pairs and of held-out pairs never shown in training (plain
sampling, classifier-free guidance, CLIP best-of-4, both), asks the shapes checker whether each image shows its
caption, and writes to --out: reconstructions.png, generations_seen.png, generations_heldout.png, losses.png,
losses.json, summary.json (also printed), the three training runs in runs/vae, runs/dalle and runs/clip
(train_config.json, metrics.jsonl, the final checkpoint and model/; a rerun into the same --out replaces them)
and the trained models in models/ (for `dalle-core generate`).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torch.utils.data import TensorDataset

from . import shapes
from ..models.clip import CLIP
from ..data.images import to_pil
from ..models.dalle import DALLE
from ..models.vae import codebook_usage
from ..pipeline import DALLEPipeline
from ..tokenizers import save_tokenizer
from ..training import (CLIPTrainConfig, DALLETrainConfig, VAETrainConfig, train_clip, train_dalle,
                        train_vae)
from ..training.common import RUN_CONFIG_NAME
from ..training.outputs import plot_losses, read_metrics

__all__ = ["DemoConfig", "main", "run"]

SETTINGS = ("plain", "guided", "clip_best_of_4", "guided_clip_best_of_4")
TARGETS = {  # quality the default demo aims for, as fractions of images the checker accepts
    "seen/plain/colour_and_shape": 0.90, "seen/guided/colour_and_shape": 0.97,
    "seen/clip_best_of_4/colour_and_shape": 0.97, "heldout/plain/colour_and_shape": 0.70,
    "heldout/guided/colour_and_shape": 0.70, "seen/guided_clip_best_of_4/colour_and_shape": 0.97,
    "heldout/guided_clip_best_of_4/colour_and_shape": 0.70, "vae/codebook_usage": 0.50,
}
TOKENIZER_NAMES = {"dvae": "dVAE", "vq": "VQ-VAE", "fsq": "FSQ-VAE", "lfq": "LFQ-VAE", "vqgan": "VQGAN"}
COLUMNS = {"plain": "plain", "guided": "cfg {scale:g}", "clip_best_of_4": "CLIP 1/{n}",
           "guided_clip_best_of_4": "cfg+CLIP"}  # grid headers


@dataclass
class DemoConfig:
    """Sizes, step counts and learning rates of one demo run."""

    image_size: int = 32
    train_images: int = 20_000
    eval_prompts: int = 200  # generations per (prompt set, setting)
    vae_steps: int = 1500
    dalle_steps: int = 2000
    clip_steps: int = 1200  # half as many rerank worse (measured: docs/demo_measurements.md)
    batch_size: int = 64  # dVAE and CLIP (CLIP takes twice this: more negatives per step)
    dalle_batch_size: int = 32
    dalle_lr: float = 5e-3  # the best of 1e-3, 3e-3 and 5e-3 here (docs/demo_measurements.md)
    cond_scale: float = 3.0  # on probabilities: ties logits at 1.5, where 3 overshoots (docs/demo_measurements.md)
    filter_thres: float = 0.9  # top-k sampling keeps the 10% most likely codes
    temperature: float = 0.7  # beats 1.0, most on held-out pairs (docs/demo_measurements.md)
    candidates: int = 4  # CLIP reranking: best of this many
    # the dVAE's loss: KL(q || uniform) with weight 0.01 and no entropy terms, not DiscreteVAE's entropy defaults,
    # which use far fewer codes on this data (docs/demo_measurements.md)
    vae_kl_weight: float = 0.01
    vae_entropy_weight: float = 0.0
    tokenizer: str = "dvae"  # the image tokenizer's kind: dvae, vq, fsq, lfq or vqgan (train-vae --kind)
    seed: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoConfig":
        """The default run, or the quick smoke run, scaled by --steps-scale and resized by --image-size."""
        cfg = cls(image_size=args.image_size, seed=args.seed, tokenizer=getattr(args, "tokenizer", "dvae"))
        if args.quick:
            cfg.train_images, cfg.eval_prompts, cfg.batch_size, cfg.dalle_batch_size = 512, 8, 16, 16
            cfg.vae_steps, cfg.dalle_steps, cfg.clip_steps = 40, 40, 20
        for name in ("vae_steps", "dalle_steps", "clip_steps"):
            setattr(cfg, name, max(1, round(getattr(cfg, name) * args.steps_scale)))
        return cfg


# --- data ----------------------------------------------------------------------------------------------------------

def render_set(n: int, split: str, seed: int, image_size: int) -> Tuple[List[str], Tensor]:
    """n captions and their images (n, 3, S, S) from the shapes generator."""
    ds = shapes.ShapesDataset(n, image_size=image_size, split=split, seed=seed)
    pairs = [ds.sample(i) for i in range(n)]
    return [c for c, _ in pairs], torch.stack([im for _, im in pairs])


# --- training ------------------------------------------------------------------------------------------------------

def _optim(steps: int, batch_size: int, lr: float, weight_decay: float) -> Dict[str, Any]:
    """The trainer options every demo model shares: AdamW (weight decay on matrices and embeddings only), a linear
    warm-up over the first 5% of the steps, then a cosine decay to a tenth (steadier for the transformers at
    these short schedules); no gradient clipping, no EMA, no sample grids; the loss logged at every step (for
    losses.png) and one checkpoint, at the end; on the CPU, where the demo evaluates the models."""
    return dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=steps // 20,
                min_lr_ratio=0.1, max_grad_norm=0.0, ema_decay=0.0, sample_every=0, log_every=1, save_every=steps,
                keep_checkpoints=1, cpu=True)


def vae_config(cfg: DemoConfig, out: Path) -> VAETrainConfig:
    """The demo's image tokenizer and its training: an 8x8 code grid of 128 codes at every image size (4x4 pixels a
    code at 32, 8x8 at 64), hidden_dim 32 (the CPU budget), no resnet blocks.

    dvae: 2 layers at 32 (4x4 pixels a code, enough to draw small shapes), 128 codes (the shapes have few distinct
    patches), DiscreteVAE's fixed temperature 0.9 and a constant KL weight (no annealing, no warm-up); why these
    sizes, measured: docs/demo_measurements.md. vq, fsq, lfq: `VQVAE` with the same grid and its own defaults.
    vqgan: taming's architecture at these sizes (see `dalle_core.models.vqgan`).
    """
    shared = dict(image_size=cfg.image_size, num_layers=2 + int(math.log2(cfg.image_size // 32)), num_tokens=128,
                  codebook_dim=64, hidden_dim=32, num_resnet_blocks=0, kind=cfg.tokenizer,
                  **_optim(cfg.vae_steps, cfg.batch_size, lr=2e-3, weight_decay=0.0), out=str(out), seed=cfg.seed)
    if cfg.tokenizer == "vqgan":
        # a VQGAN step costs about five of the others' (GroupNorm, attention, the discriminator): a fifth of the
        # steps keeps the time budget comparable; the GAN from half-way, with taming's Adam settings (lr 2e-4,
        # betas (0.5, 0.9)), as it is unstable at the others' lr (docs/measurements.md)
        steps = max(1, cfg.vae_steps // 5)
        shared.update(num_resnet_blocks=1, **_optim(steps, cfg.batch_size, lr=2e-4, weight_decay=0.0))
        return VAETrainConfig(**shared, betas=(0.5, 0.9), disc_start=steps // 2)
    if cfg.tokenizer != "dvae":
        return VAETrainConfig(**shared)
    return VAETrainConfig(kl_div_loss_weight=cfg.vae_kl_weight, entropy_loss_weight=cfg.vae_entropy_weight,
                          temperature=0.9, temp_end=0.9, temp_anneal_steps=0, kl_warmup_steps=0, **shared)


def dalle_config(cfg: DemoConfig, out: Path, vae: Path, tokenizer: Path, text_len: int) -> DALLETrainConfig:
    """The demo's DALLE over the (frozen) trained dVAE in `vae`: small enough for a CPU."""
    return DALLETrainConfig(dim=128, depth=4, heads=4, dim_head=32, text_seq_len=text_len, vae=str(vae),
                            tokenizer=str(tokenizer), null_cond_prob=0.1,
                            **_optim(cfg.dalle_steps, cfg.dalle_batch_size, lr=cfg.dalle_lr, weight_decay=0.01),
                            out=str(out), seed=cfg.seed)


def clip_config(cfg: DemoConfig, out: Path, tokenizer: Path, text_len: int) -> CLIPTrainConfig:
    """The demo's CLIP reranker: 4x4 patches of the image (8x8 pixels at 32), two layers per tower; batches twice
    the dVAE's (more negatives per step)."""
    return CLIPTrainConfig(dim_text=128, dim_image=128, dim_latent=128, text_enc_depth=2, text_seq_len=text_len,
                           text_heads=4, visual_enc_depth=2, visual_heads=4, visual_image_size=cfg.image_size,
                           visual_patch_size=cfg.image_size // 4, tokenizer=str(tokenizer),
                           **_optim(cfg.clip_steps, cfg.batch_size * 2, lr=1e-3, weight_decay=0.01),
                           out=str(out), seed=cfg.seed)


def fresh_run_dir(directory: Path, kind: str) -> Path:
    """`directory`, empty or absent, for a new `kind` run: an earlier demo run of that kind there is removed;
    anything else raises ValueError (the demo deletes only its own runs)."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ValueError(f"{directory} is not a plain directory (a file or a symbolic link): choose another --out")
    if not directory.is_dir() or not any(directory.iterdir()):
        return directory
    try:
        ours = json.loads((directory / RUN_CONFIG_NAME).read_text(encoding="utf-8"))["trainer"] == kind
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise ValueError(f"{directory} holds files that are not a demo {kind} run: choose another --out or "
                         "remove it")
    shutil.rmtree(directory)
    return directory


def loss_curve(run: Path, steps: int) -> List[float]:
    """The loss of every update of the run in `run`, read back from its metrics.jsonl (logged at every step)."""
    losses = [row["loss"] for row in read_metrics(run) if "loss" in row]
    if len(losses) != steps:
        raise ValueError(f"{run}: expected the loss of each of {steps} updates in its metrics, found {len(losses)}")
    return losses


# --- evaluation ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(dalle: DALLE, clip: Optional[CLIP], text: Tensor, setting: str, cfg: DemoConfig, gen: torch.Generator,
             batch: int = 100) -> Tensor:
    """One image per caption in `text` (B, text_len) under one of SETTINGS (`clip` is used only by the CLIP ones)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    scale = cfg.cond_scale if setting.startswith("guided") else 1.0
    n = cfg.candidates if setting.endswith("clip_best_of_4") else 1
    out = []
    for chunk in text.split(batch):
        many = dalle.generate_images(chunk.repeat_interleave(n, 0), use_cache=True, cond_scale=scale,
                                     filter_thres=cfg.filter_thres, temperature=cfg.temperature, generator=gen)
        if n == 1:
            out.append(many)
        else:
            many = many.view(len(chunk), n, *many.shape[1:])  # (B, n, C, H, W)
            out.append(clip.rerank(chunk, many, text_mask=chunk != 0).images[:, 0])
    return torch.cat(out)


@torch.no_grad()
def diversity(dalle: DALLE, text: Tensor, cfg: DemoConfig, gen: torch.Generator, samples: int = 16) -> float:
    """Mean fraction of distinct images among `samples` plain samples of each caption in `text` (B, text_len).

    1.0: every sample differs; 1 / samples: one image per caption (greedy decoding). A guard against sampling
    settings that score well only by collapsing to the most likely image.
    """
    images = generate(dalle, None, text.repeat_interleave(samples, 0), "plain", cfg, gen)
    pixels = images.mul(255).round().to(torch.uint8).reshape(len(text), samples, -1)
    return sum(len({row.numpy().tobytes() for row in per}) for per in pixels) / (len(text) * samples)


def score(captions: Sequence[str], images: Tensor) -> Dict[str, float]:
    """Fraction of images the checker accepts: colour and shape, everything named, and each attribute."""
    results = [shapes.check(c, im) for c, im in zip(captions, images)]
    out = {"colour_and_shape": sum(r.colour_and_shape for r in results) / len(results),
           "all_attributes": sum(r.ok for r in results) / len(results), "n": len(results)}
    for attr in ("colour", "shape", "size", "position"):
        named = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
        out[attr] = sum(named) / len(named) if named else None
    return out


# --- pictures ------------------------------------------------------------------------------------------------------

def upscaled(image: Tensor, scale: int) -> Image.Image:
    """A (3, S, S) tensor in [0, 1] as a PIL image, upscaled `scale` times with nearest neighbours."""
    img = to_pil(image)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def save_grid(path: Path, columns: Sequence[str], rows: Sequence[tuple], cell: int = 64) -> None:
    """rows of (label, [images], [verdicts or None]) under column headers; a green/red frame shows the verdict."""
    font = ImageFont.load_default()
    label_w = max([int(font.getlength(r[0])) for r in rows] + [0]) + 12
    pad, head = 4, 18
    width = label_w + len(columns) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, head + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(columns):
        draw.text((label_w + j * (cell + pad) + pad, 3), name, fill="black", font=font)
    for i, (label, images, verdicts) in enumerate(rows):
        y = head + i * (cell + pad) + pad
        draw.text((6, y + cell // 2 - 6), label, fill="black", font=font)
        for j, image in enumerate(images):
            x = label_w + j * (cell + pad) + pad
            canvas.paste(upscaled(image, max(1, cell // image.shape[-1])).resize((cell, cell)), (x, y))
            if verdicts is not None and verdicts[j] is not None:
                draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline=(0, 160, 0) if verdicts[j] else (210, 0, 0), width=2)
    canvas.save(path)


# --- the run -------------------------------------------------------------------------------------------------------

class Laps:
    """Seconds of each named phase of a run (`lap("vae")` ends the phase begun by the last call), and the total."""

    def __init__(self) -> None:
        self.times: Dict[str, float] = {}
        self.start = self.tick = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name], self.tick = round(now - self.tick, 1), now

    def summary(self) -> Dict[str, float]:
        return {**self.times, "total": round(time.perf_counter() - self.start, 1)}


def run(cfg: DemoConfig, out: Path) -> dict:
    """Train, generate, score and write every file; returns the summary."""
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = shapes.word_tokenizer()  # a token per word: 10 tokens for the longest caption instead of 50 bytes
    text_len = shapes.caption_length_bound(relations=False, tokenizer=tokenizer)
    lap = Laps()

    captions, images = render_set(cfg.train_images, "train", cfg.seed, cfg.image_size)
    text = tokenizer.tokenize(captions, text_len)  # (N, text_len)
    pairs = TensorDataset(text, images)  # the (caption ids, image) items the trainers read instead of a folder
    # "seen": new captions and renders, of colour-shape pairs seen in training; "heldout": pairs never seen
    prompts = {name: render_set(cfg.eval_prompts, split, cfg.seed + 1, cfg.image_size)
               for name, split in (("seen", "train"), ("heldout", "heldout"))}
    runs = out / "runs"
    for kind in ("vae", "dalle", "clip"):
        fresh_run_dir(runs / kind, kind)
    runs.mkdir(parents=True, exist_ok=True)
    tokenizer_file = save_tokenizer(tokenizer, runs)  # read by the DALLE and CLIP trainers, saved with their models
    lap("data")

    vae_cfg = vae_config(cfg, runs / "vae")
    vae = train_vae(vae_cfg, dataset=pairs).eval()
    curves = {TOKENIZER_NAMES[cfg.tokenizer]: loss_curve(runs / "vae", vae_cfg.steps)}
    lap("vae")
    with torch.no_grad():
        codes = torch.cat([vae.get_codebook_indices(chunk) for chunk in images.split(500)])  # (N, fmap**2)
        recon = vae.decode(codes[:2000])
    usage = codebook_usage(codes, vae.num_tokens)  # over every training image
    recon_score = score(captions[:2000], recon)
    lap("encode")

    dalle = train_dalle(dalle_config(cfg, runs / "dalle", runs / "vae" / "model", tokenizer_file, text_len),
                        dataset=pairs).eval()
    curves["DALLE"] = loss_curve(runs / "dalle", cfg.dalle_steps)
    lap("dalle")
    clip = train_clip(clip_config(cfg, runs / "clip", tokenizer_file, text_len), dataset=pairs).eval()
    curves["CLIP"] = loss_curve(runs / "clip", cfg.clip_steps)
    lap("clip")

    gen = torch.Generator().manual_seed(cfg.seed)
    results: Dict[str, Dict[str, dict]] = {}
    shown: Dict[str, Dict[str, Tensor]] = {}
    for split, (caps, truth) in prompts.items():
        ptext = tokenizer.tokenize(caps, text_len)
        results[split], shown[split] = {}, {}
        for setting in SETTINGS:
            generated = generate(dalle, clip, ptext, setting, cfg, gen)
            results[split][setting] = score(caps, generated)
            shown[split][setting] = generated
    # after the scores, so that adding it changed none of them
    distinct = diversity(dalle, tokenizer.tokenize(prompts["seen"][0][:8], text_len), cfg, gen)
    lap("generate_and_score")

    # the trained models as one pipeline, ready for `dalle-core generate --pipeline` (and each model folder, with
    # the tokenizer beside the DALLE and the CLIP, for --checkpoint); the same weights as runs/*/model
    vae.save_pretrained(out / "models" / "vae")
    DALLEPipeline(dalle, tokenizer, clip=clip).save_pretrained(out / "models")

    # pictures
    n_show = min(8, len(captions))
    save_grid(out / "reconstructions.png", ["image", TOKENIZER_NAMES[cfg.tokenizer]],
              [(captions[i], [images[i], recon[i]], [None, shapes.check(captions[i], recon[i]).colour_and_shape])
               for i in range(n_show)])
    for split, (caps, truth) in prompts.items():
        rows = []
        for i in range(min(10, len(caps))):
            gens = [shown[split][s][i] for s in SETTINGS]
            rows.append((caps[i], [truth[i], *gens], [None, *(shapes.check(caps[i], g).colour_and_shape for g in gens)]))
        headers = [COLUMNS[s].format(scale=cfg.cond_scale, n=cfg.candidates) for s in SETTINGS]
        save_grid(out / f"generations_{split}.png", ["render", *headers], rows)
    plot_losses(out / "losses.png", curves)
    (out / "losses.json").write_text(json.dumps(curves) + "\n")  # every step's loss, to plot otherwise
    lap("pictures")

    vae_curve = curves[TOKENIZER_NAMES[cfg.tokenizer]]
    summary = {
        "config": asdict(cfg),
        "seconds": lap.summary(),
        "threads": torch.get_num_threads(),
        "vae": {"codebook_usage": usage.usage, "perplexity": usage.perplexity, "num_tokens": vae.num_tokens,
                "kind": cfg.tokenizer, "final_loss": sum(vae_curve[-50:]) / len(vae_curve[-50:]),
                "reconstructions_checker": recon_score,
                "reconstruction_mse": float(((recon - images[:len(recon)]) ** 2).mean())},
        "dalle": {"final_loss": sum(curves["DALLE"][-50:]) / len(curves["DALLE"][-50:]),
                  "distinct_samples": distinct},  # plain sampling, 16 samples of each of 8 seen captions
        "clip": {"final_loss": sum(curves["CLIP"][-50:]) / len(curves["CLIP"][-50:])},
        "results": results,
    }
    measured = {f"{s}/{k}/colour_and_shape": results[s][k]["colour_and_shape"] for s in results for k in results[s]}
    measured["vae/codebook_usage"] = usage.usage
    summary["targets"] = {k: {"target": t, "measured": measured[k], "met": measured[k] >= t} for k, t in TARGETS.items()}
    summary["files"] = sorted(p.name for p in out.iterdir() if p.suffix == ".png") + ["losses.json", "summary.json"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a short table."""
    name = TOKENIZER_NAMES[summary["vae"].get("kind", "dvae")]
    lines = [f"{name} codebook usage {summary['vae']['codebook_usage']:.0%} (perplexity "
             f"{summary['vae']['perplexity']:.0f} of {summary['vae']['num_tokens']}); reconstructions pass the checker "
             f"{summary['vae']['reconstructions_checker']['colour_and_shape']:.1%}; distinct plain samples of a "
             f"caption {summary['dalle']['distinct_samples']:.0%}",
             f"{'prompts':<8} {'setting':<22} {'colour+shape':>12} {'all named':>10}   (n per cell)"]
    for split, settings in summary["results"].items():
        for setting, r in settings.items():
            lines.append(f"{split:<8} {setting:<22} {r['colour_and_shape']:>12.1%} {r['all_attributes']:>10.1%}   ({r['n']})")
    met = [f"{k} {v['measured']:.1%} {'>=' if v['met'] else '<'} {v['target']:.0%}" for k, v in summary["targets"].items()]
    lines.append("targets: " + "; ".join(met))
    lines.append(f"time: {summary['seconds']} on {summary['threads']} threads")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's flags (shared by `python -m dalle_core.demo` and `dalle-core demo`)."""
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (under a minute); numbers are meaningless")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every training step count (e.g. 3)")
    p.add_argument("--image-size", type=int, default=32, help="image side, a power of two >= 32 (default 32)")
    p.add_argument("--tokenizer", choices=list(TOKENIZER_NAMES), default="dvae",
                   help="the image tokenizer to train (train-vae --kind): dvae (default), vq, fsq, lfq or vqgan")
    p.add_argument("--model", choices=("dalle", "dalle2"), default="dalle",
                   help="dalle (default): dVAE + DALLE + CLIP; dalle2: CLIP + diffusion prior + diffusion decoder "
                        "(DALL-E 2, `dalle_core.dalle2`; default --out outputs/demo-dalle2)")
    p.add_argument("--clip", type=Path, default=None,
                   help="--model dalle2 only: a CLIP already trained on this data (a train-clip model folder with "
                        "its tokenizer, e.g. a DALL-E demo's OUT/models/clip) instead of training one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Exit with a usage error for flags out of range."""
    if args.image_size < 32 or args.image_size & (args.image_size - 1):
        p.error(f"--image-size must be a power of two >= 32, got {args.image_size}")
    if not args.steps_scale > 0:
        p.error(f"--steps-scale must be > 0, got {args.steps_scale}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    model = getattr(args, "model", "dalle")
    if model != "dalle2" and getattr(args, "clip", None) is not None:
        p.error("--clip is for --model dalle2 (the DALL-E demo trains its own CLIP)")
    if model == "dalle2" and getattr(args, "tokenizer", "dvae") != "dvae":
        p.error("--tokenizer picks the DALL-E demo's image tokenizer; DALL-E 2 (--model dalle2) has none")
    return args


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The demo's command line."""
    p = argparse.ArgumentParser(prog="python -m dalle_core.demo", description=__doc__.split("\n")[0])
    add_arguments(p)
    return check_arguments(p, p.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> dict:
    """Run the demo for parsed flags; prints and returns the summary."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    summary = run(DemoConfig.from_args(args), args.out)
    print(format_summary(summary))
    print(f"wrote {', '.join(summary['files'])} to {args.out}")
    models = args.out / "models"
    cfg = summary["config"]
    print(f'try: dalle-core generate "a red circle on the left" --pipeline {models} '
          f'--cond-scale {cfg["cond_scale"]:g} --temperature {cfg["temperature"]:g} '
          f'--filter-thres {cfg["filter_thres"]:g} --out {args.out / "samples"}')
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the demo from command-line arguments; prints and returns the summary."""
    return run_from_args(parse_args(argv))


if __name__ == "__main__":
    main()
