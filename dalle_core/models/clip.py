"""CLIP: a contrastive text/image model that scores captions against images, used to rerank DALL-E samples.

Same architecture and maths as DALLE-pytorch 1.6.6's `CLIP` (its weights load with
`dalle_core.interop.load_dalle_pytorch_clip`): token + position embeddings through a bidirectional
transformer, mean-pooled (over unmasked positions when a `text_mask` is given); image patches through a
linear embedding and a second transformer, mean-pooled; both projected to `dim_latent`, L2-normalised and
compared by cosine similarity scaled by `exp(temperature)`.

Text: integer ids in [0, num_text_tokens), shape (B, n) with 1 <= n <= text_seq_len. Shorter texts are
embedded as given (positions 0..n-1), exactly like the reference. Id 0 is an ordinary token here: to ignore
right padding, pass `text_mask=text != 0`. Images: (B, channels, visual_image_size, visual_image_size)
floats, in [0, 1] as everywhere in dalle_core (used as given, with no normalisation).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..utils import (check_images, check_int, check_real_batch, check_same_batch, check_text_mask, check_token_ids,
                     eval_decorator)
from ..pretrained import PretrainedMixin
from .transformer import Transformer
from .reference_names import rename_reference_keys

__all__ = ["CLIP", "RerankResult"]


class RerankResult(NamedTuple):
    """The best `top` images per caption, best first: images (B, top, C, H, W), scores and indices (B, top)."""

    images: Tensor
    scores: Tensor
    indices: Tensor


class CLIP(PretrainedMixin, nn.Module, register=True):
    """Contrastive text/image encoder pair with DALLE-pytorch 1.6.6's keywords, parameter names and outputs.

    Args:
        dim_text: text encoder width.
        dim_image: image encoder width.
        dim_latent: shared latent size.
        num_text_tokens: caption vocabulary size (the tokenizer's vocab_size).
        text_enc_depth: text encoder layers.
        text_seq_len: caption tokens.
        text_heads: text encoder heads.
        num_visual_tokens: accepted for DALLE-pytorch compatibility; unused.
        visual_enc_depth: image encoder layers.
        visual_heads: image encoder heads.
        visual_image_size: image side in pixels.
        visual_patch_size: patch side in pixels.
        channels: image channels: 3 (RGB) or 4 (RGBA).
    """

    def __init__(
        self,
        *,
        dim_text: int = 512,
        dim_image: int = 512,
        dim_latent: int = 512,
        num_text_tokens: int = 10000,
        text_enc_depth: int = 6,
        text_seq_len: int = 256,
        text_heads: int = 8,
        num_visual_tokens: int = 512,  # unused, kept for keyword compatibility with the reference
        visual_enc_depth: int = 6,
        visual_heads: int = 8,
        visual_image_size: int = 256,
        visual_patch_size: int = 32,
        channels: int = 3,
    ):
        super().__init__()
        self.register_load_state_dict_pre_hook(rename_reference_keys)  # DALLE-pytorch's names load too
        for name, value in (("dim_text", dim_text), ("dim_image", dim_image), ("dim_latent", dim_latent),
                            ("num_text_tokens", num_text_tokens), ("text_enc_depth", text_enc_depth),
                            ("text_seq_len", text_seq_len), ("text_heads", text_heads),
                            ("num_visual_tokens", num_visual_tokens), ("visual_enc_depth", visual_enc_depth),
                            ("visual_heads", visual_heads), ("visual_image_size", visual_image_size),
                            ("visual_patch_size", visual_patch_size), ("channels", channels)):
            check_int(name, value)
        if visual_image_size % visual_patch_size != 0:
            raise ValueError(f"visual_image_size ({visual_image_size}) must be divisible by visual_patch_size "
                             f"({visual_patch_size})")
        self.num_text_tokens = num_text_tokens
        self.text_seq_len = text_seq_len
        self.visual_image_size = visual_image_size
        self.visual_patch_size = visual_patch_size
        self.channels = channels
        num_patches = (visual_image_size // visual_patch_size) ** 2
        patch_dim = channels * visual_patch_size**2

        encoder = dict(causal=False, dim_head=64, rotary_emb=False, shift_tokens=False)
        self.text_emb = nn.Embedding(num_text_tokens, dim_text)
        self.text_pos_emb = nn.Embedding(text_seq_len, dim_text)
        self.text_transformer = Transformer(dim=dim_text, depth=text_enc_depth, seq_len=text_seq_len,
                                            heads=text_heads, **encoder)
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)

        self.to_visual_embedding = nn.Linear(patch_dim, dim_image)
        self.visual_pos_emb = nn.Embedding(num_patches, dim_image)
        self.visual_transformer = Transformer(dim=dim_image, depth=visual_enc_depth, seq_len=num_patches,
                                              heads=visual_heads, **encoder)
        self.to_visual_latent = nn.Linear(dim_image, dim_latent, bias=False)

        self.temperature = nn.Parameter(torch.tensor(1.0))  # log of the logit scale

    # --- input checks ---------------------------------------------------------------------------------------

    def _check_text(self, text: Any, text_mask: Any) -> Tensor:
        check_real_batch("text", text)
        text = check_token_ids("text", text, vocab_size=self.num_text_tokens)
        if not 1 <= text.shape[1] <= self.text_seq_len:
            raise ValueError(f"text must have between 1 and text_seq_len={self.text_seq_len} tokens, "
                             f"got {text.shape[1]} (shape {tuple(text.shape)})")
        if text_mask is not None:
            check_text_mask(text_mask, text)
            if not bool(text_mask.any(dim=1).all()):
                raise ValueError("text_mask leaves a caption with no unmasked token; its mean would be undefined")
        return text

    def _check_images(self, image: Any) -> Tensor:
        image = check_images("image", image, channels=self.channels, image_size=self.visual_image_size)
        return image.to(self.to_visual_embedding.weight.dtype)  # a float32 image into a bf16 model works

    # --- encoders -------------------------------------------------------------------------------------------

    def _text_latents(self, text: Tensor, text_mask: Optional[Tensor]) -> Tensor:
        positions = torch.arange(text.shape[1], device=text.device)
        x = self.text_emb(text) + self.text_pos_emb(positions)  # (B, n, dim_text)
        x = self.text_transformer(x, key_padding_mask=text_mask)
        if text_mask is None:
            pooled = x.mean(dim=1)
        else:  # mean over real tokens only
            keep = text_mask[..., None]
            pooled = x.masked_fill(~keep, 0.0).sum(dim=1) / keep.sum(dim=1).to(x.dtype)
        return F.normalize(self.to_text_latent(pooled), dim=-1)  # (B, dim_latent)

    def _image_latents(self, image: Tensor) -> Tensor:
        p = self.visual_patch_size
        patches = rearrange(image, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        x = self.to_visual_embedding(patches)  # (B, num_patches, dim_image)
        x = x + self.visual_pos_emb(torch.arange(x.shape[1], device=image.device))
        pooled = self.visual_transformer(x).mean(dim=1)
        return F.normalize(self.to_visual_latent(pooled), dim=-1)  # (B, dim_latent)

    def embed_text(self, text: Tensor, text_mask: Optional[Tensor] = None) -> Tensor:
        """L2-normalised text latents (B, dim_latent) for ids (B, n) and an optional bool mask (B, n)."""
        return self._text_latents(self._check_text(text, text_mask), text_mask)

    def embed_image(self, image: Tensor) -> Tensor:
        """L2-normalised image latents (B, dim_latent) for images (B, C, H, W) in [0, 1]."""
        return self._image_latents(self._check_images(image))

    @property
    def logit_scale(self) -> Tensor:
        """exp(temperature): the factor that turns cosine similarities into scores."""
        return self.temperature.exp()

    # --- scores ---------------------------------------------------------------------------------------------

    def similarity(self, text: Tensor, image: Tensor, text_mask: Optional[Tensor] = None) -> Tensor:
        """Scores (B_text, B_image) of every caption against every image."""
        text_latents = self.embed_text(text, text_mask)
        image_latents = self.embed_image(image)
        return text_latents @ image_latents.t() * self.logit_scale

    def forward(self, text: Tensor, image: Tensor, text_mask: Optional[Tensor] = None,
                return_loss: bool = False) -> Tensor:
        """Scores (B,) of each (text_i, image_i) pair, or with `return_loss` the symmetric InfoNCE loss."""
        text = self._check_text(text, text_mask)
        image = self._check_images(image)
        check_same_batch(text=text, image=image)
        text_latents = self._text_latents(text, text_mask)
        image_latents = self._image_latents(image)
        if not return_loss:
            return (text_latents * image_latents).sum(dim=-1) * self.logit_scale
        logits = text_latents @ image_latents.t() * self.logit_scale  # (B, B): row i = text i vs every image
        labels = torch.arange(text.shape[0], device=text.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2

    @torch.no_grad()
    @eval_decorator
    def rerank(self, text: Tensor, images: Tensor, top: int = 1, text_mask: Optional[Tensor] = None) -> RerankResult:
        """Keep the `top` best of N candidate images per caption: text (B, n), images (B, N, C, H, W)."""
        if not isinstance(images, Tensor) or images.ndim != 5:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor (batch, candidates, {self.channels}, {self.visual_image_size}, "
                             f"{self.visual_image_size}), got {got}")
        b, num = images.shape[:2]
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= num:
            raise ValueError(f"top must be an int in [1, {num}] (the number of candidates), got {top!r}")
        text = self._check_text(text, text_mask)
        check_same_batch(text=text, images=images)
        flat = check_images("images[:, i] (each candidate)", rearrange(images, "b n c h w -> (b n) c h w"),
                            channels=self.channels, image_size=self.visual_image_size)
        flat = flat.to(self.to_visual_embedding.weight.dtype)
        text_latents = self._text_latents(text, text_mask)  # (B, d): each caption encoded once
        image_latents = rearrange(self._image_latents(flat), "(b n) d -> b n d", b=b)
        scores = torch.einsum("bd,bnd->bn", text_latents, image_latents) * self.logit_scale  # (B, N)
        best, indices = scores.topk(top, dim=1)
        picked = images[torch.arange(b, device=images.device)[:, None], indices]  # (B, top, C, H, W)
        return RerankResult(images=picked, scores=best, indices=indices)
