"""Sampling settings on the digits benchmark's trained models: which guidance works, judged like `real_data.py`.

`real_data.py --keep-models` saves each run's weights (`RUN-models.pt`); this script rebuilds those models and
draws the same prompts (the run's seed, 500 by default) under each setting given, then reads every image with the
run folder's judge. A setting is `NAME=JSON`, the keyword arguments of `DALLE.generate_images`:

    python benchmarks/real_data_sampling.py --run /work/exp/vq_large_g/dalle_core-base-seed0.pt \
        --setting 'plain={}' --setting 'guided3={"cond_scale": 3}' --setting 'guided2={"cond_scale": 2}'

`filter_thres=0.9` and `use_cache=True` are the defaults of every setting, as in `real_data.py`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_data  # noqa: E402  (the benchmark's data, judge and constants)



def rebuild(lib_name: str, models_file: Path, vocab: int):
    """The run's DALLE (with its VAE) from its saved state dicts and recipe, in the library that trained it."""
    lib = importlib.import_module(lib_name)
    saved = torch.load(models_file, weights_only=True)
    recipe = saved["recipe"]
    vae = getattr(lib, recipe.get("vae_class", "DiscreteVAE"))(image_size=real_data.IMAGE_SIZE, **recipe["vae"])
    dalle = lib.DALLE(vae=vae, num_text_tokens=vocab, text_seq_len=real_data.TEXT_SEQ_LEN, **recipe["dalle"])
    dalle.load_state_dict(saved["dalle"])  # holds the VAE's weights too
    return dalle.eval()


def spread(images: torch.Tensor, labels: torch.Tensor, per_label: int = 40) -> float:
    """Mean squared distance between two images of the same label, over the first `per_label` of each label."""
    distances = []
    for label in labels.unique():
        group = images[labels == label][:per_label].flatten(1).float()
        pairs = torch.cdist(group, group).pow(2) / group.shape[1]
        n = len(group)
        distances.append(pairs.sum() / (n * (n - 1)))
    return float(torch.stack(distances).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run file of real_data.py --keep-models")
    parser.add_argument("--setting", action="append", required=True, help="NAME=JSON of generate_images keywords")
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON results (default: RUN-sampling.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.run.parent
    data = torch.load(folder / "digits.pt", weights_only=True)
    lib_name = args.run.stem.split("-")[0]  # run files are LIB-RECIPE-seedN.pt
    dalle = rebuild(lib_name, real_data.models_path(args.run), int(data["vocab"]))
    judge = real_data.Judge()
    judge.load_state_dict(torch.load(folder / "judge.pt", weights_only=True))
    judge.eval()
    seed = int(args.run.stem.rsplit("seed", 1)[1])
    pgen = torch.Generator().manual_seed(10_000 + seed)  # the prompts of real_data.py's worker
    labels = torch.arange(args.prompts) % 10
    captions = data["captions"]
    text = captions[labels, torch.randint(0, captions.shape[1], (args.prompts,), generator=pgen)]
    real_spread = spread(data["train_images"], data["train_labels"])  # how varied real digits of one label are
    results = {}
    for setting in args.setting:
        name, _, options = setting.partition("=")
        kwargs = {"filter_thres": 0.9, "use_cache": True, **json.loads(options or "{}")}
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            images = torch.cat([dalle.generate_images(text[i:i + 50], **kwargs) for i in range(0, len(text), 50)])
        images = real_data.to_unit(images, lib_name)
        right = real_data.accuracy(judge, images, labels)
        u8 = images.mul(255).round().to(torch.uint8).flatten(1)
        distinct = len(torch.unique(u8, dim=0)) / len(u8)
        varied = spread(images, labels) / real_spread
        results[name] = {"options": kwargs, "accuracy": right, "distinct": distinct, "spread": varied,
                         "seconds": time.perf_counter() - start}
        print(f"{name:14s} right {right:6.1%}  distinct {distinct:6.1%}  spread {varied:.2f}  "
              f"({time.perf_counter() - start:.0f} s)  {kwargs}", flush=True)
    out = args.out or args.run.with_name(args.run.stem + "-sampling.json")
    out.write_text(json.dumps({"run": str(args.run), "library": lib_name, "prompts": args.prompts,
                               "load": os.getloadavg()[0],
                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
