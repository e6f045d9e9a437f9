# %% [markdown]
# # Load a DALLE-pytorch (1.6.6) checkpoint and sample from it
# `load_dalle_pytorch(path)` reads a `dalle.pt` written by DALLE-pytorch's train_dalle.py (its `hparams`,
# `vae_params` and `weights`; the optimizer state is ignored) into a dalle_core `DALLE` with its `DiscreteVAE`.
# `load_dalle_pytorch_vae(path)` reads a `vae.pt` written by train_vae.py (`hparams` and `weights`).
# Both read with `torch.load(weights_only=True)`: nothing in the file is run. Checkpoints of DALLE-pytorch's
# pretrained OpenAI / VQGAN dVAEs are not supported, only its own trained `DiscreteVAE`.
# Run: `python examples/load_dalle_pytorch.py [--checkpoint dalle.pt] [--tokenizer bpe.json --prompt "..."]`
# The default checkpoint is a tiny test fixture trained on random caption ids, so it runs out of the box.

# %%
import argparse
from pathlib import Path

import torch
from PIL import Image

from dalle_core import DALLE, load_dalle_pytorch, load_dalle_pytorch_vae
from dalle_core.tokenizers import Tokenizer

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dalle_ckpt_train_dalle.pt"
parser = argparse.ArgumentParser()
parser.add_argument("--checkpoint", type=Path, default=FIXTURE, help="a DALLE-pytorch train_dalle.py dalle.pt")
parser.add_argument("--vae", type=Path, help="a DALLE-pytorch train_vae.py vae.pt, to load on its own")
parser.add_argument("--tokenizer", type=Path, help="the tokenizer file the DALLE was trained with "
                                                   "(train_dalle.py --bpe_path: a youtokentome .model or, with "
                                                   "--hug, a Hugging Face .json)")
parser.add_argument("--prompt", action="append", help="a caption (needs --tokenizer); repeat for several")
parser.add_argument("--num-images", type=int, default=4, help="images per caption")
parser.add_argument("--out", type=Path, default=Path("outputs/load_dalle_pytorch"))
args, _ = parser.parse_known_args()  # a notebook kernel adds its own flags (-f kernel.json): ignore them
args.out.mkdir(parents=True, exist_ok=True)
gen = torch.Generator().manual_seed(0)


def save_grid(rows, path):  # rows: a list of (N, C, H, W) tensors in [0, 1], drawn top to bottom
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
    img = Image.fromarray((grid.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())
    img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(path)
    print(f"wrote {path}")


# %% Load: a dalle_core DALLE, used like any other
dalle = load_dalle_pytorch(args.checkpoint)  # keywords override saved hparams: load_dalle_pytorch(path, ff_dropout=0.1)
print(f"DALLE: text_seq_len {dalle.text_seq_len}, {dalle.text_vocab_size} text ids, "
      f"{dalle.vae.image_size}px images as {dalle.image_seq_len} codes of {dalle.num_image_tokens}")

# %% Captions: tokenized with the training tokenizer, or random ids when there is none
# (train_dalle.py's default tokenizer, CLIP's BPE, is not in dalle_core: without --bpe_path there is no file to give)
if args.tokenizer:
    tokenizer = Tokenizer.load(args.tokenizer)
    prompts = args.prompt or ["a painting of a fox"]
    text = tokenizer.tokenize(prompts, dalle.text_seq_len, truncate_text=True)
else:
    if args.prompt:
        raise SystemExit("--prompt needs --tokenizer: the ids must come from the tokenizer the DALLE was trained with")
    text = torch.randint(1, dalle.text_vocab_size, (2, dalle.text_seq_len), generator=gen)
text = text.repeat_interleave(args.num_images, dim=0)

# %% Sample, one row per caption
images = dalle.generate_images(text, filter_thres=0.9, use_cache=True, generator=gen)
save_grid(list(images.view(-1, args.num_images, *images.shape[1:])), args.out / "samples.png")

# %% Save in dalle_core's format: examples/sample.py --checkpoint and `dalle-core generate` read it
dalle.save_pretrained(args.out / "dalle")
if args.tokenizer:
    tokenizer.save(args.out / "dalle" / "tokenizer.json")
assert torch.equal(DALLE.from_pretrained(args.out / "dalle").vae.codebook.weight, dalle.vae.codebook.weight)
print(f"wrote {args.out / 'dalle'}")

# %% A train_vae.py dVAE on its own: top row, the samples above; bottom row, through this dVAE and back
if args.vae:
    vae = load_dalle_pytorch_vae(args.vae)
    if vae.image_size != dalle.vae.image_size:
        raise SystemExit(f"the dVAE takes {vae.image_size}px images, the DALLE makes {dalle.vae.image_size}px")
    first = images[: args.num_images]
    save_grid([first, vae.decode(vae.get_codebook_indices(first))], args.out / "vae_reconstructions.png")
    print(f"dVAE codebook usage on the samples: {vae.codebook_usage(first).usage:.1%}")
