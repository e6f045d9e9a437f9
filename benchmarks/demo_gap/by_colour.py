"""Per-colour checker results of demo runs' saved models (dalle-core demo --out DIR writes DIR/models).

For each DIR: the dVAE's hard-code reconstructions of the first 2000 training images (as the demo scores them),
the demo's own seen plain samples (200 prompts, prompt seed = seed + 1, the generator's first draws: the same
images the demo scored), and 2000 more seen prompts (prompt seed 1000 + seed), each broken down by colour.
    python by_colour.py SEED:DIR [SEED:DIR ...]
"""
import json
import sys

import torch

from dalle_core.demo import shapes
from dalle_core.demo.runner import DemoConfig, generate, render_set
from dalle_core.models.dalle import DALLE
from dalle_core.models.vae import DiscreteVAE
from dalle_core.tokenizers import load_tokenizer, find_tokenizer


def per_colour(captions, images):
    out = {}
    for c, im in zip(captions, images):
        col = next(w for w in c.split() if w in shapes.COLOURS)
        r = shapes.check(c, im)
        n, ok, colour_miss = out.get(col, (0, 0, 0))
        out[col] = (n + 1, ok + bool(r.colour_and_shape), colour_miss + (r.colour is False))
    total = sum(v[1] for v in out.values()) / sum(v[0] for v in out.values())
    return {"pass": round(total, 4), "by_colour_pass": {k: round(v[1] / v[0], 3) for k, v in sorted(out.items())},
            "by_colour_colour_miss": {k: round(v[2] / v[0], 3) for k, v in sorted(out.items())}}


def main():
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        seed, d = arg.split(":", 1)
        seed = int(seed)
        cfg = DemoConfig(seed=seed)
        vae = DiscreteVAE.from_pretrained(f"{d}/models/vae").eval()
        dalle = DALLE.from_pretrained(f"{d}/models/dalle").eval()
        tok = load_tokenizer(str(find_tokenizer(f"{d}/models/dalle")))
        caps, ims = render_set(2000, "train", seed, 32)
        with torch.no_grad():
            rec = vae.decode(vae.get_codebook_indices(ims))
        row = {"dir": d, "seed": seed, "recon": per_colour(caps, rec)}
        gen = torch.Generator().manual_seed(seed)
        caps, _ = render_set(200, "train", seed + 1, 32)
        row["seen_plain_demo"] = per_colour(caps, generate(dalle, None, tok.tokenize(caps, dalle.text_seq_len), "plain", cfg, gen))
        caps, _ = render_set(2000, "train", 1000 + seed, 32)
        g2 = torch.Generator().manual_seed(1000 + seed)
        row["seen_plain_2000"] = per_colour(caps, generate(dalle, None, tok.tokenize(caps, dalle.text_seq_len), "plain", cfg, g2))
        print(json.dumps(row), flush=True)
        with open("outputs/demo_gap/by_colour.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
