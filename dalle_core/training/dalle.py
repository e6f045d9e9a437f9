"""Stage 2: train the DALLE transformer on captions and the frozen dVAE's image codes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..utils import check_float
from ..models.dalle import DALLE
from ..sampling import DEFAULT_FILTER_THRES, check_sampling_args
from ..interop import load_dalle_pytorch, load_dalle_pytorch_vae
from ..pretrained import from_pretrained
from ..models.vae import DiscreteVAE
from ..tokenizers import find_tokenizer, implied_tokenizer, load_tokenizer, save_tokenizer
from .batches import Batch
from .common import Trainer
from .config import TrainConfig, model_options, option
from .outputs import save_image_grid

__all__ = ["DALLETrainConfig", "DALLETrainer", "train_dalle", "load_vae"]


def load_vae(path: str) -> nn.Module:
    """An image tokenizer: a `save_pretrained` directory of any of them (DiscreteVAE, OpenAIDiscreteVAE,
    VQGanVAE), or a DALLE-pytorch train_vae.py checkpoint (.pt)."""
    p = Path(path)
    if p.is_dir():
        vae = from_pretrained(None, p)
        if not callable(getattr(vae, "get_codebook_indices", None)):
            raise ValueError(f"--vae {path}: holds a {type(vae).__name__}, not an image tokenizer")
        return vae
    if p.is_file():
        return load_dalle_pytorch_vae(p)
    raise FileNotFoundError(f"dVAE {path!r} not found: give a directory written by train-vae (e.g. runs/vae/model) "
                            "or a DALLE-pytorch vae.pt")


@dataclass
@model_options(DALLE, skip=("num_text_tokens", "sparse_attn", "optimize_for_inference"), defaults=dict(dim=512, depth=2))
class DALLETrainConfig(TrainConfig):
    """DALLE training: the transformer's keywords (DALLE's), its tokenizer (which sets the vocabulary) and dVAE,
    caption dropping, sampling settings."""

    out: str = option("runs/dalle", "output directory: checkpoints, samples, metrics.jsonl, the final model")
    batch_size: int = option(4, "samples per process per micro-batch", "optim")
    max_grad_norm: float = option(0.5, "clip the gradient norm to this (0: no clipping)", "optim")
    null_cond_prob: float = option(0.1, "probability of dropping a caption (for classifier-free guidance)", "optim")
    truncate_captions: bool = option(True, "cut captions longer than text_seq_len (else they raise)", "data")

    vae: Optional[str] = option(None, "the trained dVAE: a train-vae model directory or a DALLE-pytorch vae.pt",
                                "model")
    tokenizer: Optional[str] = option(None, "tokenizer file (Tokenizer.load: BPE json, youtokentome model), or "
                                            "'simple' (CLIP's BPE) or 'bytes'; default: UTF-8 bytes (for "
                                            "--resume-from, the one its vocabulary implies)", "model")
    resume_from: Optional[str] = option(None, "continue training a DALLE-pytorch train_dalle.py checkpoint "
                                              "(dalle.pt): its weights and hparams (model flags are not used); "
                                              "the optimizer starts afresh", "model")
    vqgan_model_path: Optional[str] = option(None, "--resume-from over a VQGAN: taming's .ckpt (only when the "
                                                   "dalle.pt lacks the VQGAN's weights)", "model")
    vqgan_config_path: Optional[str] = option(None, "--resume-from over a VQGAN: taming's YAML config", "model")
    openai_vae_dir: Optional[str] = option(None, "--resume-from over OpenAI's dVAE: the folder with encoder.pkl "
                                                 "and decoder.pkl (only when the dalle.pt lacks their weights)",
                                           "model")

    sample_captions: Optional[Tuple[str, ...]] = option(None, "captions for the sample grids (default: the "
                                                              "first num_samples captions of the data)")
    sample_cond_scale: float = option(1.0, "classifier-free guidance scale for the sample grids")
    sample_filter_thres: float = option(DEFAULT_FILTER_THRES, "top-k filter for the sample grids (keep the top 1 - thres)")
    sample_temperature: float = option(1.0, "sampling temperature for the sample grids")

    def validate(self) -> None:
        """Also refuse model keywords and sampling settings that cannot work, before the dVAE is even read: the
        DALLE's constructor checks its keywords on the meta device, over a stand-in dVAE whose code grid is just
        wide enough for `conv_kernel_size` (what depends on the real grid is checked when the model is built)."""
        super().validate()
        check_float("null_cond_prob", self.null_cond_prob, low=0.0, high=1.0)
        kernel = self.conv_kernel_size if isinstance(self.conv_kernel_size, int) else 1
        fmap = 2 ** max(1, math.ceil(math.log2(max(1, (kernel - 1) / 2))))
        with torch.device("meta"):
            stand_in = DiscreteVAE(image_size=2 * fmap, num_layers=1, num_tokens=2, codebook_dim=2, hidden_dim=2)
        self.check_model(vae=stand_in, num_text_tokens=1)
        for name in ("vae", "tokenizer", "resume_from", "vqgan_model_path", "vqgan_config_path", "openai_vae_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str (a path) or None, got {type(value).__name__} {value!r}")
        if self.sample_captions is not None and (not isinstance(self.sample_captions, (tuple, list)) or not all(
                isinstance(c, str) for c in self.sample_captions)):
            raise TypeError(f"sample_captions must be a list of strings, got {self.sample_captions!r}")
        try:
            check_sampling_args(temperature=self.sample_temperature, filter_thres=self.sample_filter_thres,
                                cond_scale=self.sample_cond_scale)
        except (TypeError, ValueError) as err:  # name the config field, not the sampling argument
            raise type(err)(f"sample_{err}") from None


class DALLETrainer(Trainer):
    """Trains a `DALLE` on (caption, image) pairs; sample grids show generations for fixed captions."""

    config_class = DALLETrainConfig
    kind = "dalle"

    def __init__(self, config: DALLETrainConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        if self.checkpoint is None and config.vae is None and config.resume_from is None:
            raise ValueError("train-dalle needs a trained dVAE: pass --vae DIR (a train-vae model directory), or "
                             "--resume-from dalle.pt to continue a DALLE-pytorch run")
        if config.resume_from is not None and config.vae is not None:
            raise ValueError("--resume-from dalle.pt brings its own image tokenizer: drop --vae")
        saved = find_tokenizer(self.checkpoint / "model") if self.checkpoint else None
        resuming = self.checkpoint is None and config.resume_from is not None and config.tokenizer is None
        self.tokenizer = None if resuming else load_tokenizer(str(saved) if saved else config.tokenizer)

    def build_model(self) -> nn.Module:
        c = self.config
        if c.resume_from is None:
            return DALLE(vae=load_vae(c.vae), num_text_tokens=self.tokenizer.vocab_size, **c.model_kwargs())
        dalle = load_dalle_pytorch(c.resume_from, openai_vae_dir=c.openai_vae_dir,
                                   vqgan_model_path=c.vqgan_model_path, vqgan_config_path=c.vqgan_config_path)
        if self.tokenizer is None:
            self.tokenizer = implied_tokenizer(dalle.text_vocab_size)
            if self.tokenizer is None:
                raise ValueError(f"--resume-from {c.resume_from}: its DALLE reads {dalle.text_vocab_size} caption "
                                 "ids, not CLIP's BPE (49408) or bytes (257): pass its --tokenizer")
        if self.tokenizer.vocab_size != dalle.text_vocab_size:
            raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} ids but --resume-from "
                             f"{c.resume_from} was trained with {dalle.text_vocab_size}: pass its --tokenizer")
        return dalle.train()

    def load_model(self, directory: Path) -> nn.Module:
        return DALLE.from_pretrained(directory)

    def dataset_options(self, model: nn.Module) -> Dict[str, Any]:
        return dict(text_len=model.text_seq_len, image_size=model.vae.image_size, tokenizer=self.tokenizer,
                    transparent=model.vae.channels == 4, truncate_captions=self.config.truncate_captions)

    def compute_loss(self, model: nn.Module, batch: Batch, step: int) -> Tuple[Tensor, Dict[str, float]]:
        return model(batch.text, batch.images, return_loss=True, null_cond_prob=self.config.null_cond_prob), {}

    @torch.no_grad()
    def write_samples(self, model: nn.Module, step: int, fixed: Batch) -> Dict[str, float]:
        c, device = self.config, self.accelerator.device
        if c.sample_captions:
            captions, real = list(c.sample_captions), None
            text = self.tokenizer.tokenize(captions, model.text_seq_len, truncate_text=True)
        else:
            text, real = fixed.text, fixed.images
            captions = [self.tokenizer.decode(t) for t in text]
        gen = torch.Generator(device=device).manual_seed(c.seed)  # the same draws at every step: compare grids
        images = model.generate_images(text.to(device), filter_thres=c.sample_filter_thres,
                                       temperature=c.sample_temperature, cond_scale=c.sample_cond_scale,
                                       use_cache=True, generator=gen).float()
        grid = images if real is None else torch.cat([real.to(device).float(), images])  # real row above
        path = self.out / "samples" / f"step-{step:08d}.png"
        save_image_grid(grid, path, nrow=len(images))
        path.with_suffix(".txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        return {}

    def export(self, model: nn.Module, directory: Path) -> None:
        model.save_pretrained(directory)
        save_tokenizer(self.tokenizer, directory)  # `dalle-core generate` reads it from here


def train_dalle(config: DALLETrainConfig, **kwargs: Any) -> DALLE:
    """Train a DALLE as `config` says (see `Trainer` for `dataset=`, `resume=` and `callbacks=`); returns the trained model."""
    return DALLETrainer(config, **kwargs).train()
