"""Stage 1: train an image tokenizer: the dVAE (with the paper's temperature annealing and KL-weight warm-up), a
VQ-VAE with a VQ, FSQ or LFQ bottleneck, or a VQGAN, chosen by `kind` (`dalle-core train-vae --kind ...`)."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Tuple

import torch
from torch import Tensor, nn

from ..pretrained import from_pretrained
from ..utils import check_float, check_int
from ..models.vae import DiscreteVAE, codebook_usage
from ..models.vqvae import VQVAE
from .batches import Batch
from .common import Trainer
from .config import TrainConfig, model_options, option
from .outputs import save_image_grid
from .schedules import cosine_anneal, cosine_ramp

__all__ = ["VAETrainConfig", "VAETrainer", "train_vae", "build_tokenizer", "KINDS"]


KINDS = ("dvae", "vq", "fsq", "lfq", "vqgan")
SHARED = ("image_size", "num_tokens", "codebook_dim", "num_layers", "num_resnet_blocks", "hidden_dim", "channels",
          "smooth_l1_loss")  # keywords every kind takes, with the same meaning


@dataclass
@model_options(VQVAE, skip=SHARED + ("quantizer",),
               groups=dict(commitment_weight="optim", codebook_decay="optim", dead_code_threshold="optim",
                           lfq_entropy_weight="optim", lfq_diversity_gamma="optim", lfq_temperature="optim"))
@model_options(DiscreteVAE, defaults=dict(image_size=128, num_tokens=8192, num_resnet_blocks=2, hidden_dim=256,
                                          temperature=1.0),
               groups=dict(temperature="optim", kl_div_loss_weight="optim", entropy_loss_weight="optim",
                           diversity_gamma="optim"))
class VAETrainConfig(TrainConfig):
    """Image tokenizer training: `kind`, the models' keywords (the dVAE's: `temperature` is where the annealing
    starts, `kl_div_loss_weight` where the KL weight's warm-up ends; `VQVAE`'s), the dVAE's temperature schedule
    and KL warm-up. A keyword of a kind other than `kind` must stay at its default."""

    kind: str = option("dvae", "the image tokenizer: dvae (Gumbel-softmax dVAE), vq (VQ-VAE, EMA codebook), fsq "
                               "(finite scalar quantisation), lfq (lookup-free quantisation) or vqgan (taming's "
                               "VQGAN with a patch discriminator)", "model")

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
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        takes = self.kind_keywords()
        stray = [name for name in self.all_model_kwargs() if name not in takes and getattr(self, name) != defaults[name]]
        if stray:
            flags = ", ".join("--" + n.replace("_", "-") for n in stray)
            raise ValueError(f"{flags} {'does' if len(stray) == 1 else 'do'} not apply to --kind {self.kind} "
                             f"(only to {', '.join(k for k in KINDS if k != self.kind)}): leave "
                             f"{'it' if len(stray) == 1 else 'them'} at the default")
        self.check_model()

    def all_model_kwargs(self) -> Dict[str, Any]:
        """Every model keyword field, of every kind."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("model_kwarg")}

    def kind_keywords(self) -> Tuple[str, ...]:
        """The keyword fields the model of `kind` takes."""
        cls = DiscreteVAE if self.kind == "dvae" else VQVAE
        names = tuple(inspect.signature(cls.__init__).parameters)
        return names if self.kind != "vqgan" else SHARED

    def model_kwargs(self) -> Dict[str, Any]:
        """The keywords of the model `kind` builds."""
        takes = self.kind_keywords()
        kwargs = {k: v for k, v in self.all_model_kwargs().items() if k in takes}
        if self.kind in ("vq", "fsq", "lfq"):
            kwargs["quantizer"] = self.kind
        return kwargs

    def check_model(self, **extra: Any) -> None:
        """Refuse keywords that cannot build the model, before any data is read (the dVAE is built on the meta
        device; the others check their keywords without building anything)."""
        if self.kind == "dvae":
            super().check_model()
        elif self.kind == "vqgan":
            raise NotImplementedError("vqgan")
        else:
            VQVAE.check_keywords(**self.model_kwargs())

    def temperature_at(self, step: int) -> float:
        """Gumbel-softmax temperature of update `step`."""
        return cosine_anneal(step, self.temperature, self.temp_end, self.temp_anneal_steps)

    def kl_weight_at(self, step: int) -> float:
        """KL weight of update `step`."""
        return cosine_ramp(step, self.kl_div_loss_weight, self.kl_warmup_steps)


def build_tokenizer(config: VAETrainConfig) -> nn.Module:
    """A freshly initialised model of `config.kind` with the config's keywords (for vqgan: the VQGAN and its
    training loss, the discriminator, together)."""
    kwargs = config.model_kwargs()
    if config.kind == "dvae":
        return DiscreteVAE(**kwargs)
    if config.kind == "vqgan":
        raise NotImplementedError("vqgan")  # filled in below
    return VQVAE(**kwargs)


def tokenizer_of(model: nn.Module) -> nn.Module:
    """The image tokenizer inside what the trainer trains (a VQGAN's trainer also holds its discriminator)."""
    return getattr(model, "vae", model)


class VAETrainer(Trainer):
    """Trains an image tokenizer of `config.kind` on images (their captions are not used); logs codebook usage and
    perplexity."""

    config_class = VAETrainConfig
    kind = "vae"

    def build_model(self) -> nn.Module:
        return build_tokenizer(self.config)

    def load_model(self, directory: Path) -> nn.Module:
        return from_pretrained(None, directory)

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        # images only: those without a caption are used too; one truncated token keeps reading captions cheap
        vae = tokenizer_of(model)
        return dict(text_len=1, image_size=vae.image_size, tokenizer=None, transparent=vae.channels == 4,
                    truncate_captions=True, require_captions=False)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        if self.config.kind != "dvae":
            return model(batch.images, return_loss=True), {}
        temp, kl_weight = self.config.temperature_at(step), self.config.kl_weight_at(step)
        self.unwrapped.kl_div_loss_weight = kl_weight  # read by forward; the saved config keeps the target
        loss = model(batch.images, return_loss=True, temp=temp)
        return loss, {"temperature": temp, "kl_weight": kl_weight}

    @torch.no_grad()
    def extra_metrics(self, model: nn.Module, batch: Batch) -> Dict[str, float]:
        vae = tokenizer_of(model)
        usage = codebook_usage(vae.get_codebook_indices(batch.images), vae.num_tokens)
        return {"codebook_usage": usage.usage, "perplexity": usage.perplexity}

    @torch.no_grad()
    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        vae = tokenizer_of(model)
        images = fixed.images.to(self.accelerator.device)
        codes = vae.get_codebook_indices(images)
        recons = vae.decode(codes).float()
        # top row: the images; bottom row: their reconstructions from the hard codes (what DALLE learns from)
        save_image_grid(torch.cat([images.float(), recons]), self.out / "samples" / f"step-{step:08d}.png",
                        nrow=len(images))
        usage = codebook_usage(codes, vae.num_tokens)
        return {"sample_codebook_usage": usage.usage, "sample_perplexity": usage.perplexity,
                "sample_mse": float(torch.mean((recons - images.float()) ** 2))}

    def train(self) -> nn.Module:
        """Train as `Trainer.train` does; returns the trained image tokenizer."""
        return tokenizer_of(super().train())


def train_vae(config: VAETrainConfig, **kwargs: Any) -> nn.Module:
    """Train an image tokenizer as `config` says (see `Trainer` for `dataset=`, `resume=` and `callbacks=`);
    returns the trained model (a `DiscreteVAE`, `VQVAE` or `VQGanVAE`)."""
    return VAETrainer(config, **kwargs).train()
