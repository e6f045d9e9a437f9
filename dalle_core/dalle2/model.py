"""`DALLE2`: caption -> CLIP text embedding -> prior -> CLIP image embedding -> decoder -> image (unCLIP).

    dalle2 = DALLE2(prior=prior, decoder=decoder, clip=clip, tokenizer=tokenizer)
    images = dalle2(["a red circle"], cond_scale=2.0)           # (B, 3, S, S) in [0, 1]
    twins = dalle2.variations(images)                            # image -> CLIP image embedding -> decoder
    dalle2.save_pretrained("dalle2"); DALLE2.from_pretrained("dalle2")

The three models must agree: the prior's caption vocabulary and length are the CLIP's, its embedding size is
CLIP's `dim_latent`, as is the decoder's conditioning size, and the decoder draws images of CLIP's size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..files import PathOrStr
from ..models.clip import CLIP
from ..pretrained import PretrainedMixin, from_pretrained
from ..tokenizers import Tokenizer, find_tokenizer, load_tokenizer, save_tokenizer
from ..utils import check_float, eval_decorator
from .decoder import Decoder
from .prior import DiffusionPrior

__all__ = ["DALLE2"]


class DALLE2(PretrainedMixin, nn.Module, register=True):
    """A `DiffusionPrior`, a `Decoder` and the `CLIP` both were trained with, checked to agree.

    Args:
        prior: maps captions and their CLIP text embeddings to CLIP image embeddings.
        decoder: draws images from CLIP image embeddings.
        clip: the CLIP whose embeddings the prior and decoder were trained on.
        tokenizer: the captions' tokenizer (optional: ids work without it); saved beside the weights.
    """

    MODULE_ARGS = ("prior", "decoder", "clip")
    RECORDS_OWN_CONFIG = True  # no keywords of its own: the tokenizer is saved as a file, not in the config

    def __init__(self, *, prior: DiffusionPrior, decoder: Decoder, clip: CLIP, tokenizer: Optional[Tokenizer] = None):
        super().__init__()
        for name, value, cls in (("prior", prior, DiffusionPrior), ("decoder", decoder, Decoder), ("clip", clip, CLIP)):
            if not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__module__}.{cls.__name__}, got {type(value).__name__}")
        dim_latent = clip.to_text_latent.out_features
        checks = (("the prior's dim_embed", prior.dim_embed, "CLIP's dim_latent", dim_latent),
                  ("the prior's num_text_tokens", prior.num_text_tokens, "CLIP's num_text_tokens", clip.num_text_tokens),
                  ("the prior's text_seq_len", prior.text_seq_len, "CLIP's text_seq_len", clip.text_seq_len),
                  ("the decoder's cond_dim", decoder.unet.cond_dim, "CLIP's dim_latent", dim_latent),
                  ("the decoder's image_size", decoder.image_size, "CLIP's visual_image_size", clip.visual_image_size),
                  ("the decoder's channels", decoder.channels, "CLIP's channels", clip.channels))
        for a, x, b, y in checks:
            if x != y:
                raise ValueError(f"{a} ({x}) must equal {b} ({y}): were they trained together?")
        if tokenizer is not None and tokenizer.vocab_size != clip.num_text_tokens:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the CLIP reads {clip.num_text_tokens}")
        self.prior, self.decoder, self.clip = prior, decoder, clip
        self.tokenizer = tokenizer
        self.config = {}

    def _ids(self, text: Union[str, Sequence[str], Tensor]) -> Tensor:
        device = self.clip.text_emb.weight.device
        if isinstance(text, Tensor):
            return text.to(device)
        if isinstance(text, str):
            text = [text]
        if self.tokenizer is None:
            raise ValueError("captions as strings need a tokenizer: DALLE2(..., tokenizer=...) or pass token ids "
                             f"(batch, {self.clip.text_seq_len})")
        return self.tokenizer.tokenize(list(text), self.clip.text_seq_len, truncate_text=True).to(device)

    @torch.no_grad()
    @eval_decorator
    def image_embeddings(self, text: Union[str, Sequence[str], Tensor], *, cond_scale: float = 1.0,
                         candidates: int = 2, steps: Optional[int] = None, eta: float = 0.0,
                         generator: Optional[torch.Generator] = None) -> Tensor:
        """The prior's CLIP image embeddings (B, dim_latent) for captions (strings or ids (B, text_seq_len))."""
        ids = self._ids(text)
        text_embed = self.clip.embed_text(ids, ids != 0)
        return self.prior.sample(ids, text_embed, cond_scale=cond_scale, candidates=candidates, steps=steps, eta=eta,
                                 generator=generator)

    @torch.no_grad()
    @eval_decorator
    def forward(self, text: Union[str, Sequence[str], Tensor], *, cond_scale: float = 1.0,
                prior_cond_scale: Optional[float] = None, decoder_cond_scale: Optional[float] = None,
                candidates: int = 2, prior_steps: Optional[int] = None, decoder_steps: Optional[int] = None,
                eta: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images (B, C, S, S) in [0, 1] for captions (a string, strings, or ids (B, text_seq_len)).

        cond_scale: classifier-free guidance of both the prior and the decoder, unless `prior_cond_scale` /
        `decoder_cond_scale` give each its own; candidates: the prior's draws per caption (the best by dot
        product with the text embedding is kept); *_steps: DDIM steps (default: each model's sample_steps).
        """
        check_float("cond_scale", cond_scale)
        embed = self.image_embeddings(text, cond_scale=cond_scale if prior_cond_scale is None else prior_cond_scale,
                                      candidates=candidates, steps=prior_steps, eta=eta, generator=generator)
        return self.decoder.sample(embed, cond_scale=cond_scale if decoder_cond_scale is None else decoder_cond_scale,
                                   steps=decoder_steps, eta=eta, generator=generator)

    @torch.no_grad()
    @eval_decorator
    def variations(self, images: Tensor, *, cond_scale: float = 1.0, steps: Optional[int] = None, eta: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> Tensor:
        """Variations of images (B, C, S, S) in [0, 1]: their CLIP image embeddings drawn again by the decoder."""
        return self.decoder.sample(self.clip.embed_image(images), cond_scale=cond_scale, steps=steps, eta=eta,
                                   generator=generator)

    def save_pretrained(self, directory: PathOrStr) -> Path:
        """config.json + model.safetensors (the three models), and the tokenizer when there is one."""
        directory = super().save_pretrained(directory)
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: PathOrStr, map_location: Union[str, torch.device, None] = None, *,
                        allow_nonfinite: bool = False) -> "DALLE2":
        """The DALLE2 saved in `directory` (or a Hub repo id), with the tokenizer saved beside it if any."""
        from ..hub import resolve

        directory = resolve(directory)
        model = from_pretrained(cls, directory, map_location=map_location, allow_nonfinite=allow_nonfinite)
        saved = find_tokenizer(directory)
        if saved is not None:
            tokenizer = load_tokenizer(saved)
            if tokenizer.vocab_size != model.clip.num_text_tokens:
                raise ValueError(f"{saved}: a tokenizer of {tokenizer.vocab_size} ids, but the CLIP reads "
                                 f"{model.clip.num_text_tokens}")
            model.tokenizer = tokenizer
        return model
