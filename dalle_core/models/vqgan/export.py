"""A VQGanVAE (kind "vq") written as taming-transformers' own files: a Lightning-style `model.ckpt` and its
`model.yaml`, which taming's `VQModel` (and `VQGanVAE(ckpt, yaml)`, and DALLE-pytorch) load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ...files import atomic_files
from ...utils import check_int, optional_import
from .config import VQGAN_TARGETS
from .losses import VQGANLoss
from .model import VQGanVAE

__all__ = ["export_taming", "taming_config", "CKPT_NAME", "YAML_NAME", "LOSS_TARGET", "NO_LOSS_TARGET"]

CKPT_NAME, YAML_NAME = "model.ckpt", "model.yaml"
LOSS_TARGET = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
NO_LOSS_TARGET = "taming.modules.losses.vqperceptual.DummyLoss"
_VQ_TARGET = next(target for target, kind in VQGAN_TARGETS.items() if kind == "vq")


def taming_config(vae: VQGanVAE, loss: Optional[VQGANLoss] = None) -> Dict[str, Any]:
    """taming's config of `vae` (model.target VQModel; model.params embed_dim, n_embed, ddconfig, lossconfig: the
    VQLPIPSWithDiscriminator that `loss` is, or taming's DummyLoss without one), as a dict."""
    _check(vae, loss)
    arch = vae.config["architecture"]
    dd = {k: v for k, v in arch["ddconfig"].items() if k != "resamp_with_conv" or v is False}
    if loss is None:
        lossconfig: Dict[str, Any] = {"target": NO_LOSS_TARGET}
    else:
        lossconfig = {"target": LOSS_TARGET, "params": {
            "disc_conditional": False, "disc_in_channels": 3, "disc_start": loss.disc_start,
            "disc_weight": loss.disc_weight, "disc_factor": loss.disc_factor, "codebook_weight": loss.codebook_weight,
            "perceptual_weight": loss.perceptual_weight if loss.perceptual is not None else 0.0,
            "disc_num_layers": loss.disc_layers, "disc_ndf": loss.disc_channels,
            "disc_loss": "hinge"}}
    return {"model": {"target": _VQ_TARGET, "params": {
        "embed_dim": arch["embed_dim"], "n_embed": arch["n_embed"], "ddconfig": dd, "lossconfig": lossconfig}}}


def export_taming(vae: VQGanVAE, directory: Union[str, os.PathLike], *, loss: Optional[VQGANLoss] = None,
                  global_step: Optional[int] = None) -> Tuple[Path, Path]:
    """Write `vae` as taming's files `directory/model.ckpt` and `directory/model.yaml`; returns their paths.

    The checkpoint is `torch.save({"state_dict": ..., "global_step": ...})` of plain tensors (it loads with
    `torch.load(weights_only=True)`): the VQModel's weights under taming's names (the quantiser's usage buffer,
    which taming's model lacks, is left out), and with `loss` its discriminator's as `loss.discriminator.*` and its
    LPIPS's (when it has one) as `loss.perceptual_loss.*`, where taming's VQLPIPSWithDiscriminator keeps them.
    The YAML is `taming_config(vae, loss)`. Both files are written atomically (temporary files, then renamed).
    """
    yaml = optional_import("yaml", "export_taming (writing taming's YAML config)", "pip install pyyaml", "PyYAML")
    config = taming_config(vae, loss)
    if global_step is not None:
        check_int("global_step", global_step, minimum=0)
    state = _plain(vae.model.taming_state_dict(), "")
    if loss is not None:
        state.update(_plain(loss.discriminator.state_dict(), "loss.discriminator."))
        if loss.perceptual is not None:
            state.update(_plain(loss.perceptual.state_dict(), "loss.perceptual_loss."))
    ckpt: Dict[str, Any] = {"state_dict": state}
    if global_step is not None:
        ckpt["global_step"] = int(global_step)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / CKPT_NAME, directory / YAML_NAME
    text = yaml.dump(config, Dumper=_dumper(yaml), sort_keys=False, default_flow_style=False)
    with atomic_files(*paths) as (ckpt_tmp, yaml_tmp):
        torch.save(ckpt, ckpt_tmp)
        yaml_tmp.write_text(text, encoding="utf-8")
    return paths


def _dumper(yaml: Any) -> Any:
    """yaml's SafeDumper writing lists in flow style ([1, 2, 2]), as taming's configs are written."""

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value,
                                                                                   flow_style=True))
    return Dumper


def _plain(state: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """`state` as detached, contiguous CPU tensors of their own (no parameters, no shared storage), prefixed."""
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _check(vae: Any, loss: Any) -> None:
    if not isinstance(vae, VQGanVAE):
        raise TypeError(f"vae must be a VQGanVAE, got {type(vae).__name__}")
    if vae.is_gumbel:
        raise ValueError("only a VQGanVAE of kind 'vq' (taming's VQModel) is exported; this one is a GumbelVQ")
    if loss is not None and not isinstance(loss, VQGANLoss):
        raise TypeError(f"loss must be a VQGANLoss or None, got {type(loss).__name__}")
