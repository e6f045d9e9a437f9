"""The sampling features on the demo's trained models: reranking, inpainting, speculative decoding, pictures.

    dalle-core demo --out outputs/demo          # trains the models this reads (about 15 minutes)
    python benchmarks/sampling_features.py --demo outputs/demo --out docs/sampling

Parts (`--parts`, default all):
- `rerank`: best of 4 plain samples per prompt kept by CLIP, by the DALLE's likelihood (`dalle.score`) or by
  both ranks, against plain samples; the demo's checker on its seen and held-out prompts. The four choices
  come from the same candidates.
- `inpaint`: the prompt sets' own renders with half of the code grid regenerated under their caption: the bottom
  half (drawn after the kept top, which it sees) against the top half (drawn before the kept bottom, which it
  cannot see: the autoregressive limitation), checker accuracy and the DALLE's NLL per code of the result
  (`score`), the original renders' NLL beside them.
- `speculative`: plain cached sampling against `speculative=k` at the demo's settings: forward passes per
  image, seconds, checker accuracy (the same distribution: accuracy should agree within sampling noise), at
  batch 1 and at the demo's batch; and on the speed benchmark's model (`benchmarks/workloads.py` BENCH, random
  weights), passes and seconds.
- `pictures`: an inpainting picture and a streaming strip for the README.

Writes `sampling_features.json` and `.md` (and the pictures) into --out. Timings are wall-clock on this
machine with `--threads` torch threads; the load average is recorded beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from dalle_core import CLIP, DALLE, DiscreteVAE
from dalle_core.demo import runner, shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import BENCH, BENCH_VAE  # noqa: E402

SETTINGS = dict(filter_thres=0.9, temperature=0.7)  # the demo's plain sampling


def load(demo: Path):
    runs = demo / "runs"
    dalle = DALLE.from_pretrained(runs / "dalle" / "model").eval()
    clip = CLIP.from_pretrained(runs / "clip" / "model").eval()
    tokenizer = shapes.word_tokenizer()
    return dalle, clip, tokenizer


def prompt_sets(n: int, seed: int, image_size: int, tokenizer, text_len: int) -> Dict[str, Any]:
    """The demo's evaluation prompts (the same renders as its summary): captions, ids and the renders."""
    out = {}
    for name, split in (("seen", "train"), ("heldout", "heldout")):
        captions, images = runner.render_set(n, split, seed + 1, image_size)
        out[name] = (captions, tokenizer.tokenize(captions, text_len), images)
    return out


def accuracy(captions: List[str], images: torch.Tensor) -> float:
    return runner.score(captions, images)["colour_and_shape"]


def part_rerank(dalle, clip, sets, seed: int, candidates: int = 4) -> Dict[str, Any]:
    result = {}
    for name, (captions, text, _) in sets.items():
        gen = torch.Generator().manual_seed(seed)
        rep = text.repeat_interleave(candidates, 0)
        codes = torch.cat([dalle.generate_image_codes(chunk, use_cache=True, generator=gen, **SETTINGS)
                           for chunk in rep.split(200)])
        images = torch.cat([dalle.vae.decode(chunk) for chunk in codes.split(200)])
        with torch.no_grad():
            clip_s = torch.cat([clip(t, im, text_mask=t != 0) for t, im in zip(rep.split(200), images.split(200))])
        loglik = -torch.cat([dalle.score(t, c) for t, c in zip(rep.split(200), codes.split(200))])
        clip_s, loglik = clip_s.view(-1, candidates), loglik.view(-1, candidates)
        rank = lambda s: s.argsort(-1, descending=True).argsort(-1)  # noqa: E731
        both = rank(clip_s) + rank(loglik)
        choices = {"plain (first candidate)": torch.zeros(len(text), dtype=torch.long),
                   "CLIP best of 4": clip_s.argmax(-1), "likelihood best of 4": loglik.argmax(-1),
                   "both ranks, best of 4": (both.double() + rank(clip_s).double() / (2 * candidates)).argmin(-1)}
        grid = images.view(len(text), candidates, *images.shape[1:])
        rows = torch.arange(len(text))
        result[name] = {k: accuracy(captions, grid[rows, v]) for k, v in choices.items()}
    return result


def part_inpaint(dalle, sets, seed: int) -> Dict[str, Any]:
    fmap = dalle.image_fmap_size
    result = {}
    for name, (captions, text, renders) in sets.items():
        own = torch.cat([dalle.vae.get_codebook_indices(chunk) for chunk in renders.split(200)])
        row: Dict[str, Any] = {"original renders": accuracy(captions, renders),
                               "original codes (reconstruction)": accuracy(captions, dalle.vae.decode(own)),
                               "NLL per code, original codes": float(dalle.score(text, own).mean())}
        for half in ("bottom", "top"):
            mask = torch.zeros(1, fmap, fmap, dtype=torch.bool)
            mask[:, fmap // 2:] = half == "bottom"
            mask[:, : fmap // 2] = half == "top"
            gen = torch.Generator().manual_seed(seed)
            codes = dalle.generate_image_codes(text, img=own, mask=mask, use_cache=True, generator=gen, **SETTINGS)
            row[f"{half} half regenerated"] = accuracy(captions, dalle.vae.decode(codes))
            row[f"NLL per code, {half} half regenerated"] = float(dalle.score(text, codes).mean())
        result[name] = row
    return result


def _timed_codes(dalle, text, batch: int, **kwargs) -> Dict[str, Any]:
    """Codes for every row of `text` in batches; seconds, and forward passes per image."""
    gen = torch.Generator().manual_seed(0)
    passes, codes = 0, []
    start = time.perf_counter()
    for chunk in text.split(batch):
        codes.append(dalle.generate_image_codes(chunk, generator=gen, **kwargs))
        spec = kwargs.get("speculative")
        passes += dalle.speculative_stats.passes if spec else dalle.image_seq_len
    seconds = time.perf_counter() - start
    batches = (len(text) + batch - 1) // batch
    return {"codes": torch.cat(codes), "seconds": seconds, "passes_per_image": passes / batches}


def part_speculative(dalle, sets, ks=(2, 4, 8), batches=(1, 16), n: int = 200) -> Dict[str, Any]:
    result: Dict[str, Any] = {"demo": {}, "bench": {}}
    captions, text, _ = sets["seen"]
    captions, text = captions[:n], text[:n]
    dalle(text[:2], torch.zeros(2, 4, dtype=torch.long))  # warm up
    for batch in batches:
        rows = {}
        for k in (None, *ks):
            out = _timed_codes(dalle, text, batch, use_cache=True, speculative=k, **SETTINGS)
            rows["plain cached" if k is None else f"speculative k={k}"] = {
                "seconds_per_image": out["seconds"] / len(text), "passes_per_image": out["passes_per_image"],
                "accuracy": accuracy(captions, dalle.vae.decode(out["codes"]))}
        result["demo"][f"batch {batch}"] = rows
    torch.manual_seed(0)
    bench = DALLE(vae=DiscreteVAE(**BENCH_VAE), **BENCH).eval()
    text = torch.randint(1, BENCH["num_text_tokens"], (4, BENCH["text_seq_len"]))
    rows = {}
    for k in (None, *ks):
        out = _timed_codes(bench, text, 4, use_cache=True, speculative=k, filter_thres=0.9)
        rows["plain cached" if k is None else f"speculative k={k}"] = {
            "seconds_per_image": out["seconds"] / len(text), "passes_per_image": out["passes_per_image"]}
    result["bench"]["batch 4"] = rows
    return result


def part_pictures(dalle, sets, out: Path, seed: int) -> Dict[str, str]:
    from PIL import Image, ImageDraw

    fmap = dalle.image_fmap_size
    captions, text, renders = sets["seen"]
    picks = [i for i, c in enumerate(captions) if len(c.split()) <= 5 and "left" not in c and "right" not in c][:3]
    scale = 3
    cell = renders.shape[-1] * scale
    # inpainting: original | mask | 4 results, one row per prompt; the mask: the bottom half of the grid (drawn
    # after the kept top, which the model sees)
    mask = torch.zeros(1, fmap, fmap, dtype=torch.bool)
    mask[:, fmap // 2:] = True
    canvas = Image.new("RGB", (6 * cell + 7 * 4, len(picks) * (cell + 16) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    gen = torch.Generator().manual_seed(seed)
    for r, i in enumerate(picks):
        y = 4 + r * (cell + 16)
        draw.text((4, y), captions[i], fill="black")
        y += 12
        results = dalle.generate_images(text[i:i + 1].expand(4, -1), img=renders[i:i + 1].expand(4, -1, -1, -1),
                                        mask=mask, use_cache=True, generator=gen, **SETTINGS)
        shown = renders[i].clone()
        shown[:, shown.shape[-2] // 2:] *= 0.35
        for c, image in enumerate([renders[i], shown, *results]):
            canvas.paste(runner.upscaled(image, scale), (4 + c * (cell + 4), y))
    canvas.save(out / "inpainting.png")
    # streaming: one sample's partial images after each row
    i = picks[0]
    frames = [images[0] for _, images in dalle.generate_images_stream(
        text[i:i + 1], use_cache=True, generator=torch.Generator().manual_seed(seed), **SETTINGS)]
    strip = Image.new("RGB", (len(frames) * (cell + 4) + 4, cell + 20), "white")
    ImageDraw.Draw(strip).text((4, 2), f"{captions[i]}: rows 1 to {fmap}", fill="black")
    for c, image in enumerate(frames):
        strip.paste(runner.upscaled(image, scale), (4 + c * (cell + 4), 16))
    strip.save(out / "streaming.png")
    return {"inpainting": "inpainting.png", "streaming": "streaming.png"}


def markdown(result: Dict[str, Any]) -> str:
    lines = [f"Load average at the end: {result['load']:.2f}; {result['threads']} torch thread(s); "
             f"{result['prompts']} prompts per set.", ""]
    if "rerank" in result:
        lines += ["Reranking (checker: colour and shape right):", "", "| choice | seen | held-out |", "|---|---:|---:|"]
        for key in result["rerank"]["seen"]:
            lines.append(f"| {key} | {result['rerank']['seen'][key]:.1%} | {result['rerank']['heldout'][key]:.1%} |")
        lines.append("")
    if "inpaint" in result:
        lines += ["Inpainting half of the code grid of the prompt sets' own renders:", "",
                  "| | seen | held-out |", "|---|---:|---:|"]
        for key, value in result["inpaint"]["seen"].items():
            other = result["inpaint"]["heldout"][key]
            fmt = (lambda v: f"{v:.3f}") if key.startswith("NLL") else (lambda v: f"{v:.1%}")
            lines.append(f"| {key} | {fmt(value)} | {fmt(other)} |")
        lines.append("")
    if "speculative" in result:
        lines += ["Speculative decoding:", "", "| model | batch | sampler | forward passes per call | seconds per "
                  "image | checker |", "|---|---:|---|---:|---:|---:|"]
        for model, per_batch in result["speculative"].items():
            for batch, rows in per_batch.items():
                for name, row in rows.items():
                    acc = f"{row['accuracy']:.1%}" if "accuracy" in row else "-"
                    lines.append(f"| {model} | {batch.split()[-1]} | {name} | {row['passes_per_image']:.1f} | "
                                 f"{row['seconds_per_image']:.4f} | {acc} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a `dalle-core demo --out` folder")
    parser.add_argument("--out", type=Path, default=Path("docs/sampling"))
    parser.add_argument("--parts", nargs="+", default=["rerank", "inpaint", "speculative", "pictures"])
    parser.add_argument("--prompts", type=int, default=200, help="prompts per set (the demo uses 200)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    dalle, clip, tokenizer = load(args.demo)
    sets = prompt_sets(args.prompts, args.seed, dalle.vae.image_size, tokenizer, dalle.text_seq_len)
    result: Dict[str, Any] = {"prompts": args.prompts, "threads": args.threads, "settings": SETTINGS}
    path = args.out / "sampling_features.json"
    if path.exists():
        previous = json.loads(path.read_text())  # parts not rerun keep their earlier results
        result.update({k: v for k, v in previous.items() if k in ("rerank", "inpaint", "speculative", "pictures")})
    with torch.no_grad():
        for part in args.parts:
            start = time.perf_counter()
            if part == "rerank":
                result[part] = part_rerank(dalle, clip, sets, args.seed)
            elif part == "inpaint":
                result[part] = part_inpaint(dalle, sets, args.seed)
            elif part == "speculative":
                result[part] = part_speculative(dalle, sets)
            elif part == "pictures":
                result[part] = part_pictures(dalle, sets, args.out, args.seed)
            print(f"{part}: {time.perf_counter() - start:.0f} s", flush=True)
    result["load"] = os.getloadavg()[0]
    path.write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "sampling_features.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
