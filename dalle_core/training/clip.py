"""Train the CLIP reranker contrastively on (caption, image) pairs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..utils import check_int
from ..models.clip import CLIP
from .batches import Batch
from .checkpointing import find_tokenizer, load_tokenizer, save_tokenizer
from .common import Trainer
from .config import TrainConfig, option

__all__ = ["CLIPTrainConfig", "CLIPTrainer", "train_clip"]


@dataclass
class CLIPTrainConfig(TrainConfig):
    """CLIP training: the two encoders' sizes and the tokenizer."""

    out: str = option("runs/clip", "output directory: checkpoints, metrics.jsonl, the final model")
    batch_size: int = option(32, "samples per process per micro-batch (the contrastive loss wants many)", "optim")
    truncate_captions: bool = option(True, "cut captions longer than text_seq_len (else they raise)", "data")

    tokenizer: Optional[str] = option(None, "tokenizer file (Tokenizer.load); default: UTF-8 bytes", "model")
    dim_text: int = option(512, "text encoder width", "model")
    dim_image: int = option(512, "image encoder width", "model")
    dim_latent: int = option(512, "shared latent size", "model")
    text_enc_depth: int = option(6, "text encoder layers", "model")
    text_seq_len: int = option(256, "caption tokens", "model")
    text_heads: int = option(8, "text encoder heads", "model")
    visual_enc_depth: int = option(6, "image encoder layers", "model")
    visual_heads: int = option(8, "image encoder heads", "model")
    visual_image_size: int = option(256, "image side in pixels", "model")
    visual_patch_size: int = option(32, "patch side in pixels", "model")
    channels: int = option(3, "image channels: 3 (RGB) or 4 (RGBA)", "model")

    def validate(self) -> None:
        """Also refuse encoder sizes that cannot build a model, before any training step."""
        super().validate()
        for name in ("dim_text", "dim_image", "dim_latent", "text_enc_depth", "text_seq_len", "text_heads",
                     "visual_enc_depth", "visual_heads", "visual_image_size", "visual_patch_size"):
            check_int(name, getattr(self, name), minimum=1)
        if self.visual_image_size % self.visual_patch_size:
            raise ValueError(f"visual_image_size ({self.visual_image_size}) must be divisible by visual_patch_size "
                             f"({self.visual_patch_size})")
        if self.channels not in (3, 4) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 3 (RGB) or 4 (RGBA), got {self.channels!r}")
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise TypeError(f"tokenizer must be a str (a path) or None, got {type(self.tokenizer).__name__}")


class CLIPTrainer(Trainer):
    """Trains a `CLIP`; at sample time it logs in-batch retrieval accuracy on a fixed batch (no images)."""

    config_class = CLIPTrainConfig
    kind = "clip"

    def __init__(self, config: CLIPTrainConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        saved = find_tokenizer(self.checkpoint / "model") if self.checkpoint else None
        self.tokenizer = load_tokenizer(str(saved) if saved else config.tokenizer)

    def build_model(self) -> nn.Module:
        c = self.config
        return CLIP(dim_text=c.dim_text, dim_image=c.dim_image, dim_latent=c.dim_latent,
                    num_text_tokens=self.tokenizer.vocab_size, text_enc_depth=c.text_enc_depth,
                    text_seq_len=c.text_seq_len, text_heads=c.text_heads, visual_enc_depth=c.visual_enc_depth,
                    visual_heads=c.visual_heads, visual_image_size=c.visual_image_size,
                    visual_patch_size=c.visual_patch_size, channels=c.channels)

    def load_model(self, directory: Path) -> nn.Module:
        return CLIP.from_pretrained(directory)

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        return dict(text_len=model.text_seq_len, image_size=model.visual_image_size, tokenizer=self.tokenizer,
                    transparent=model.channels == 4, truncate_captions=self.config.truncate_captions)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        return model(batch.text, batch.images, text_mask=batch.text != 0, return_loss=True), {}

    @torch.no_grad()
    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        device = self.accelerator.device
        text, images = fixed.text.to(device), fixed.images.to(device)
        scores = model.similarity(text, images, text_mask=text != 0)  # (B, B)
        target = torch.arange(len(text), device=device)
        return {"retrieval_text_to_image": float((scores.argmax(dim=1) == target).float().mean()),
                "retrieval_image_to_text": float((scores.argmax(dim=0) == target).float().mean())}

    def export(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        save_tokenizer(self.tokenizer, directory)


def train_clip(config: CLIPTrainConfig, **kwargs: Any) -> CLIP:
    """Train a CLIP as `config` says (see `Trainer` for `dataset=` and `resume=`); returns the trained model."""
    return CLIPTrainer(config, **kwargs).train()
