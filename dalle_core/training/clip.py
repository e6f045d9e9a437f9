"""Train the CLIP reranker contrastively on (caption, image) pairs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..models.clip import CLIP
from ..tokenizers import find_tokenizer, load_tokenizer, save_tokenizer
from .batches import Batch
from .common import Trainer
from .config import TrainConfig, model_options, option

__all__ = ["CLIPTrainConfig", "CLIPTrainer", "train_clip"]


@dataclass
@model_options(CLIP, skip=("num_text_tokens", "num_visual_tokens"))
class CLIPTrainConfig(TrainConfig):
    """CLIP training: the two encoders' keywords (CLIP's) and the tokenizer, which sets the vocabulary."""

    out: str = option("runs/clip", "output directory: checkpoints, metrics.jsonl, the final model")
    batch_size: int = option(32, "samples per process per micro-batch (the contrastive loss wants many)", "optim")
    truncate_captions: bool = option(True, "cut captions longer than text_seq_len (else they raise)", "data")
    tokenizer: Optional[str] = option(None, "tokenizer file (Tokenizer.load); default: UTF-8 bytes", "model")

    def validate(self) -> None:
        """Also refuse encoder options that cannot build a model, before any training step."""
        super().validate()
        if self.channels not in (3, 4):
            raise ValueError(f"channels must be 3 (RGB) or 4 (RGBA), got {self.channels!r}")
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            raise TypeError(f"tokenizer must be a str (a path) or None, got {type(self.tokenizer).__name__}")
        self.check_model(num_text_tokens=1)  # the tokenizer's size is known once it is loaded

class CLIPTrainer(Trainer):
    """Trains a `CLIP`; at sample time it logs in-batch retrieval accuracy on a fixed batch (no images)."""

    config_class = CLIPTrainConfig
    kind = "clip"

    def __init__(self, config: CLIPTrainConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        saved = find_tokenizer(self.checkpoint / "model") if self.checkpoint else None
        self.tokenizer = load_tokenizer(str(saved) if saved else config.tokenizer)

    def build_model(self) -> nn.Module:
        return CLIP(num_text_tokens=self.tokenizer.vocab_size, **self.config.model_kwargs())

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
    """Train a CLIP as `config` says (see `Trainer` for `dataset=`, `resume=` and `callbacks=`); returns the trained model."""
    return CLIPTrainer(config, **kwargs).train()
