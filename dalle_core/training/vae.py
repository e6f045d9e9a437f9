"""Stage 1: train the discrete VAE, with the paper's temperature annealing and KL-weight warm-up."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Tuple

import torch
from torch import Tensor, nn

from ..utils import check_float, check_int
from ..models.vae import DiscreteVAE, codebook_usage
from .batches import Batch
from .common import Trainer
from .config import TrainConfig, model_options, option
from .outputs import save_image_grid
from .schedules import cosine_anneal, cosine_ramp

__all__ = ["VAETrainConfig", "VAETrainer", "train_vae"]


@dataclass
@model_options(DiscreteVAE, defaults=dict(image_size=128, num_tokens=8192, num_resnet_blocks=2, hidden_dim=256,
                                          temperature=1.0),
               groups=dict(temperature="optim", kl_div_loss_weight="optim", entropy_loss_weight="optim",
                           diversity_gamma="optim"))
class VAETrainConfig(TrainConfig):
    """dVAE training: the model's keywords (`temperature` is where the annealing starts, `kl_div_loss_weight`
    where the KL weight's warm-up ends), the temperature schedule and the KL warm-up."""

    out: str = option("runs/vae", "output directory: checkpoints, samples, metrics.jsonl, the final model")
    lr: float = option(1e-3, "peak learning rate", "optim")
    temp_end: float = option(1 / 16, "temperature after the annealing (the paper: 1/16)", "optim")
    temp_anneal_steps: int = option(150_000, "updates of cosine annealing from temperature to temp_end", "optim")
    kl_warmup_steps: int = option(5000, "updates of cosine warm-up of the KL weight from 0", "optim")

    RENAMED: ClassVar[Dict[str, str]] = {"temp_start": "temperature", "kl_weight": "kl_div_loss_weight"}
    # a run saved before the entropy terms existed trained without them (read by config_from_dict on --resume);
    # the model's own record, as the field names are its keywords
    LEGACY_CONFIG: ClassVar[Dict[str, Any]] = DiscreteVAE.LEGACY_CONFIG

    def validate(self) -> None:
        """Also refuse model options and schedule values that cannot train (before any model is built)."""
        super().validate()
        if self.channels not in (3, 4):
            raise ValueError(f"channels must be 3 (RGB) or 4 (RGBA), got {self.channels!r}")
        check_float("temp_end", self.temp_end, low=0.0, low_open=True)
        check_int("temp_anneal_steps", self.temp_anneal_steps, minimum=0)
        check_int("kl_warmup_steps", self.kl_warmup_steps, minimum=0)
        self.check_model()

    def temperature_at(self, step: int) -> float:
        """Gumbel-softmax temperature of update `step`."""
        return cosine_anneal(step, self.temperature, self.temp_end, self.temp_anneal_steps)

    def kl_weight_at(self, step: int) -> float:
        """KL weight of update `step`."""
        return cosine_ramp(step, self.kl_div_loss_weight, self.kl_warmup_steps)


class VAETrainer(Trainer):
    """Trains a `DiscreteVAE` on images (their captions are not used); logs codebook usage and perplexity."""

    config_class = VAETrainConfig
    kind = "vae"

    def build_model(self) -> nn.Module:
        return DiscreteVAE(**self.config.model_kwargs())

    def load_model(self, directory: Path) -> nn.Module:
        return DiscreteVAE.from_pretrained(directory)

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        # images only: those without a caption are used too; one truncated token keeps reading captions cheap
        return dict(text_len=1, image_size=model.image_size, tokenizer=None, transparent=model.channels == 4,
                    truncate_captions=True, require_captions=False)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        temp, kl_weight = self.config.temperature_at(step), self.config.kl_weight_at(step)
        self.unwrapped.kl_div_loss_weight = kl_weight  # read by forward; the saved config keeps the target
        loss = model(batch.images, return_loss=True, temp=temp)
        return loss, {"temperature": temp, "kl_weight": kl_weight}

    @torch.no_grad()
    def extra_metrics(self, model: nn.Module, batch: Batch) -> Dict[str, float]:
        usage = codebook_usage(model.get_codebook_indices(batch.images), model.num_tokens)
        return {"codebook_usage": usage.usage, "perplexity": usage.perplexity}

    @torch.no_grad()
    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        images = fixed.images.to(self.accelerator.device)
        codes = model.get_codebook_indices(images)
        recons = model.decode(codes).float()
        # top row: the images; bottom row: their reconstructions from the hard codes (what DALLE learns from)
        save_image_grid(torch.cat([images.float(), recons]), self.out / "samples" / f"step-{step:08d}.png",
                        nrow=len(images))
        usage = codebook_usage(codes, model.num_tokens)
        return {"sample_codebook_usage": usage.usage, "sample_perplexity": usage.perplexity,
                "sample_mse": float(torch.mean((recons - images.float()) ** 2))}


def train_vae(config: VAETrainConfig, **kwargs: Any) -> DiscreteVAE:
    """Train a dVAE as `config` says (see `Trainer` for `dataset=`, `resume=` and `callbacks=`); returns the trained model."""
    return VAETrainer(config, **kwargs).train()
