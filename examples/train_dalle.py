# %% [markdown]
# # Train DALLE on a folder of captioned images
# Stage 2 of DALL-E: a transformer over [caption tokens ; image codes of a frozen dVAE]. The folder holds
# `a.png` + `a.txt` pairs (one caption a line; a random line is used each time). Give a dVAE trained with
# `examples/train_vae.py` as `--vae`, or the script trains a small one first; without `--folder` it renders a
# folder of captioned shapes (`dalle_core.demo.shapes`), so it runs out of the box.
# Run: `python examples/train_dalle.py [--folder data/] [--vae outputs/train_vae/vae] [--out outputs/train_dalle]`
# For long runs (checkpoints, resume, schedules, several GPUs) use `dalle-core train-dalle`.

# %%
import argparse
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from dalle_core import DALLE, DiscreteVAE
from dalle_core.data import TextImageDataset, to_pil
from dalle_core.demo.shapes import write_folder
from dalle_core.tokenizers import ByteTokenizer, Tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--folder", type=Path, help="images with same-stem .txt captions (default: render shapes)")
parser.add_argument("--vae", type=Path, help="a DiscreteVAE save_pretrained directory (default: train one here)")
parser.add_argument("--out", type=Path, default=Path("outputs/train_dalle"))
parser.add_argument("--image-size", type=int, default=32, help="for the dVAE trained here (else the --vae's)")
parser.add_argument("--vae-steps", type=int, default=300, help="updates of the dVAE trained here")
parser.add_argument("--steps", type=int, default=500)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--text-seq-len", type=int, default=64, help="caption tokens (longer captions are cut)")
parser.add_argument("--dim", type=int, default=128)
parser.add_argument("--depth", type=int, default=2)
parser.add_argument("--num-images", type=int, default=256, help="how many shapes to render without --folder")
args, _ = parser.parse_known_args()  # a notebook kernel adds its own flags (-f kernel.json): ignore them
torch.manual_seed(0)


# %% Data: image + caption pairs; without a folder, render shapes first
folder = args.folder
if folder is None:
    folder = write_folder(args.out / "images", args.num_images, image_size=64)

vae = DiscreteVAE.from_pretrained(args.vae) if args.vae else None
tokenizer = ByteTokenizer()  # UTF-8 bytes: any caption, nothing to train (a trained BPE makes shorter sequences)
dataset = TextImageDataset(folder, text_len=args.text_seq_len, image_size=vae.image_size if vae else args.image_size,
                           truncate_captions=True, tokenizer=tokenizer)
print(f"{len(dataset)} captioned images in {folder}; {dataset.skip_summary()}")
loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)


def batches():  # epoch after epoch, as long as the loop asks
    while True:
        yield from loader


# %% The dVAE: loaded, or trained briefly here (examples/train_vae.py explains the choices)
if vae is None:
    vae = DiscreteVAE(image_size=args.image_size, num_layers=2, num_tokens=128, codebook_dim=64, hidden_dim=32)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    for step, (_, images) in zip(range(args.vae_steps), batches()):
        loss = vae(images, return_loss=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"dVAE: {args.vae_steps} steps, loss {loss.item():.4f}")
    vae.save_pretrained(args.out / "vae")

# %% DALLE: AdamW on the caption + image-code loss; the dVAE inside stays frozen (no gradients)
dalle = DALLE(dim=args.dim, vae=vae, num_text_tokens=tokenizer.vocab_size, text_seq_len=args.text_seq_len,
              depth=args.depth, heads=4, dim_head=32)
opt = torch.optim.AdamW([p for p in dalle.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
for step, (text, images) in zip(range(args.steps), batches()):
    # dropping 10% of the captions teaches the unconditional model that classifier-free guidance needs
    loss = dalle(text, images, return_loss=True, null_cond_prob=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == args.steps - 1:
        print(f"step {step:4d}  loss {loss.item():.4f}")

# %% Save: model + tokenizer in one directory (`dalle-core generate --checkpoint` and examples/sample.py read it)
dalle.save_pretrained(args.out / "dalle")
tokenizer.save(args.out / "dalle" / "tokenizer.json")
dalle = DALLE.from_pretrained(args.out / "dalle")
tokenizer = Tokenizer.load(args.out / "dalle" / "tokenizer.json")

# %% A few samples of training captions; top row: the training images, bottom row: generated
text, targets = next(iter(DataLoader(dataset, batch_size=4)))
captions = [tokenizer.decode(t) for t in text]
samples = dalle.generate_images(text, filter_thres=0.9, cond_scale=3.0, use_cache=True)
grid = torch.cat([torch.cat(list(row), dim=2) for row in (targets, samples)], dim=1)
to_pil(grid).resize((grid.shape[2] * 4, grid.shape[1] * 4), Image.NEAREST).save(args.out / "samples.png")
print("\n".join(captions))
print(f"wrote {args.out / 'dalle'} and {args.out / 'samples.png'}")
