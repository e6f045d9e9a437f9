"""Choose DALL-E 2's guidance scales on a fresh prompt set (not the demo's evaluation prompts), and time sampling.

    dalle-core demo --model dalle2 --out outputs/demo-dalle2          # trains the model this reads
    python benchmarks/dalle2_guidance.py --model outputs/demo-dalle2/models/dalle2 --out docs/dalle2

The prompts are rendered with seed `--seed + 2` (the demo evaluates on seed + 1 and trains on seed): seen and
held-out colour-shape pairs, `--prompts` of each. For every (prior scale, decoder scale) in the grid it draws one
image per prompt and reports the checker's accuracy (colour and shape), so the demo's guided setting can be set
from data it is not scored on. Also the prior's candidates (1 against the paper's 2) and the decoder's DDIM steps
at the chosen scales, with seconds per image (wall-clock, `--threads` torch threads, the load average beside).
With `--dalle DIR` (a DALL-E demo's OUT/models pipeline) the same prompts are drawn by the DALLE too, plain, at the
demo's settings, timed the same way. Writes dalle2_guidance.json and .md into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from dalle_core.dalle2 import DALLE2
from dalle_core.demo import runner


def accuracy(model: DALLE2, prompts: Dict[str, Any], *, seed: int, **options: Any) -> Dict[str, Any]:
    """Checker accuracy (colour and shape) per prompt set and seconds per image under `options`."""
    out: Dict[str, Any] = {}
    seconds, count = 0.0, 0
    for split, (captions, text) in prompts.items():
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        images = torch.cat([model(chunk, generator=gen, **options) for chunk in text.split(100)])
        seconds, count = seconds + time.perf_counter() - start, count + len(images)
        out[split] = runner.score(captions, images)["colour_and_shape"]
    out["seconds_per_image"] = seconds / count
    return out


def dalle_plain(args: argparse.Namespace, prompts: Dict[str, Any]) -> Dict[str, Any]:
    """The DALL-E demo's DALLE on the same prompts: plain sampling at the demo's temperature and top-k."""
    from dalle_core import DALLEPipeline

    pipe = DALLEPipeline.from_pretrained(args.dalle)
    settings = runner.DemoConfig()
    out: Dict[str, Any] = {}
    seconds, count = 0.0, 0
    for split, (captions, _) in prompts.items():
        text = pipe.tokenizer.tokenize(captions, pipe.dalle.text_seq_len)
        gen = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        images = torch.cat([pipe.dalle.generate_images(chunk, use_cache=True, filter_thres=settings.filter_thres,
                                                       temperature=settings.temperature, generator=gen)
                            for chunk in text.split(100)])
        seconds, count = seconds + time.perf_counter() - start, count + len(images)
        out[split] = runner.score(captions, images)["colour_and_shape"]
    out["seconds_per_image"] = seconds / count
    return out


def main(argv: List[str] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a DALLE2 folder (the demo's OUT/models/dalle2)")
    p.add_argument("--out", type=Path, default=Path("docs/dalle2"))
    p.add_argument("--prompts", type=int, default=100, help="prompts per set (seen, held-out)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dalle", type=Path, default=None, help="a DALL-E demo's pipeline folder, timed beside")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = DALLE2.from_pretrained(args.model)
    size = model.decoder.image_size
    prompts = {}
    for name, split in (("seen", "train"), ("heldout", "heldout")):
        captions, _ = runner.render_set(args.prompts, split, args.seed + 2, size)
        prompts[name] = (captions, model.tokenizer.tokenize(captions, model.clip.text_seq_len))
    rows = []
    for prior_scale in args.scales:
        for decoder_scale in args.scales:
            r = accuracy(model, prompts, seed=args.seed, prior_cond_scale=prior_scale, decoder_cond_scale=decoder_scale)
            rows.append({"prior_cond_scale": prior_scale, "decoder_cond_scale": decoder_scale, **r})
            print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["seen"] + r["heldout"])
    chosen = dict(prior_cond_scale=best["prior_cond_scale"], decoder_cond_scale=best["decoder_cond_scale"])
    variants = []
    for name, options in (("one prior candidate", dict(candidates=1)), ("decoder 10 DDIM steps", dict(decoder_steps=10)),
                          ("decoder 50 DDIM steps", dict(decoder_steps=50))):
        variants.append({"variant": name, **accuracy(model, prompts, seed=args.seed, **chosen, **options)})
        print(variants[-1], flush=True)
    if args.dalle is not None:
        variants.append({"variant": "DALL-E (the demo's DALLE, plain, batches of 100)", **dalle_plain(args, prompts)})
        print(variants[-1], flush=True)
    result = {"model": str(args.model), "prompts_per_set": args.prompts, "prompt_seed": args.seed + 2,
              "threads": args.threads, "load_average": os.getloadavg(), "grid": rows, "chosen": chosen,
              "variants_at_chosen": variants}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dalle2_guidance.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# DALL-E 2 guidance on a fresh prompt set ({args.prompts} seen + {args.prompts} held-out prompts, "
             f"seed {args.seed + 2}; load {result['load_average'][0]:.2f})", "",
             "| prior scale | decoder scale | seen | held-out | s / image |", "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['prior_cond_scale']:g} | {r['decoder_cond_scale']:g} | {r['seen']:.1%} | {r['heldout']:.1%} | "
              f"{r['seconds_per_image']:.3f} |" for r in rows]
    lines += ["", f"Chosen (best seen + held-out): prior {chosen['prior_cond_scale']:g}, decoder "
                  f"{chosen['decoder_cond_scale']:g}.", "", "| at the chosen scales | seen | held-out | s / image |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {v['variant']} | {v['seen']:.1%} | {v['heldout']:.1%} | {v['seconds_per_image']:.3f} |"
              for v in variants]
    (args.out / "dalle2_guidance.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
