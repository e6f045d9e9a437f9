# %% [markdown]
# # Sampling from a DALLE: guidance, priming, CLIP reranking, cached decoding
# Loads a DALLE saved with `save_pretrained` (e.g. by `examples/train_dalle.py`) and its tokenizer. Without
# `--checkpoint` it builds a tiny untrained DALLE (and without `--clip` an untrained CLIP), so the script runs
# anywhere; its pictures are then noise, but every call is the one you would make on a trained model.
# Run: `python examples/sample.py [--checkpoint outputs/train_dalle/dalle] [--prompt "a red circle"] [--out DIR]`

# %%
import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from dalle_core import CLIP, DALLE, DiscreteVAE
from dalle_core.data import load_image
from dalle_core.tokenizers import ByteTokenizer, Tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--checkpoint", type=Path, help="a DALLE save_pretrained directory (default: tiny, untrained)")
parser.add_argument("--clip", type=Path, help="a CLIP save_pretrained directory (default: tiny, untrained)")
parser.add_argument("--prompt", action="append", help="a caption; repeat for several")
parser.add_argument("--img", type=Path, help="an image to prime with (default: the guided samples)")
parser.add_argument("--out", type=Path, default=Path("outputs/sample"))
parser.add_argument("--cond-scale", type=float, default=3.0, help="classifier-free guidance scale (1: none)")
parser.add_argument("--candidates", type=int, default=4, help="samples per caption for CLIP to choose from")
parser.add_argument("--image-size", type=int, default=32, help="of the untrained DALLE")
parser.add_argument("--seed", type=int, default=0)
args, _ = parser.parse_known_args()  # a notebook kernel adds its own flags (-f kernel.json): ignore them
prompts = args.prompt or ["a large red circle on the left", "a small blue square at the top"]
args.out.mkdir(parents=True, exist_ok=True)
gen = torch.Generator().manual_seed(args.seed)  # every sampling call below draws from it: reproducible runs


def save_grid(rows, path):  # rows: a list of (N, C, H, W) tensors in [0, 1], drawn top to bottom
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
    img = Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())
    img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(path)
    print(f"wrote {path}")


# %% The model and its tokenizer
if args.checkpoint:
    dalle = DALLE.from_pretrained(args.checkpoint)
    saved = args.checkpoint / "tokenizer.json"
    tokenizer = Tokenizer.load(saved) if saved.is_file() else ByteTokenizer()
else:
    tokenizer = ByteTokenizer()
    vae = DiscreteVAE(image_size=args.image_size, num_layers=2, num_tokens=64, codebook_dim=32, hidden_dim=16)
    dalle = DALLE(dim=64, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=64, depth=2, heads=4,
                  dim_head=16)
if tokenizer.vocab_size > dalle.text_vocab_size:
    raise SystemExit(f"the tokenizer has more ids than the DALLE: save its own in {args.checkpoint}/tokenizer.json")
text = tokenizer.tokenize(prompts, dalle.text_seq_len, truncate_text=True)  # (B, text_seq_len), 0 = padding

# %% Classifier-free guidance: cond_scale > 1 pushes each sample towards its caption, at twice the compute
plain = dalle.generate_images(text, filter_thres=0.9, use_cache=True, generator=gen)
guided = dalle.generate_images(text, filter_thres=0.9, use_cache=True, cond_scale=args.cond_scale, generator=gen)
save_grid([plain, guided], args.out / "guidance.png")  # top: plain, bottom: guided

# %% Cached decoding: use_cache=True keeps each position's keys and values instead of recomputing the prefix
for use_cache in (False, True):
    start = time.perf_counter()
    dalle.generate_images(text, filter_thres=0.9, use_cache=use_cache, generator=gen)
    print(f"use_cache={use_cache}: {time.perf_counter() - start:.2f} s")

# %% Priming: keep the first image codes (rows of the token grid) of a given image, sample the rest
primer = guided
if args.img:
    primer = load_image(args.img, dalle.vae.image_size, resize_ratio=1.0)[None].expand(len(prompts), -1, -1, -1)
half = dalle.image_seq_len // 2  # the top half of the image
primed = dalle.generate_images(text, img=primer, num_init_img_tokens=half, filter_thres=0.9,
                               cond_scale=args.cond_scale, use_cache=True, generator=gen)
save_grid([primer, primed], args.out / "priming.png")  # top: the primers, bottom: their completions

# %% CLIP reranking: sample several candidates per caption, keep the ones CLIP scores highest
if args.clip:
    clip = CLIP.from_pretrained(args.clip)
    saved = args.clip / "tokenizer.json"
    clip_tokenizer = Tokenizer.load(saved) if saved.is_file() else tokenizer
else:
    clip_tokenizer = tokenizer
    clip = CLIP(dim_text=64, dim_image=64, dim_latent=64, num_text_tokens=tokenizer.vocab_size, text_enc_depth=1,
                text_seq_len=dalle.text_seq_len, text_heads=2, visual_enc_depth=1, visual_heads=2,
                visual_image_size=dalle.vae.image_size, visual_patch_size=dalle.vae.image_size // 4)
if clip.visual_image_size != dalle.vae.image_size:
    raise SystemExit(f"the CLIP takes {clip.visual_image_size}px images, the DALLE makes {dalle.vae.image_size}px")
n = args.candidates
candidates = dalle.generate_images(text.repeat_interleave(n, dim=0), filter_thres=0.9, cond_scale=args.cond_scale,
                                   use_cache=True, generator=gen)
candidates = candidates.view(len(prompts), n, *candidates.shape[1:])  # (B, n, C, H, W)
clip_text = clip_tokenizer.tokenize(prompts, clip.text_seq_len, truncate_text=True)
# CLIP reads id 0 as a token: the mask keeps the padding out of the caption's embedding
best = clip.rerank(clip_text, candidates, top=n, text_mask=clip_text != 0)  # all n, best first
save_grid(list(best.images), args.out / "reranked.png")  # one row per caption, best on the left
for prompt, scores in zip(prompts, best.scores.tolist()):
    print(f"{prompt!r}: CLIP scores {', '.join(f'{s:.2f}' for s in scores)}")
# for one caption: clip.rerank(text[:1], images[None]); generate_images(text, clip=clip) also returns scores
