"""Loading DALLE-pytorch (lucidrains, 1.6.x) weights and checkpoints into dalle_core models.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is data, and nothing in it is run.
"""
from __future__ import annotations

import re
from os import PathLike
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch
from torch import Tensor

__all__ = [
    "convert_transformer_state_dict",
    "convert_dalle_state_dict",
    "load_dalle_pytorch",
    "load_dalle_pytorch_vae",
    "load_dalle_pytorch_clip",
    "vae_from_reference_config",
]

# transformer.layers.layers.{i}.{0|1}.<wrappers>.<leaf>   (sequential)
# transformer.layers.blocks.{i}.{f|g}.net.<wrappers>.<leaf>  (reversible)
_LAYER_KEY = re.compile(r"^(?P<prefix>.*?)layers\.(?:layers|blocks)\.(?P<idx>\d+)\.(?P<branch>0|1|f\.net|g\.net)\.(?P<rest>.+)$")
_LEAVES = {
    "to_qkv.weight": "attn.to_qkv.weight",
    "to_out.0.weight": "attn.to_out.weight",
    "to_out.0.bias": "attn.to_out.bias",
    "net.0.weight": "ff.proj_in.weight",
    "net.0.bias": "ff.proj_in.bias",
    "net.3.weight": "ff.proj_out.weight",
    "net.3.bias": "ff.proj_out.bias",
}

PathOrStr = Union[str, PathLike]


def _convert_layer_key(prefix: str, idx: str, branch: str, rest: str) -> str:
    part = "attn" if branch in ("0", "f.net") else "ff"
    if rest == "scale":
        return f"{prefix}layers.{idx}.{part}_scale"
    for name in ("norm", "norm_out"):
        for param in ("weight", "bias"):
            if rest == f"fn.{name}.{param}":
                return f"{prefix}layers.{idx}.{part}_{name}.{param}"
    for leaf, target in _LEAVES.items():
        if rest.endswith(leaf):
            return f"{prefix}layers.{idx}.{target}"
    raise KeyError(f"unrecognised DALLE-pytorch transformer parameter: {rest!r}")


def convert_transformer_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename DALLE-pytorch transformer parameters (any wrapper nesting, sequential or reversible) to ours;
    other keys pass through unchanged and the reference's stored rotary table `pos_emb` is dropped."""
    out: Dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("transformer.pos_emb"):
            continue  # rebuilt at construction from the same formula
        match = _LAYER_KEY.match(key)
        out[_convert_layer_key(**match.groupdict()) if match else key] = value
    return out


def convert_dalle_state_dict(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A DALLE-pytorch DALLE state dict with our parameter names (shared input/output embeddings folded)."""
    out = convert_transformer_state_dict(state_dict)
    for key in list(out):
        if key.startswith(("text_emb.linear.", "image_emb.linear.")):
            del out[key]  # SharedEmbedding views of to_logits.1, which we slice directly
    return out


def _load(path_or_obj: Union[PathOrStr, Mapping[str, Any]]) -> Mapping[str, Any]:
    if isinstance(path_or_obj, Mapping):
        return path_or_obj
    path = Path(path_or_obj)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path} could not be read as a DALLE-pytorch checkpoint (weights only): {err}") from err


def _require(ckpt: Mapping[str, Any], keys, path_or_obj) -> None:
    missing = [k for k in keys if k not in ckpt]
    if missing:
        where = path_or_obj if not isinstance(path_or_obj, Mapping) else "the checkpoint dict"
        raise ValueError(f"{where} is missing {missing}; expected a DALLE-pytorch checkpoint with keys {list(keys)}")


def vae_from_reference_config(config: Mapping[str, Any]):
    """A `DiscreteVAE` built from DALLE-pytorch keyword arguments, with the reference's defaults where they differ
    from ours (its KL weight 0, where ours is 0.01), so that it trains with the same loss."""
    from .vae import DiscreteVAE

    return DiscreteVAE(**{"kl_div_loss_weight": 0.0, **dict(config)})


def load_dalle_pytorch_vae(path: Union[PathOrStr, Mapping[str, Any]]):
    """A `DiscreteVAE` from a DALLE-pytorch train_vae.py checkpoint (`hparams` and `weights`), in eval mode."""
    ckpt = _load(path)
    _require(ckpt, ("hparams", "weights"), path)
    vae = vae_from_reference_config(ckpt["hparams"])
    vae.load_state_dict(ckpt["weights"])
    return vae.eval()


def load_dalle_pytorch(path: Union[PathOrStr, Mapping[str, Any]], **overrides):
    """A `DALLE` (with its `DiscreteVAE`) from a DALLE-pytorch train_dalle.py checkpoint, in eval mode."""
    from .dalle import DALLE

    ckpt = _load(path)
    _require(ckpt, ("hparams", "vae_params", "weights"), path)
    vae_class = ckpt.get("vae_class_name", "DiscreteVAE")
    if vae_class != "DiscreteVAE" or ckpt["vae_params"] is None:
        raise ValueError(f"only checkpoints with a trained DiscreteVAE are supported, this one uses {vae_class!r}")
    vae = vae_from_reference_config(ckpt["vae_params"])
    hparams = {**dict(ckpt["hparams"]), **overrides}
    dalle = DALLE(vae=vae, **hparams)
    dalle.load_state_dict(convert_dalle_state_dict(ckpt["weights"]))
    return dalle.eval()  # like from_pretrained: ready to sample; call .train() to fine-tune


def load_dalle_pytorch_clip(path_or_state_dict: Union[PathOrStr, Mapping[str, Tensor]], **clip_kwargs):
    """A `CLIP` built with `clip_kwargs` (the reference's keywords) from a saved DALLE-pytorch CLIP state dict, in
    eval mode."""
    from .clip import CLIP

    state = _load(path_or_state_dict)
    if "weights" in state and isinstance(state["weights"], Mapping):
        state = state["weights"]
    clip = CLIP(**clip_kwargs)
    clip.load_state_dict(convert_transformer_state_dict(state))
    return clip.eval()
