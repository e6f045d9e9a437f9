"""`VQGanVAE`: taming-transformers' VQGAN as an image tokenizer, read safely from a Lightning checkpoint, or built
from an architecture to train.

Same results as DALLE-pytorch 1.6.6's `VQGanVAE` over taming-transformers' `VQModel` and `GumbelVQ` (images in
[0, 1] are mapped to [-1, 1]; codes come from the encoder, quant_conv and the quantiser; decoding looks the codes
up in the codebook, runs post_quant_conv and the decoder, then clamps to [-1, 1] and maps back to [0, 1]), with
its own implementation of taming's encoder and decoder (same module names, so taming's state dicts load as they
are) and nothing of taming, Lightning or OmegaConf imported. Differences from the reference, on purpose:

* Files are data. The checkpoint is read by `dalle_core.pickles.read_pickled`, which imports and runs nothing
  (a pickle that would run a command yields a record of it), and only its "state_dict" entry is used; the rest
  (Lightning callbacks keyed by a Lightning class, optimizer states) is never constructed. The YAML config is
  read with `yaml.safe_load` from a file of bounded size, and every field the model needs is checked (type,
  range, and sizes that would build an absurdly large model) with a ValueError naming the file and the key.
* The checkpoint must hold every weight of the model (extra entries such as the loss's discriminator and LPIPS
  weights are ignored, as in the reference's non-strict load, but a missing, misshapen or NaN weight is a
  CheckpointError, where the reference would keep random weights for a missing one).
* Its weights are frozen (`requires_grad` False), as a pretrained tokenizer's, unless it is built with
  `trainable=True`.
* The gumbel variant's codes are the argmax of its logits. The reference's `GumbelQuantize` adds Gumbel noise
  even in eval mode, so its codes for one image change from call to call.
* Encoding and decoding run with autocast off, in the weights' dtype (float32 unless the model was converted):
  taming's VQGAN breaks in half precision, and a DALLE trained under bf16 autocast still gets float32 images.
* Decoding looks codes up with an embedding (not a one-hot matrix product), and attention runs through
  taming's own sequence of operations; results equal the reference's within float rounding.
* Nothing is downloaded: with no paths, the files are looked for in `dalle_core.files.cache_dir("vqgan")`.

Training (`trainable=True`, kind "vq" only): `vae(images, return_loss=True)` is taming's VQModel step without
the GAN (L1 reconstruction loss in taming's [-1, 1] space plus VectorQuantizer2's codebook loss), and
`encode_decode` is what `VQGANLoss` (losses.py) builds the full taming loss from. The quantiser restarts dead
codes while it trains (see `modules.VectorQuantizer`), which keeps the inference model a plain taming VQModel:
`export.export_taming` writes taming's own .ckpt and YAML.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ...errors import CheckpointError
from ...files import cache_dir
from ...pickles import read_pickled
from ...pretrained import PretrainedMixin
from ...utils import check_int, check_token_ids, eval_decorator, images_for
from ...validation import check_finite
from ..vae import (CodebookUsage, check_codes, check_latents, clamp_with_grad, codebook_usage, nearest_codes,
                   straight_through)
from .config import MAX_RESOLUTION, check_architecture, read_vqgan_config
from .modules import VQModel

__all__ = ["VQGanVAE", "DEFAULT_MODEL_NAME", "DEFAULT_CONFIG_NAME", "DEFAULT_MODEL_URL", "DEFAULT_CONFIG_URL"]

# DALLE-pytorch's names and sources for the default model, taming's imagenet f16 VQGAN with 1024 codes
DEFAULT_MODEL_NAME, DEFAULT_CONFIG_NAME = "vqgan.1024.model.ckpt", "vqgan.1024.config.yml"
DEFAULT_MODEL_URL = "https://heibox.uni-heidelberg.de/f/140747ba53464f49b476/?dl=1"
DEFAULT_CONFIG_URL = "https://heibox.uni-heidelberg.de/f/6ecf2af6c658432c8298/?dl=1"


def _state_dict(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """The "state_dict" entry of a Lightning checkpoint, read as data (see the module docstring)."""
    ckpt = read_pickled(path, what="VQGAN checkpoint (a taming-transformers Lightning .ckpt)")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = f"a dict with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected a Lightning checkpoint (a dict with a 'state_dict' entry), got "
                              f"{found}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' must be a mapping of names to tensors, got "
                              f"{type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: 'state_dict' must map names to tensors; entry {key!r:.80} holds "
                                  f"{type(value).__name__}")
    return state


class VQGanVAE(PretrainedMixin, nn.Module, register=True):
    """taming-transformers' VQGAN (VQModel or GumbelVQ) as DALLE's image tokenizer (images in [0, 1]).

    `VQGanVAE(model_path, config_path)` reads a taming Lightning checkpoint (.ckpt: only its state_dict, read as
    data) and its YAML config; with no paths, `vqgan.1024.model.ckpt` and `vqgan.1024.config.yml` (DALLE-pytorch's
    names for taming's imagenet f16 model with 1024 codes) in `dalle_core.files.cache_dir("vqgan")`, which must be
    fetched by hand (nothing is downloaded). `VQGanVAE(architecture=...)` builds random weights of those sizes and
    reads no file (`from_pretrained` and `build_like` build it so; `config` records it); `vqgan_architecture`
    makes one to train.

    Args:
        vqgan_model_path: the Lightning checkpoint (every weight of the model must be in its state_dict; other
            entries, such as the loss's discriminator and LPIPS weights, are ignored).
        vqgan_config_path: its taming YAML config (model.target VQModel or GumbelVQ; model.params.embed_dim,
            n_embed, ddconfig).
        image_size: side of the images it tokenizes (DALLE-pytorch's is always 256); a multiple of the
            downsampling factor 2**num_layers.
        architecture: {"kind": "vq" | "gumbel", "embed_dim", "n_embed", "ddconfig": {...}} instead of the files.
        trainable: keep the weights trainable (`requires_grad`) and the module in training mode, with the
            quantiser's code usage tracked for dead-code restarts (`model.quantize`: a `usage` buffer, saved by
            `save_pretrained` and not part of taming's model; `dead_code_threshold = 0` turns the restarts off);
            only for kind "vq". Recorded in `config` (so that a saved trainable model reloads with its buffer)
            only when True. A DALLE freezes its tokenizer either way.

    Attributes: image_size, channels (3), num_layers (log2 of the downsampling factor), fmap_size
    (image_size / 2**num_layers), num_tokens (codebook size), is_gumbel, trainable, model (taming's module names:
    model.encoder, model.quantize, ...).
    """

    RECORDS_OWN_CONFIG = True

    def __init__(self, vqgan_model_path: Optional[str] = None, vqgan_config_path: Optional[str] = None,
                 image_size: int = 256, *, architecture: Optional[Mapping[str, Any]] = None,
                 trainable: bool = False):
        super().__init__()
        check_int("image_size", image_size)
        if not isinstance(trainable, bool):
            raise TypeError(f"trainable must be True or False, got {type(trainable).__name__} {trainable!r}")
        state: Optional[Dict[str, Tensor]] = None
        if architecture is not None:
            if vqgan_model_path is not None or vqgan_config_path is not None:
                raise ValueError("give either architecture (random weights) or the model and config paths, not both")
            arch = check_architecture(architecture, "VQGanVAE architecture", "architecture.")
        else:
            if (vqgan_model_path is None) != (vqgan_config_path is None):
                raise ValueError("give both vqgan_model_path and vqgan_config_path (or neither, for the default "
                                 "model in the cache folder)")
            if vqgan_model_path is None:
                vqgan_model_path, vqgan_config_path = _default_paths()
            arch = read_vqgan_config(vqgan_config_path)
        if trainable and arch["kind"] != "vq":
            raise ValueError("trainable=True needs a taming VQModel (kind 'vq'); training a GumbelVQ is not "
                             "implemented")
        if architecture is None:
            state = _state_dict(vqgan_model_path)

        dd = arch["ddconfig"]
        # the downsampling factor is 2**(levels - 1); DALLE-pytorch computes num_layers as
        # log2(resolution / attn_resolutions[0]), the same number for every published config
        self.num_layers = len(dd["ch_mult"]) - 1
        if image_size % 2 ** self.num_layers or image_size > MAX_RESOLUTION:
            raise ValueError(f"image_size must be a multiple of the VQGAN's downsampling factor "
                             f"{2 ** self.num_layers} and at most {MAX_RESOLUTION}, got {image_size}")
        self.image_size = image_size
        self.channels = 3
        self.fmap_size = image_size // 2 ** self.num_layers
        self.num_tokens = arch["n_embed"]
        self.is_gumbel = arch["kind"] == "gumbel"
        self.trainable = trainable
        self.config: Dict[str, Any] = {"image_size": image_size, "architecture": arch}
        if trainable:
            self.config["trainable"] = True

        if state is None:
            self.model = VQModel(arch, track_usage=trainable)
        else:
            with torch.device("meta"):  # no random init of weights that the checkpoint replaces
                model = VQModel(arch, track_usage=trainable)
            _check_state(model, state, vqgan_model_path, arch["kind"])
            model = model.to_empty(device="cpu")
            weights = {k: state[k] for k in model.taming_state_dict()}
            if trainable:  # a trained codebook: every code starts alive
                weights["quantize.usage"] = torch.ones(arch["n_embed"])
            model.load_state_dict(weights)
            self.model = model
        if not trainable:
            self.requires_grad_(False)  # a pretrained tokenizer: nothing here trains it
            self.eval()

    # --- tokens ---------------------------------------------------------------------------------------------------

    def _weights(self) -> Tensor:
        return self.model.quant_conv.weight

    def _check_input(self, images: Tensor) -> Tensor:
        """`images` checked, as the weights' dtype, mapped to taming's [-1, 1]."""
        images = images_for("images", images, self._weights(), channels=self.channels, image_size=self.image_size,
                            model="VQGAN")
        return images * 2 - 1

    @torch.no_grad()
    @eval_decorator
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of images (batch, 3, image_size, image_size) in [0, 1], rows in raster
        order (gumbel: the argmax of the logits, no noise)."""
        x = self._check_input(images)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.model.quant_conv(self.model.encoder(x))
            return self.model.quantize.codes(h).flatten(1)

    @eval_decorator
    def decode(self, img_seq: Tensor) -> Tensor:
        """Images (batch, 3, image_size, image_size) in [0, 1] from codes (batch, fmap_size**2), computed with
        autocast off in the weights' dtype (float32 unless the model was converted)."""
        img_seq = check_token_ids("img_seq", img_seq, vocab_size=self.num_tokens, ndim=2)
        if img_seq.shape[1] != self.fmap_size ** 2:
            raise ValueError(f"img_seq must have {self.fmap_size ** 2} codes per image "
                             f"({self.fmap_size}x{self.fmap_size}), got {img_seq.shape[1]}")
        weight = self._weights()
        img_seq = img_seq.to(weight.device)
        with torch.autocast(device_type=weight.device.type, enabled=False):
            z = self.model.quantize.codebook(img_seq)  # (b, n, embed_dim)
            z = z.to(weight.dtype).transpose(1, 2).reshape(z.shape[0], -1, self.fmap_size, self.fmap_size)
            out = self.model.decoder(self.model.post_quant_conv(z))
            return (out.clamp(-1.0, 1.0) + 1) * 0.5

    # --- continuous latents (the protocol `dalle_core.refine.clip_refine` optimises) -------------------------------

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """The continuous latents (batch, embed_dim, fmap_size, fmap_size) behind codes (batch, fmap_size**2): their
        codebook vectors (the input of post_quant_conv), which `latents_to_codes` maps back to the same codes."""
        codes = check_codes(codes, num_tokens=self.num_tokens, fmap_size=self.fmap_size).to(self._weights().device)
        z = self.model.quantize.codebook(codes)  # (b, n, embed_dim)
        return z.transpose(1, 2).reshape(z.shape[0], -1, self.fmap_size, self.fmap_size)

    def latents_to_codes(self, latents: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of latents (batch, embed_dim, fmap_size, fmap_size): at each position the
        nearest codebook vector (a Gumbel VQGAN's codebook too, though its encoder picks codes by its logits)."""
        codebook = self.model.quantize.codebook.weight
        latents = check_latents(latents, channels=codebook.shape[1], fmap_size=self.fmap_size)
        return nearest_codes(latents, codebook)

    @eval_decorator
    def decode_latents(self, latents: Tensor) -> Tensor:
        """Images in [0, 1] of latents (batch, embed_dim, fmap_size, fmap_size) quantised to their nearest codebook
        vectors: `decode(latents_to_codes(latents))`, with straight-through gradients to `latents`; autocast off."""
        weight = self._weights()
        quantized = self.codes_to_latents(self.latents_to_codes(latents))
        with torch.autocast(device_type=weight.device.type, enabled=False):
            z = straight_through(latents, quantized).to(weight.dtype)
            out = self.model.decoder(self.model.post_quant_conv(z))
            return (clamp_with_grad(out, -1.0, 1.0) + 1) * 0.5

    # --- training -------------------------------------------------------------------------------------------------

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight (taming's `get_last_layer`), which the GAN loss's adaptive weight looks at."""
        return self.model.decoder.conv_out.weight

    def encode_decode(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """taming's VQModel forward on images in [0, 1]: (reconstructions in taming's [-1, 1], not clamped;
        codebook loss; codes (batch, fmap_size, fmap_size)), differentiable (codes straight through), with autocast
        off. In training mode a trainable model's quantiser tracks its usage and restarts dead codes first."""
        if self.is_gumbel:
            raise ValueError("encode_decode needs a taming VQModel (kind 'vq'); training a GumbelVQ is not "
                             "implemented")
        x = self._check_input(images)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.model.quant_conv(self.model.encoder(x))
            z_q, codebook_loss, codes = self.model.quantize.quantize(h)
            return self.model.decoder(self.model.post_quant_conv(z_q)), codebook_loss, codes

    def forward(self, images: Tensor, return_loss: bool = False,
                return_recons: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Reconstructions in [0, 1] (decode(get_codebook_indices(images))); or, with `return_loss`, taming's
        autoencoder loss without the GAN: the mean absolute error in [-1, 1] plus the codebook loss (and, with
        `return_recons`, the reconstructions in [0, 1])."""
        if not return_loss:
            return self.decode(self.get_codebook_indices(images))
        recons, codebook_loss, _ = self.encode_decode(images)
        loss = (images.to(recons.dtype) * 2 - 1 - recons).abs().mean() + codebook_loss
        if return_recons:
            return loss, (recons.clamp(-1.0, 1.0) + 1) * 0.5
        return loss

    @torch.no_grad()
    def codebook_usage(self, images: Tensor) -> CodebookUsage:
        """Codebook usage and perplexity of the codes of `images`."""
        return codebook_usage(self.get_codebook_indices(images), self.num_tokens)


def _default_paths() -> Tuple[str, str]:
    folder = cache_dir("vqgan")
    model, config = folder / DEFAULT_MODEL_NAME, folder / DEFAULT_CONFIG_NAME
    missing = [p.name for p in (model, config) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"VQGanVAE() with no paths reads {DEFAULT_MODEL_NAME} and {DEFAULT_CONFIG_NAME} (taming-transformers' "
            f"imagenet f16 VQGAN with 1024 codes) from {folder}, which lacks {' and '.join(missing)}. dalle_core "
            f"downloads nothing: fetch the model from {DEFAULT_MODEL_URL} and the config from {DEFAULT_CONFIG_URL} "
            f"(DALLE-pytorch's sources) into that folder (set DALLE_CORE_CACHE to use another), or pass "
            f"vqgan_model_path and vqgan_config_path")
    return str(model), str(config)


def _check_state(model: nn.Module, state: Mapping[str, Tensor], path: Any, kind: str) -> None:
    """Every weight of `model` present in `state` with its shape, floating point and finite; ValueError naming
    the file otherwise (entries the model lacks, such as loss.*, are ignored)."""
    expected = model.taming_state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        other = {"vq": ("quantize.proj.weight", "GumbelVQ"), "gumbel": ("quantize.embedding.weight", "VQModel")}[kind]
        hint = (f"; it holds {other[0]}, the weights of a {other[1]}: does the config's model.target match the "
                "checkpoint?") if other[0] in state else ""
        raise CheckpointError(f"{path}: the checkpoint's state_dict lacks {len(missing)} of the VQGAN's "
                              f"{len(expected)} weights, e.g. {missing[:4]}{hint}")
    for key, t in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: weight {key!r} has shape {tuple(got.shape)} but the config describes "
                                  f"{tuple(t.shape)}: config and checkpoint do not match")
        if not got.is_floating_point():
            raise CheckpointError(f"{path}: weight {key!r} is {got.dtype}, expected floating point")
    check_finite({k: state[k] for k in expected}, path)
