"""Guidance on logits against guidance on probabilities, on a DALL-E demo's pipeline and a fresh prompt set.

    dalle-core demo --out outputs/demo                       # trains the pipeline this reads
    python benchmarks/guidance_space.py --pipeline outputs/demo/models --out docs/sampling/guidance

The prompts are rendered with seed `--seed + 2` (the demo trains on seed and evaluates on seed + 1), `--prompts`
seen and `--prompts` held-out colour-shape pairs; every (space, scale) of the grid draws one image per prompt at
the demo's temperature and top-k, from the same generator seed, and the checker scores colour and shape. Writes
guidance_space.json and .md into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from dalle_core import DALLEPipeline
from dalle_core.demo import runner
from dalle_core.sampling import GUIDANCE_SPACES


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pipeline", type=Path, required=True, help="a DALL-E demo's OUT/models folder")
    p.add_argument("--out", type=Path, default=Path("docs/sampling/guidance"))
    p.add_argument("--prompts", type=int, default=200, help="prompts per set (seen, held-out)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0, 8.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = DALLEPipeline.from_pretrained(args.pipeline)
    settings = runner.DemoConfig()
    prompts = {}
    for name, split in (("seen", "train"), ("heldout", "heldout")):
        captions, _ = runner.render_set(args.prompts, split, args.seed + 2, pipe.dalle.vae.image_size)
        prompts[name] = (captions, pipe.tokenizer.tokenize(captions, pipe.dalle.text_seq_len))
    grid = [("none", 1.0)] + [(space, scale) for space in GUIDANCE_SPACES for scale in args.scales]
    rows = []
    for space, scale in grid:
        row: Dict[str, Any] = {"space": space, "cond_scale": scale}
        start = time.perf_counter()
        for split, (captions, text) in prompts.items():
            gen = torch.Generator().manual_seed(args.seed)
            options = {} if space == "none" else {"guidance_space": space}
            with torch.no_grad():
                images = torch.cat([pipe.dalle.generate_images(chunk, use_cache=True, cond_scale=scale,
                                                               filter_thres=settings.filter_thres,
                                                               temperature=settings.temperature, generator=gen,
                                                               **options) for chunk in text.split(100)])
            row[split] = runner.score(captions, images)["colour_and_shape"]
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(row, flush=True)
    result = {"pipeline": str(args.pipeline), "prompts_per_set": args.prompts, "prompt_seed": args.seed + 2,
              "temperature": settings.temperature, "filter_thres": settings.filter_thres, "threads": args.threads,
              "load_average": os.getloadavg(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance_space.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Guidance space on the shapes demo ({args.prompts} seen + {args.prompts} held-out prompts, seed "
             f"{args.seed + 2}; temperature {settings.temperature:g}, top-k keeps {1 - settings.filter_thres:.0%}; "
             f"load {result['load_average'][0]:.2f})", "",
             "| guidance | cond_scale | seen | held-out |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['space']} | {r['cond_scale']:g} | {r['seen']:.1%} | {r['heldout']:.1%} |" for r in rows]
    (args.out / "guidance_space.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
