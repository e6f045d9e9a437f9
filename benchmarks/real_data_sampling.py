"""Sampling settings on the digits benchmark's trained models: which guidance works, judged like `real_data.py`.

`real_data.py --keep-models` saves each run's weights (`RUN-models.pt`); this script rebuilds those models (in
the library that trained them: run it with that library's Python) and draws the run's own prompts (500 by
default) under each sampling setting, then reads every image with the run folder's judge. Beside accuracy it
reports how varied the samples are: the share of distinct images, and the spread, the mean squared distance
between two samples of one digit over that between two real training digits of one digit (1 = as varied as the
real digits; above 1, noisier than them). The settings are the `SETTINGS` grid, or `--setting NAME=JSON` (keyword
arguments of `DALLE.generate_images`); `filter_thres=0.9` and `use_cache=True` are every setting's defaults, as in
`real_data.py`. dalle-pytorch runs take the settings it can express (no `guidance_space`; its guidance is on
logits).

    python benchmarks/real_data.py --libs dalle_core --recipes base --seeds 0 1 2 --keep-models --out OUT \
        --override '{"vae_class": "VQVAE", "dalle": {"dim": 128, "depth": 4, "heads": 4, "dim_head": 32}, ...}'
    python benchmarks/real_data_sampling.py --runs OUT/dalle_core-base-seed*.pt --out benchmarks/real_data/NAME
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_data  # noqa: E402  (the benchmark's data, judge and constants)



def rebuild(lib_name: str, models_file: Path, vocab: int):
    """(DALLE with its VAE, recipe): the run rebuilt from its saved state dicts, in the library that trained it."""
    lib = importlib.import_module(lib_name)
    saved = torch.load(models_file, weights_only=True)
    recipe = saved["recipe"]
    vae = getattr(lib, recipe.get("vae_class", "DiscreteVAE"))(image_size=real_data.IMAGE_SIZE, **recipe["vae"])
    dalle = lib.DALLE(vae=vae, num_text_tokens=vocab, text_seq_len=real_data.TEXT_SEQ_LEN, **recipe["dalle"])
    dalle.load_state_dict(saved["dalle"])  # holds the VAE's weights too
    return dalle.eval(), recipe


def spread(images: torch.Tensor, labels: torch.Tensor, per_label: int = 40) -> float:
    """Mean squared distance between two images of the same label, over the first `per_label` of each label."""
    distances = []
    for label in labels.unique():
        group = images[labels == label][:per_label].flatten(1).float()
        pairs = torch.cdist(group, group).pow(2) / group.shape[1]
        n = len(group)
        distances.append(pairs.sum() / (n * (n - 1)))
    return float(torch.stack(distances).mean())


# name -> generate_images keywords beside filter_thres=0.9 and use_cache=True (real_data.py's plain setting)
SETTINGS: Dict[str, Dict[str, Any]] = {
    "plain (temperature 1)": {},
    "temperature 0.7": {"temperature": 0.7},
    "temperature 0.5": {"temperature": 0.5},
    "guided on logits, 1.5": {"cond_scale": 1.5, "guidance_space": "logits"},
    "guided on logits, 3": {"cond_scale": 3, "guidance_space": "logits"},
    "guided on probs, 1.5": {"cond_scale": 1.5, "guidance_space": "probs"},
    "guided on probs, 3": {"cond_scale": 3, "guidance_space": "probs"},
    "guided on probs, 5": {"cond_scale": 5, "guidance_space": "probs"},
    "guided on probs, 3, temperature 0.7": {"cond_scale": 3, "guidance_space": "probs", "temperature": 0.7},
}
REFERENCE_GUIDANCE = "logits"  # dalle-pytorch has no guidance_space: its guidance is on logits (and broken)


def sample_run(run: Path, settings: Dict[str, Dict[str, Any]], prompts: int) -> Dict[str, Any]:
    """Every setting on one kept run: the judge's accuracy, distinct images, and spread (see `spread`)."""
    folder = run.parent
    data = torch.load(folder / "digits.pt", weights_only=True)
    lib_name = run.stem.split("-")[0]  # run files are LIB-RECIPE-seedN.pt
    dalle, recipe = rebuild(lib_name, real_data.models_path(run), int(data["vocab"]))
    accepted = inspect.signature(dalle.generate_images).parameters
    judge = real_data.Judge()
    judge.load_state_dict(torch.load(folder / "judge.pt", weights_only=True))
    judge.eval()
    seed = int(run.stem.rsplit("seed", 1)[1])
    pgen = torch.Generator().manual_seed(10_000 + seed)  # the prompts of real_data.py's worker
    labels = torch.arange(prompts) % 10
    captions = data["captions"]
    text = captions[labels, torch.randint(0, captions.shape[1], (prompts,), generator=pgen)]
    real_spread = spread(data["train_images"], data["train_labels"])  # how varied real digits of one label are
    results: Dict[str, Any] = {}
    for name, options in settings.items():
        kwargs = {"filter_thres": 0.9, "use_cache": True, **options}
        if "guidance_space" in kwargs and "guidance_space" not in accepted:
            if kwargs.pop("guidance_space") != REFERENCE_GUIDANCE:
                continue  # a setting this library cannot run
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            images = torch.cat([dalle.generate_images(text[i:i + 50], **kwargs) for i in range(0, len(text), 50)])
        images = real_data.to_unit(images, lib_name)
        u8 = images.mul(255).round().to(torch.uint8).flatten(1)
        results[name] = {"options": kwargs, "accuracy": real_data.accuracy(judge, images, labels),
                         "distinct": len(torch.unique(u8, dim=0)) / len(u8),
                         "spread": spread(images, labels) / real_spread, "seconds": time.perf_counter() - start}
        print(f"{run.stem} | {name}: {results[name]}", flush=True)
    return {"run": run.name, "library": lib_name, "seed": seed, "recipe": recipe, "results": results}


def table(runs: List[Dict[str, Any]], settings: List[str]) -> str:
    """Markdown: a row per (library, setting); accuracy, distinct and spread, means then each seed."""
    lines = ["| library | sampling | judge: right | distinct images | spread (real digits = 1) |",
             "|---|---|---:|---:|---:|"]
    for lib in dict.fromkeys(r["library"] for r in runs):
        mine = [r for r in runs if r["library"] == lib]
        for name in settings:
            have = [r["results"][name] for r in mine if name in r["results"]]
            if not have:
                continue
            cells = []
            for key, fmt in (("accuracy", "{:.1%}"), ("distinct", "{:.0%}"), ("spread", "{:.2f}")):
                values = [h[key] for h in have]
                each = ", ".join(fmt.format(v).replace(".0%", "%") if key == "accuracy" else fmt.format(v)
                                 for v in values)
                cells.append(f"{fmt.format(sum(values) / len(values))} ({each})")
            lines.append(f"| {lib} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run files of real_data.py --keep-models")
    parser.add_argument("--setting", action="append", help="NAME=JSON of generate_images keywords "
                        "(default: the SETTINGS grid)")
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="NAME: writes NAME.json and NAME.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = SETTINGS
    if args.setting:
        settings = {name: json.loads(options or "{}")
                    for name, _, options in (s.partition("=") for s in args.setting)}
    runs = [sample_run(run, settings, args.prompts) for run in args.runs]
    recipes = {json.dumps(r["recipe"], sort_keys=True) for r in runs}
    md = (f"Runs {', '.join(run.name for run in args.runs)}, trained by real_data.py with the recipe "
          f"{' / '.join(recipes)}.\n"
          f"{args.prompts} prompts per run (the run's own, as real_data.py draws them), one image each; top-k keeps "
          f"10% of the codes throughout. Load average at the end: {os.getloadavg()[0]:.2f}. Means over seeds, then "
          f"each seed ({', '.join(str(r['seed']) for r in runs)}) in brackets.\n\n"
          + table(runs, list(settings)) + "\n")
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps({"prompts": args.prompts, "settings": settings,
                                                         "runs": runs}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
