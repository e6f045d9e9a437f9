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
from .config import TrainConfig, option
from .outputs import save_image_grid
from .schedules import cosine_anneal, cosine_ramp

__all__ = ["VAETrainConfig", "VAETrainer", "train_vae"]


@dataclass
class VAETrainConfig(TrainConfig):
    """dVAE training: the model's size, the Gumbel-softmax temperature schedule and the code-entropy / KL weights."""

    out: str = option("runs/vae", "output directory: checkpoints, samples, metrics.jsonl, the final model")
    lr: float = option(1e-3, "peak learning rate", "optim")

    image_size: int = option(128, "image side in pixels (a power of 2)", "model")
    num_tokens: int = option(8192, "codebook size", "model")
    codebook_dim: int = option(512, "codebook vector size", "model")
    num_layers: int = option(3, "downsamplings: the token grid is image_size / 2**num_layers a side", "model")
    num_resnet_blocks: int = option(2, "residual blocks in the encoder and in the decoder", "model")
    hidden_dim: int = option(256, "convolution channels", "model")
    channels: int = option(3, "image channels: 3 (RGB) or 4 (RGBA)", "model")
    smooth_l1_loss: bool = option(False, "smooth L1 instead of MSE reconstruction loss", "model")
    straight_through: bool = option(False, "hard one-hot samples with straight-through gradients", "model")
    reinmax: bool = option(False, "ReinMax gradients (with --straight-through)", "model")

    temp_start: float = option(1.0, "Gumbel-softmax temperature at update 0", "optim")
    temp_end: float = option(1 / 16, "temperature after the annealing (the paper: 1/16)", "optim")
    temp_anneal_steps: int = option(150_000, "updates of cosine annealing from temp_start to temp_end", "optim")
    kl_weight: float = option(0.0, "KL(q || uniform) weight after its warm-up (per latent position; it flattens "
                              "every position's posterior, so codes turn noisy: the entropy terms are the default)",
                              "optim")
    kl_warmup_steps: int = option(5000, "updates of cosine warm-up of the KL weight from 0", "optim")
    entropy_loss_weight: float = option(0.001, "weight of the entropy terms: confident codes at each position, "
                                        "spread over the codebook across the batch (DiscreteVAE's default)", "optim")
    diversity_gamma: float = option(3.0, "how much the batch's code entropy counts against the per-position "
                                    "entropy (DiscreteVAE's default)", "optim")

    # a run saved before the entropy terms existed trained without them (read by config_from_dict on --resume);
    # the model's own record, as the field names are its keywords
    LEGACY_CONFIG: ClassVar[Dict[str, Any]] = DiscreteVAE.LEGACY_CONFIG

    def validate(self) -> None:
        """Also refuse model sizes and schedule values that cannot train (before any model is built)."""
        super().validate()
        size = check_int("image_size", self.image_size, minimum=2)
        if size & (size - 1):
            raise ValueError(f"image_size must be a power of 2, got {size}")
        for name in ("num_tokens", "codebook_dim", "num_layers", "hidden_dim"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("num_resnet_blocks", self.num_resnet_blocks, minimum=0)
        if 2 ** self.num_layers > size:
            raise ValueError(f"num_layers {self.num_layers} halves image_size {size} below one pixel: need "
                             f"2**num_layers <= image_size")
        if self.channels not in (3, 4) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 3 (RGB) or 4 (RGBA), got {self.channels!r}")
        check_float("temp_start", self.temp_start, low=0.0, low_open=True)
        check_float("temp_end", self.temp_end, low=0.0, low_open=True)
        check_float("kl_weight", self.kl_weight, low=0.0)
        check_float("entropy_loss_weight", self.entropy_loss_weight, low=0.0)
        check_float("diversity_gamma", self.diversity_gamma, low=0.0)
        check_int("temp_anneal_steps", self.temp_anneal_steps, minimum=0)
        check_int("kl_warmup_steps", self.kl_warmup_steps, minimum=0)
        for name in ("smooth_l1_loss", "straight_through", "reinmax"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def temperature(self, step: int) -> float:
        """Gumbel-softmax temperature of update `step`."""
        return cosine_anneal(step, self.temp_start, self.temp_end, self.temp_anneal_steps)

    def kl_weight_at(self, step: int) -> float:
        """KL weight of update `step`."""
        return cosine_ramp(step, self.kl_weight, self.kl_warmup_steps)


class VAETrainer(Trainer):
    """Trains a `DiscreteVAE` on images (their captions are not used); logs codebook usage and perplexity."""

    config_class = VAETrainConfig
    kind = "vae"

    def build_model(self) -> nn.Module:
        c = self.config
        return DiscreteVAE(image_size=c.image_size, num_tokens=c.num_tokens, codebook_dim=c.codebook_dim,
                           num_layers=c.num_layers, num_resnet_blocks=c.num_resnet_blocks, hidden_dim=c.hidden_dim,
                           channels=c.channels, smooth_l1_loss=c.smooth_l1_loss, temperature=c.temp_start,
                           straight_through=c.straight_through, reinmax=c.reinmax, kl_div_loss_weight=c.kl_weight,
                           entropy_loss_weight=c.entropy_loss_weight, diversity_gamma=c.diversity_gamma)

    def load_model(self, directory: Path) -> nn.Module:
        return DiscreteVAE.from_pretrained(directory)

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        # images only: those without a caption are used too; one truncated token keeps reading captions cheap
        return dict(text_len=1, image_size=model.image_size, tokenizer=None, transparent=model.channels == 4,
                    truncate_captions=True, require_captions=False)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        temp, kl_weight = self.config.temperature(step), self.config.kl_weight_at(step)
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
    """Train a dVAE as `config` says (see `Trainer` for `dataset=` and `resume=`); returns the trained model."""
    return VAETrainer(config, **kwargs).train()
