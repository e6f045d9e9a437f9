# %% [markdown]
# # Train a discrete VAE on a folder of images
# The dVAE is stage 1 of DALL-E: it turns each image into a grid of codebook tokens that DALLE then learns
# to predict. It needs images only, no captions. Without `--folder` the script first renders a folder of
# captioned shapes (`dalle_core.demo.shapes`), so it runs out of the box.
# Run: `python examples/train_vae.py [--folder my_images/] [--out outputs/train_vae] [--steps 500]`
# For long runs (checkpoints, resume, EMA, several GPUs) use `dalle-core train-vae` or
# `dalle_core.training.train_vae(VAETrainConfig(...))`, which take the same folders (captions are ignored there too).

# %%
import argparse
from pathlib import Path

import torch
from PIL import Image

from dalle_core import DiscreteVAE
from dalle_core.data import IMAGE_EXTENSIONS, load_image, to_pil
from dalle_core.demo.shapes import write_folder

parser = argparse.ArgumentParser()
parser.add_argument("--folder", type=Path, help="images to train on (default: render shapes into OUT/images)")
parser.add_argument("--out", type=Path, default=Path("outputs/train_vae"))
parser.add_argument("--image-size", type=int, default=32, help="a power of 2")
parser.add_argument("--num-layers", type=int, default=2, help="token grid: image_size / 2**num_layers a side")
parser.add_argument("--num-tokens", type=int, default=128, help="codebook size")
parser.add_argument("--steps", type=int, default=500)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--num-images", type=int, default=256, help="how many shapes to render without --folder")
args, _ = parser.parse_known_args()  # a notebook kernel adds its own flags (-f kernel.json): ignore them
torch.manual_seed(0)


# %% Data: any folder of images; without one, render shapes first
folder = args.folder
if folder is None:
    folder = write_folder(args.out / "images", args.num_images, image_size=64)  # captions too: train_dalle.py reads them
paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
if not paths:
    raise SystemExit(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {folder}")
print(f"{len(paths)} images in {folder}")


def random_batch():
    # decoded afresh each step: every draw is a new random crop covering 75-100% of the image
    picks = torch.randint(len(paths), (args.batch_size,)).tolist()
    return torch.stack([load_image(paths[i], args.image_size) for i in picks])  # (B, 3, S, S) in [0, 1]


# %% Train: Adam on the loss at its defaults (reconstruction, plus entropy terms that keep each position's code
# confident and spread the batch over the codebook; without them the codebook tends to collapse to a few codes)
vae = DiscreteVAE(image_size=args.image_size, num_layers=args.num_layers, num_tokens=args.num_tokens,
                  codebook_dim=64, hidden_dim=32)
opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
for step in range(args.steps):
    loss = vae(random_batch(), return_loss=True)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == args.steps - 1:
        print(f"step {step:4d}  loss {loss.item():.4f}")

# %% Codebook usage: a dVAE that uses few of its codes gives DALLE little to work with
held = torch.stack([load_image(p, args.image_size, resize_ratio=1.0) for p in paths[:64]])  # whole images
usage = vae.codebook_usage(held)
print(f"codebook usage {usage.usage:.1%} of {args.num_tokens} codes, perplexity {usage.perplexity:.1f}")

# top row: images; bottom row: decoded from their hard codes, the only thing DALLE ever sees of an image
fixed = held[:8]
recons = vae.decode(vae.get_codebook_indices(fixed))
grid = torch.cat([torch.cat(list(row), dim=2) for row in (fixed, recons)], dim=1)
args.out.mkdir(parents=True, exist_ok=True)
to_pil(grid).resize((grid.shape[2] * 4, grid.shape[1] * 4), Image.NEAREST).save(args.out / "reconstructions.png")
print(f"mean squared error of the hard-code reconstructions {((recons - fixed) ** 2).mean():.4f}")

# %% Save, and check that the saved model gives the same codes
vae.save_pretrained(args.out / "vae")
reloaded = DiscreteVAE.from_pretrained(args.out / "vae")
assert torch.equal(reloaded.get_codebook_indices(fixed), vae.get_codebook_indices(fixed))
print(f"wrote {args.out / 'vae'} (train DALLE on it: python examples/train_dalle.py --vae {args.out / 'vae'}) "
      f"and {args.out / 'reconstructions.png'}")
