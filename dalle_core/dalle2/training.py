"""Train DALL-E 2's prior and decoder over a frozen, trained CLIP, on the same loop as every other trainer.

```python
from dalle_core.dalle2.training import PriorTrainConfig, DecoderTrainConfig, train_prior, train_decoder
prior = train_prior(PriorTrainConfig(clip="runs/clip/model", folder="data/", out="runs/prior", steps=2000))
decoder = train_decoder(DecoderTrainConfig(clip="runs/clip/model", folder="data/", out="runs/decoder"))
```
`dalle-core train-prior` / `train-decoder` map their flags onto these configs. The CLIP (a `train-clip` model
folder, which holds its tokenizer) gives each batch's text and image embeddings; it is never updated.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..models.clip import CLIP
from ..tokenizers import find_tokenizer, load_tokenizer, save_tokenizer
from ..training.batches import Batch
from ..training.common import Trainer
from ..training.config import TrainConfig, model_options, option
from ..training.outputs import save_image_grid
from ..utils import set_requires_grad
from .decoder import Decoder, Unet
from .prior import DiffusionPrior

__all__ = ["PriorTrainConfig", "PriorTrainer", "train_prior", "DecoderTrainConfig", "DecoderTrainer",
           "train_decoder", "load_clip"]


def load_clip(path: Optional[str]) -> CLIP:
    """The frozen CLIP of a `train-clip` model folder (eval mode, no gradients)."""
    if path is None:
        raise ValueError("the prior and the decoder learn CLIP's embeddings: pass --clip DIR (a train-clip model "
                         "folder, e.g. runs/clip/model)")
    if not isinstance(path, str):
        raise TypeError(f"clip must be a str (a path), got {type(path).__name__}")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"--clip {path!r}: not a directory (expected a train-clip model folder)")
    clip = CLIP.from_pretrained(path).eval()
    set_requires_grad(clip, False)
    return clip


class _OverCLIP(Trainer):
    """What the prior's and the decoder's trainers share: the frozen CLIP, its tokenizer and image size."""

    def __init__(self, config: Any, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.clip = load_clip(config.clip).to(self.accelerator.device)
        saved = find_tokenizer(self.checkpoint / "model") if self.checkpoint else None
        path = saved or config.tokenizer or find_tokenizer(Path(config.clip))
        self.tokenizer = load_tokenizer(str(path) if path else None)
        if self.tokenizer.vocab_size != self.clip.num_text_tokens:
            raise ValueError(f"the tokenizer ({path or 'bytes'}) has {self.tokenizer.vocab_size} ids but the CLIP "
                             f"reads {self.clip.num_text_tokens}: pass the CLIP's --tokenizer")

    @property
    def dim_latent(self) -> int:
        return self.clip.to_text_latent.out_features

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        return dict(text_len=self.clip.text_seq_len, image_size=self.clip.visual_image_size,
                    tokenizer=self.tokenizer, transparent=self.clip.channels == 4,
                    truncate_captions=self.config.truncate_captions)

    @torch.no_grad()
    def embeddings(self, batch: Batch) -> Tuple[Tensor, Tensor, Tensor]:
        """(caption ids, CLIP text embeddings, CLIP image embeddings) of a batch, on the batch's device."""
        text = batch.text
        return text, self.clip.embed_text(text, text != 0), self.clip.embed_image(batch.images)

    def export(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        save_tokenizer(self.tokenizer, directory)


def _clip_options() -> Dict[str, Any]:
    """The fields both configs add (fresh field objects for each dataclass)."""
    return dict(
        clip=option(None, "the trained CLIP: a train-clip model folder (its tokenizer is used unless --tokenizer)",
                    "model"),
        tokenizer=option(None, "tokenizer file; default: the one saved in the CLIP folder", "model"),
        truncate_captions=option(True, "cut captions longer than the CLIP's text_seq_len (else they raise)", "data"))


@dataclass
@model_options(DiffusionPrior, skip=("dim_embed", "num_text_tokens", "text_seq_len"),
               defaults=dict(dim=256, depth=4, heads=4, dim_head=64))
class PriorTrainConfig(TrainConfig):
    """Prior training: DiffusionPrior's keywords (its sizes from the CLIP's) and the CLIP it learns."""

    out: str = option("runs/prior", "output directory: checkpoints, metrics.jsonl, the final model")
    batch_size: int = option(64, "samples per process per micro-batch", "optim")
    clip: Optional[str] = _clip_options()["clip"]
    tokenizer: Optional[str] = _clip_options()["tokenizer"]
    truncate_captions: bool = _clip_options()["truncate_captions"]

    def validate(self) -> None:
        super().validate()
        self.check_model(dim_embed=1, num_text_tokens=1, text_seq_len=1)


class PriorTrainer(_OverCLIP):
    """Trains a `DiffusionPrior` on CLIP's (text, image) embeddings; samples log the cosine between the drawn
    and the true image embeddings of a fixed batch."""

    config_class = PriorTrainConfig
    kind = "prior"

    def build_model(self) -> nn.Module:
        return DiffusionPrior(dim_embed=self.dim_latent, num_text_tokens=self.clip.num_text_tokens,
                              text_seq_len=self.clip.text_seq_len, **self.config.model_kwargs())

    def load_model(self, directory: Path) -> nn.Module:
        return DiffusionPrior.from_pretrained(directory)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        return model(*self.embeddings(batch)), {}

    @torch.no_grad()
    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        device = self.accelerator.device
        text, text_embed, image_embed = self.embeddings(Batch(fixed.text.to(device), fixed.images.to(device), None))
        gen = torch.Generator(device=device).manual_seed(self.config.seed)
        drawn = model.sample(text, text_embed, generator=gen)
        return {"sample_cosine_to_image_embed": float((drawn * image_embed).sum(-1).mean()),
                "true_cosine_text_image": float((text_embed * image_embed).sum(-1).mean())}


_UNET_KEYS = tuple(inspect.signature(Unet.__init__).parameters)[1:]  # the rest of the keywords are Decoder's


@dataclass
@model_options(Decoder, skip=("image_size",))
@model_options(Unet, skip=("cond_dim", "channels"), defaults=dict(dim=32, dim_mults=(1, 2, 2), attn_levels=0))
class DecoderTrainConfig(TrainConfig):
    """Decoder training: Unet's and Decoder's keywords (the image size and the embedding size are the CLIP's) and
    the CLIP whose image embeddings it learns to draw from."""

    out: str = option("runs/decoder", "output directory: checkpoints, samples, metrics.jsonl, the final model")
    batch_size: int = option(32, "samples per process per micro-batch", "optim")
    clip: Optional[str] = _clip_options()["clip"]
    tokenizer: Optional[str] = _clip_options()["tokenizer"]
    truncate_captions: bool = _clip_options()["truncate_captions"]
    sample_steps_grid: int = option(25, "DDIM steps for the sample grids")

    def unet_kwargs(self) -> Dict[str, Any]:
        return {k: v for k, v in self.model_kwargs().items() if k in _UNET_KEYS}

    def decoder_kwargs(self) -> Dict[str, Any]:
        return {k: v for k, v in self.model_kwargs().items() if k not in _UNET_KEYS}

    def validate(self) -> None:
        super().validate()
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            unet = Unet(cond_dim=1, **self.unet_kwargs())
            Decoder(unet, image_size=2 ** (unet.num_levels - 1), **self.decoder_kwargs())


class DecoderTrainer(_OverCLIP):
    """Trains a `Decoder` to draw images from their CLIP image embeddings; sample grids show a fixed batch of
    real images above the decoder's drawings from their embeddings."""

    config_class = DecoderTrainConfig
    kind = "decoder"

    def build_model(self) -> nn.Module:
        unet = Unet(cond_dim=self.dim_latent, channels=self.clip.channels, **self.config.unet_kwargs())
        return Decoder(unet, image_size=self.clip.visual_image_size, **self.config.decoder_kwargs())

    def load_model(self, directory: Path) -> nn.Module:
        return Decoder.from_pretrained(directory)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        _, _, image_embed = self.embeddings(batch)
        return model(batch.images, image_embed), {}

    @torch.no_grad()
    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        device = self.accelerator.device
        real = fixed.images.to(device)
        gen = torch.Generator(device=device).manual_seed(self.config.seed)
        drawn = model.sample(self.clip.embed_image(real), steps=self.config.sample_steps_grid,
                             generator=gen)
        save_image_grid(torch.cat([real.float(), drawn.float()]), self.out / "samples" / f"step-{step:08d}.png",
                        nrow=len(real))
        return {"sample_mse": float(((drawn - real) ** 2).mean())}


def train_prior(config: PriorTrainConfig, **kwargs: Any) -> DiffusionPrior:
    """Train a DiffusionPrior as `config` says (see `Trainer` for `dataset=`, `resume=`, `callbacks=`)."""
    return PriorTrainer(config, **kwargs).train()


def train_decoder(config: DecoderTrainConfig, **kwargs: Any) -> Decoder:
    """Train a Decoder as `config` says (see `Trainer` for `dataset=`, `resume=`, `callbacks=`)."""
    return DecoderTrainer(config, **kwargs).train()
