"""CLIP-guided refinement (VQGAN-CLIP, Crowson et al. 2022, arXiv 2204.08583): nudge an image's codes so that CLIP
scores it higher against its caption.

    images = clip_refine(vae, clip, text, images, steps=50)          # images or codes in, images in [0, 1] out

The image's codes become the tokenizer's continuous latents (`codes_to_latents`), and Adam moves those latents to
raise CLIP's score of (caption, decoded image), averaged over random augmentations of the image (VQGAN-CLIP's
"cutouts": random square crops resized to CLIP's input size, here plus the whole image, each flipped at random and
given a little noise), so that the score cannot be raised by a pattern that only fools CLIP at one framing. Each
step decodes the latents quantised to codes (`decode_latents`: nearest codebook vector, FSQ's rounding, LFQ's
sign) with straight-through gradients, so the result is always the decoding of a valid code grid.

Every image tokenizer of dalle_core (`DiscreteVAE`, `VQVAE` with "vq" / "fsq" / "lfq", `VQGanVAE`,
`OpenAIDiscreteVAE`) has the three methods this module calls, and so may any other:

* `codes_to_latents(codes (B, n)) -> latents (B, d, h, w)`, the continuous latents behind the codes;
* `latents_to_codes(latents) -> codes (B, n)`, their quantisation (the inverse on codes);
* `decode_latents(latents) -> images (B, C, H, W)` in [0, 1], equal to `decode(latents_to_codes(latents))`, with
  gradients reaching `latents`.

On the built-in demo it lowers the shapes checker's accuracy (96% -> 71% on seen pairs after 20 steps; with
`keep_best`, 92.5%): a higher CLIP score is not a better picture there. Numbers and command:
benchmarks/clip_refine.py.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models.vae import clamp_with_grad
from .utils import check_float, check_images, check_int, check_real_batch, check_text_mask, check_token_ids

__all__ = ["clip_refine", "clip_score", "make_cutouts", "LATENT_METHODS"]

LATENT_METHODS = ("codes_to_latents", "latents_to_codes", "decode_latents", "decode")


def _resize(images: Tensor, size: int) -> Tensor:
    """Square images (B, C, s, s) resized to (B, C, size, size): area averaging down, bilinear up."""
    side = images.shape[-1]
    if side == size:
        return images
    if side > size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _uniform(n: int, generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """n uniform draws in [0, 1) from `generator` (on its own device), moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where).to(device)


def make_cutouts(images: Tensor, cut_size: int, cutouts: int, *, cut_min: float = 0.6, flip: bool = True,
                 noise: float = 0.05, generator: Optional[torch.Generator] = None) -> Tensor:
    """VQGAN-CLIP's augmentations of square images (B, C, S, S) in [0, 1], differentiable, torch ops only.

    Returns (cutouts * B, C, cut_size, cut_size), cutout-major (rows k*B .. k*B + B-1 are cutout k of every image):
    cutout 0 is the whole image; the others are random squares (the same square for every image of the batch) with
    a side drawn uniformly in [cut_min * S, S] at a random place. Each is resized to `cut_size`, flipped
    left-right with probability 1/2 (per image, with `flip`) and given Gaussian noise whose standard deviation is
    drawn in [0, noise) per cutout; pixels are clamped back to [0, 1] with `clamp_with_grad`.
    """
    b, _, side, _ = images.shape
    device = images.device
    out = []
    for k in range(cutouts):
        if k == 0:
            crop = images
        else:
            size = min(side, max(1, round((cut_min + (1 - cut_min) * float(_uniform(1, generator, device))) * side)))
            x0, y0 = (int(u * (side - size + 1)) for u in _uniform(2, generator, device).tolist())
            crop = images[:, :, y0:y0 + size, x0:x0 + size]
        out.append(_resize(crop, cut_size))
    cuts = torch.cat(out)  # (cutouts * B, C, cut_size, cut_size)
    n = cuts.shape[0]
    if flip:
        flipped = (_uniform(n, generator, device) < 0.5).view(n, 1, 1, 1)
        cuts = torch.where(flipped, cuts.flip(-1), cuts)
    if noise > 0:
        where = generator.device if generator is not None else device
        std = (_uniform(cutouts, generator, device) * noise).repeat_interleave(b).view(n, 1, 1, 1)
        cuts = cuts + std * torch.randn(cuts.shape, generator=generator, device=where).to(device, cuts.dtype)
    return clamp_with_grad(cuts, 0.0, 1.0)


def _clip_size(clip: Any) -> Tuple[int, int]:
    size = getattr(clip, "visual_image_size", None)
    if not callable(clip) or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TypeError(f"clip must be a CLIP (or a module with an int `visual_image_size` and forward(text, images, "
                        f"text_mask=None) -> scores (B,)), got {type(clip).__name__}")
    return size, int(getattr(clip, "channels", 3))


def _check_text(text: Any, text_mask: Any, batch: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Captions (batch, n): one per image, or one row repeated for every image."""
    if not isinstance(text, Tensor):
        raise TypeError(f"text must be a tensor of caption token ids (batch, n), got {type(text).__name__}")
    check_real_batch("text", text)
    text = check_token_ids("text", text, vocab_size=2 ** 62)  # the CLIP checks the ids against its vocabulary
    if text.shape[0] not in (1, batch):
        raise ValueError(f"text has {text.shape[0]} captions but there are {batch} images: give one caption per "
                         "image, or one caption for all")
    if text_mask is not None:
        check_text_mask(text_mask, text)
        text_mask = text_mask.expand(batch, -1)
    return text.expand(batch, -1), text_mask


@torch.no_grad()
def clip_score(clip: nn.Module, text: Tensor, images: Tensor, text_mask: Optional[Tensor] = None) -> Tensor:
    """CLIP's score (B,) of each caption (B, n) (or one caption for all) against images (B, C, H, W) in [0, 1],
    resized to CLIP's input size; in eval mode (the previous mode restored)."""
    size, channels = _clip_size(clip)
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be square images (batch, {channels}, S, S) in [0, 1], got {got}")
    images = check_images("images", images, channels=channels, image_size=images.shape[-1])
    text, text_mask = _check_text(text, text_mask, images.shape[0])
    was_training = clip.training
    clip.eval()
    try:
        return clip(text, _resize(images, size), text_mask=text_mask)
    finally:
        clip.train(was_training)


def _codes_of(vae: nn.Module, images: Any) -> Tensor:
    """The code grid (B, fmap_size**2) of `images`: images (B, C, S, S) in [0, 1] or codes already."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor: images (batch, {vae.channels}, {vae.image_size}, "
                        f"{vae.image_size}) in [0, 1] or codes (batch, {vae.fmap_size ** 2}), got "
                        f"{type(images).__name__}")
    check_real_batch("images", images)
    if images.is_floating_point():
        images = check_images("images", images, channels=vae.channels, image_size=vae.image_size)
        return vae.get_codebook_indices(images)
    if images.ndim != 2:
        raise ValueError(f"images must be images (batch, {vae.channels}, {vae.image_size}, {vae.image_size}) in "
                         f"[0, 1] or integer codes (batch, {vae.fmap_size ** 2}), got an integer tensor of shape "
                         f"{tuple(images.shape)}")
    codes = check_token_ids("images (codes)", images, vocab_size=vae.num_tokens)
    if codes.shape[1] != vae.fmap_size ** 2:
        raise ValueError(f"codes must have {vae.fmap_size ** 2} per image ({vae.fmap_size}x{vae.fmap_size}), got "
                         f"{codes.shape[1]}")
    return codes.clone()


def _latent_range(vae: nn.Module, device: torch.device) -> Tuple[Tensor, Tensor, float]:
    """Per-channel minimum and maximum (1, d, 1, 1) of the latents of every code, and their standard deviation."""
    n = vae.fmap_size ** 2
    every = torch.arange(vae.num_tokens, device=device)
    every = torch.cat([every, every[: (-vae.num_tokens) % n]]).view(-1, n)  # every code, padded to whole grids
    latents = vae.codes_to_latents(every).detach().float()  # (g, d, h, w)
    return (latents.amin(dim=(0, 2, 3), keepdim=True), latents.amax(dim=(0, 2, 3), keepdim=True),
            float(latents.std()) if latents.numel() > 1 else 1.0)


def clip_refine(vae: nn.Module, clip: nn.Module, text: Tensor, images: Tensor, *, steps: int = 50, lr: float = 0.1,
                cutouts: int = 8, cut_min: float = 0.6, flip: bool = True, noise: float = 0.05,
                keep_best: bool = False, text_mask: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None,
                return_codes: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Refine images so that `clip` scores them higher against `text`, by optimising the latents behind their codes.

    Args:
        vae: the image tokenizer, with `codes_to_latents`, `latents_to_codes`, `decode_latents` and `decode` (every
            dalle_core tokenizer: see the module docstring).
        clip: a `CLIP`, or any module with an int `visual_image_size` (and `channels`, default 3) whose
            `forward(text, images, text_mask=None)` gives scores (B,). Images of another size than CLIP's are
            resized to it (area averaging down, bilinear up).
        text: caption ids (B, n), or (1, n) for the same caption on every image.
        images: images (B, C, image_size, image_size) in [0, 1], encoded with `vae.get_codebook_indices`, or codes
            (B, fmap_size**2) (integer).
        steps: Adam updates (0: the input's codes decoded unchanged).
        lr: Adam's learning rate, in units of the standard deviation of the codebook's latents (one value for every
            tokenizer's scale); latents are kept within each channel's range over the codebook, as VQGAN-CLIP does.
        cutouts: augmented views per image and step (the whole image, then cutouts - 1 random crops).
        cut_min: the smallest crop side, as a fraction of the image side.
        flip: flip each view left-right with probability 1/2.
        noise: the largest standard deviation of the Gaussian noise added to a view.
        keep_best: return, per image, the codes of the step (the input's included) whose image CLIP scores highest
            as it is (no augmentation), instead of the last step's (VQGAN-CLIP's); the CLIP score then never drops.
        text_mask: bool (B, n), True on real tokens (CLIP ignores the others), e.g. `text != 0` for the demo's CLIP.
        generator: the random source of the augmentations (torch's global one when None).
        return_codes: also return the codes.

    Returns:
        the refined images (B, C, image_size, image_size) in [0, 1], on the tokenizer's device: exactly
        `vae.decode(codes)` for the final codes (B, fmap_size**2); `(images, codes)` with `return_codes`. Neither
        model's weights, training mode or `requires_grad` flags change, nor does `images`.
    """
    missing = [m for m in LATENT_METHODS if not callable(getattr(vae, m, None))]
    if missing:
        raise TypeError(f"vae must be an image tokenizer with {', '.join(LATENT_METHODS)}; "
                        f"{type(vae).__name__} lacks {', '.join(missing)}")
    clip_size, clip_channels = _clip_size(clip)
    if clip_channels != vae.channels:
        raise ValueError(f"clip takes {clip_channels}-channel images but the tokenizer makes {vae.channels}-channel "
                         "ones")
    steps = check_int("steps", steps, minimum=0)
    cutouts = check_int("cutouts", cutouts, minimum=1)
    lr = check_float("lr", lr, low=0, low_open=True)
    cut_min = check_float("cut_min", cut_min, low=0, high=1, low_open=True)
    noise = check_float("noise", noise, low=0)
    if not isinstance(keep_best, bool):
        raise TypeError(f"keep_best must be True or False, got {type(keep_best).__name__} {keep_best!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")

    modes = (vae.training, clip.training)
    flags = [(p, p.requires_grad) for p in (*vae.parameters(), *clip.parameters())]
    vae.eval()
    clip.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.no_grad():
            codes = _codes_of(vae, images)
        text, text_mask = _check_text(text, text_mask, codes.shape[0])
        text = text.to(codes.device)
        text_mask = None if text_mask is None else text_mask.to(codes.device)
        if steps > 0:
            codes = _optimise(vae, clip, text, text_mask, codes, clip_size, steps=steps, lr=lr, cutouts=cutouts,
                              cut_min=cut_min, flip=flip, noise=noise, keep_best=keep_best, generator=generator)
        with torch.no_grad():
            out = vae.decode(codes)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        vae.train(modes[0])
        clip.train(modes[1])
    return (out, codes) if return_codes else out


def _optimise(vae: nn.Module, clip: nn.Module, text: Tensor, text_mask: Optional[Tensor], codes: Tensor,
              clip_size: int, *, steps: int, lr: float, cutouts: int, cut_min: float, flip: bool, noise: float,
              keep_best: bool, generator: Optional[torch.Generator]) -> Tensor:
    """The refinement loop: Adam on the latents of `codes`; returns the codes of the final latents (`keep_best`:
    of the best-scoring step's, per image)."""
    with torch.no_grad():
        latents = vae.codes_to_latents(codes).detach().float().clone()
        low, high, scale = _latent_range(vae, latents.device)
    latents.requires_grad_(True)
    opt = torch.optim.Adam([latents], lr=lr * scale)
    text_rep = text.repeat(cutouts, 1)  # cutout-major, as make_cutouts orders its views
    mask_rep = None if text_mask is None else text_mask.repeat(cutouts, 1)
    best_codes, best_scores = codes, None
    with torch.enable_grad():
        for _ in range(steps):
            images = vae.decode_latents(latents)  # (B, C, H, W), straight-through quantised
            if keep_best:  # the score of the codes of these latents, before this step moves them
                best_codes, best_scores = _keep_best(vae, clip, text, text_mask, clip_size, latents, images,
                                                     best_codes, best_scores)
            views = make_cutouts(images.float(), clip_size, cutouts, cut_min=cut_min, flip=flip, noise=noise,
                                 generator=generator)
            loss = -clip(text_rep, views, text_mask=mask_rep).float().mean()
            (latents.grad,) = torch.autograd.grad(loss, [latents])
            opt.step()
            with torch.no_grad():
                latents.copy_(torch.maximum(torch.minimum(latents, high), low))
    with torch.no_grad():
        if not keep_best:
            return vae.latents_to_codes(latents.detach())
        images = vae.decode_latents(latents.detach())
        return _keep_best(vae, clip, text, text_mask, clip_size, latents, images, best_codes, best_scores)[0]


@torch.no_grad()
def _keep_best(vae: nn.Module, clip: nn.Module, text: Tensor, text_mask: Optional[Tensor], clip_size: int,
               latents: Tensor, images: Tensor, best_codes: Tensor, best_scores: Optional[Tensor]
               ) -> Tuple[Tensor, Tensor]:
    """The best codes so far and their scores, per image, updated with the codes of `latents` (decoded: `images`)."""
    scores = clip(text, _resize(images.detach().float(), clip_size), text_mask=text_mask).float()  # (B,)
    codes = vae.latents_to_codes(latents.detach())
    if best_scores is None:  # the first step's latents are the input's codes
        return codes, scores
    better = scores > best_scores
    return torch.where(better[:, None], codes, best_codes), torch.where(better, scores, best_scores)
