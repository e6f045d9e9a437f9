"""Stage 1: train an image tokenizer: the dVAE (with the paper's temperature annealing and KL-weight warm-up), a
VQ-VAE with a VQ, FSQ or LFQ bottleneck, or a VQGAN, chosen by `kind` (`dalle-core train-vae --kind ...`)."""
from __future__ import annotations

import dataclasses
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..pretrained import from_pretrained, read_safetensors, write_safetensors
from ..validation import check_finite
from ..utils import check_float, check_int
from ..models.vae import DiscreteVAE, codebook_usage
from ..models.vqgan import LPIPS, VQGANLoss, VQGanVAE, vqgan_architecture
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


VQGAN_SHARED = tuple(k for k in SHARED if k not in ("smooth_l1_loss", "channels"))  # a VQGAN: L1, RGB
LOSS_FILE = "vqgan_loss.safetensors"  # a VQGAN run's discriminator, beside the VQGAN in a checkpoint's model/


@dataclass
@model_options(VQGANLoss, skip=("perceptual",),
               groups=dict(disc_start="optim", disc_weight="optim", disc_factor="optim", codebook_weight="optim",
                           perceptual_weight="optim"))
@model_options(VQVAE, skip=SHARED + ("quantizer",),
               groups=dict(commitment_weight="optim", codebook_decay="optim", dead_code_threshold="optim",
                           lfq_entropy_weight="optim", lfq_diversity_gamma="optim", lfq_temperature="optim",
                           lfq_commitment_weight="optim"))
@model_options(DiscreteVAE, defaults=dict(image_size=128, num_tokens=8192, num_resnet_blocks=2, hidden_dim=256,
                                          temperature=1.0),
               groups=dict(temperature="optim", kl_div_loss_weight="optim", entropy_loss_weight="optim",
                           diversity_gamma="optim"))
class VAETrainConfig(TrainConfig):
    """Image tokenizer training: `kind`, the models' keywords (the dVAE's: `temperature` is where the annealing
    starts, `kl_div_loss_weight` where the KL weight's warm-up ends; `VQVAE`'s), the dVAE's temperature schedule
    and KL warm-up. A keyword of a kind other than `kind` must stay at its default."""

    attention: bool = field(default=True, metadata={
        "help": "vqgan: self-attention blocks at the code grid's resolution (taming's attn_resolutions)",
        "group": "model", "model_kwarg": True})
    lpips_vgg_path: Optional[str] = option(None, "vqgan: torchvision's VGG16 weights (vgg16-397923af.pth), for the "
                                                 "perceptual loss; with --lpips-path. Nothing is downloaded", "optim")
    lpips_path: Optional[str] = option(None, "vqgan: LPIPS's linear layers (taming's vgg.pth), for the perceptual "
                                             "loss; with --lpips-vgg-path", "optim")
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
            raise ValueError(f"{flags} {'does' if len(stray) == 1 else 'do'} not apply to --kind {self.kind}: leave "
                             f"{'it' if len(stray) == 1 else 'them'} at the default")
        self.check_model()

    def all_model_kwargs(self) -> Dict[str, Any]:
        """Every model keyword field, of every kind."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("model_kwarg")}

    def kind_keywords(self) -> Tuple[str, ...]:
        """The keyword fields the model of `kind` takes."""
        if self.kind == "vqgan":
            return VQGAN_SHARED + ("attention",) + tuple(inspect.signature(VQGANLoss.__init__).parameters)
        cls = DiscreteVAE if self.kind == "dvae" else VQVAE
        return tuple(inspect.signature(cls.__init__).parameters)

    def model_kwargs(self) -> Dict[str, Any]:
        """The keywords of the model `kind` builds."""
        takes = self.kind_keywords()
        kwargs = {k: v for k, v in self.all_model_kwargs().items() if k in takes}
        if self.kind in ("vq", "fsq", "lfq"):
            kwargs["quantizer"] = self.kind
        return kwargs

    def architecture_kwargs(self) -> Dict[str, Any]:
        """vqgan: the keywords of `vqgan_architecture`."""
        return {k: getattr(self, k) for k in VQGAN_SHARED + ("attention",)}

    def loss_kwargs(self) -> Dict[str, Any]:
        """vqgan: the keywords of `VQGANLoss` (its perceptual network aside)."""
        names = inspect.signature(VQGANLoss.__init__).parameters
        return {k: getattr(self, k) for k in names if k not in ("self", "perceptual")}

    def check_model(self, **extra: Any) -> None:
        """Refuse keywords that cannot build the model, before any data is read (the dVAE is built on the meta
        device; the others check their keywords without building anything)."""
        if self.kind == "dvae":
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                DiscreteVAE(**self.model_kwargs())
        elif self.kind == "vqgan":
            if (self.lpips_vgg_path is None) != (self.lpips_path is None):
                raise ValueError("the perceptual loss needs both --lpips-vgg-path and --lpips-path (or neither)")
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                VQGanVAE(architecture=vqgan_architecture(**self.architecture_kwargs()), image_size=self.image_size)
                VQGANLoss(**self.loss_kwargs())
        else:
            VQVAE.check_keywords(**self.model_kwargs())

    def temperature_at(self, step: int) -> float:
        """Gumbel-softmax temperature of update `step`."""
        return cosine_anneal(step, self.temperature, self.temp_end, self.temp_anneal_steps)

    def kl_weight_at(self, step: int) -> float:
        """KL weight of update `step`."""
        return cosine_ramp(step, self.kl_div_loss_weight, self.kl_warmup_steps)


VAETrainConfig.model_class = DiscreteVAE  # the default kind's (`model_options` left the last class it read)


def build_tokenizer(config: VAETrainConfig) -> nn.Module:
    """A freshly initialised model of `config.kind` with the config's keywords (for vqgan: the VQGAN and its
    training loss, the discriminator, together)."""
    kwargs = config.model_kwargs()
    if config.kind == "dvae":
        return DiscreteVAE(**kwargs)
    if config.kind == "vqgan":
        vae = VQGanVAE(architecture=vqgan_architecture(**config.architecture_kwargs()), image_size=config.image_size,
                       trainable=True)
        return VQGANTraining(vae, build_vqgan_loss(config))
    return VQVAE(**kwargs)


def build_vqgan_loss(config: VAETrainConfig) -> VQGANLoss:
    """The VQGAN loss `config` describes, with the LPIPS network read from its files when it names them."""
    perceptual = None
    if config.lpips_vgg_path is not None:
        perceptual = LPIPS.from_files(config.lpips_vgg_path, config.lpips_path)
    return VQGANLoss(**config.loss_kwargs(), perceptual=perceptual)


class VQGANTraining(nn.Module):
    """What `train-vae --kind vqgan` trains: the VQGAN (`vae`) and its loss (`loss`, which holds the discriminator),
    one optimizer over both; `module(images, step)` is `loss(vae, images, step)`."""

    def __init__(self, vae: VQGanVAE, loss: VQGANLoss):
        super().__init__()
        self.vae, self.loss = vae, loss

    def forward(self, images: Tensor, step: int) -> Tuple[Tensor, Dict[str, float]]:
        """(loss, metrics) of one batch at update `step` (see `VQGANLoss`)."""
        return self.loss(self.vae, images, step)

    def discriminator_state(self) -> Dict[str, Tensor]:
        """The loss's own trained state: its discriminator (the LPIPS network is read from its files)."""
        return {f"discriminator.{k}": v for k, v in self.loss.discriminator.state_dict().items()}


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

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        # images only: those without a caption are used too; one truncated token keeps reading captions cheap
        vae = tokenizer_of(model)
        return dict(text_len=1, image_size=vae.image_size, tokenizer=None, transparent=vae.channels == 4,
                    truncate_captions=True, require_captions=False)

    def load_model(self, directory: Path) -> nn.Module:
        model = from_pretrained(None, directory)
        if self.config.kind != "vqgan":
            return model
        if not isinstance(model, VQGanVAE):
            raise CheckpointError(f"{directory}: holds a {type(model).__name__}, not the VQGAN of a --kind vqgan run")
        training = VQGANTraining(model, build_vqgan_loss(self.config))
        if not (directory / LOSS_FILE).is_file():
            raise CheckpointError(f"{directory}: lacks {LOSS_FILE}, the discriminator of a --kind vqgan run; "
                                  "this checkpoint cannot resume the run")
        state = read_safetensors(directory / LOSS_FILE)
        expected = training.discriminator_state()
        if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
            raise CheckpointError(f"{directory / LOSS_FILE}: does not hold this run's discriminator (other tensors "
                                  "or shapes); were the --disc-layers / --disc-channels flags changed?")
        check_finite(state, directory / LOSS_FILE)
        training.loss.load_state_dict({**training.loss.state_dict(), **state})
        return training

    def export(self, model: nn.Module, directory: Path) -> None:
        if isinstance(model, VQGANTraining):  # the VQGAN as a VQGanVAE folder, the discriminator beside it
            model.vae.save_pretrained(directory)
            write_safetensors(directory / LOSS_FILE, model.discriminator_state())
        else:
            model.save_pretrained(directory)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        if self.config.kind == "vqgan":
            loss, metrics = model(batch.images, step)
            metrics.pop("loss")  # the logged loss is the running mean of the returned one
            return loss, metrics
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
