"""Loading DALLE-pytorch (lucidrains, 1.6.x) weights and checkpoints into dalle_core models.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is data, and nothing in it is run. Its
hyper-parameters are checked against its weights (types, layer counts, then names and shapes of a model built
on the meta device) before the model is built, and NaN or infinite weights are refused unless
`allow_nonfinite=True`; every failure is a `CheckpointError` naming the file.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple, Union

import torch
from torch import Tensor

from .validation import build_checked, check_config, check_finite
from .errors import CheckpointError
from .files import check_regular_file
from .models.reference_names import convert_dalle_state_dict, convert_transformer_state_dict

__all__ = [
    "convert_transformer_state_dict",
    "convert_dalle_state_dict",
    "load_dalle_pytorch",
    "load_dalle_pytorch_vae",
    "load_dalle_pytorch_clip",
    "vae_from_reference_config",
]

PathOrStr = Union[str, PathLike]


def _load(path_or_obj: Union[PathOrStr, Mapping[str, Any]]) -> Tuple[Mapping[str, Any], str]:
    """The checkpoint (read with weights_only) and how to name it in errors: its path, or 'the checkpoint dict'."""
    if isinstance(path_or_obj, Mapping):
        return path_or_obj, "the checkpoint dict"
    path = Path(path_or_obj)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    check_regular_file(path, None, what="DALLE-pytorch checkpoint", error=CheckpointError)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{path} could not be read as a DALLE-pytorch checkpoint (weights only): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a DALLE-pytorch checkpoint (a dict), got {type(ckpt).__name__}")
    return ckpt, str(path)


def _require(ckpt: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where} is missing {missing}; expected a DALLE-pytorch checkpoint with keys "
                              f"{list(keys)}")


def _mapping(value: Any, key: str, where: str) -> Dict[str, Any]:
    """Checkpoint entry `key` as a dict with str keys, or CheckpointError naming the file and the key."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise CheckpointError(f"{where}: {key!r} must be a dict with str keys, got {type(value).__name__}")
    return dict(value)


def _weights(value: Any, key: str, where: str) -> Dict[str, Tensor]:
    """Checkpoint entry `key` as a state dict of tensors, or CheckpointError naming the file and the entry."""
    state = _mapping(value, key, where)
    for name, t in state.items():
        if not isinstance(t, Tensor):
            raise CheckpointError(f"{where}: {key}[{name!r}] must be a tensor, got {type(t).__name__}")
    return state


def _convert(convert: Callable[[Mapping[str, Tensor]], Dict[str, Tensor]], state: Mapping[str, Tensor],
             where: str) -> Dict[str, Tensor]:
    try:
        return convert(state)
    except KeyError as err:
        raise CheckpointError(f"{where}: {err.args[0] if err.args else err}") from None


def _shapes(state: Mapping[str, Tensor]) -> Dict[str, Tuple[Tuple[int, ...], bool]]:
    return {k: (tuple(t.shape), t.is_floating_point()) for k, t in state.items()}


def vae_from_reference_config(config: Mapping[str, Any]):
    """A `DiscreteVAE` built from DALLE-pytorch keyword arguments, with the reference's defaults where they differ
    from ours (no KL and no entropy terms, where ours has `entropy_loss_weight=0.001`), so that it trains with the
    same loss."""
    from .models.vae import DiscreteVAE

    return DiscreteVAE(**{"kl_div_loss_weight": 0.0, "entropy_loss_weight": 0.0, **dict(config)})


def load_dalle_pytorch_vae(path: Union[PathOrStr, Mapping[str, Any]], *, allow_nonfinite: bool = False):
    """A `DiscreteVAE` from a DALLE-pytorch train_vae.py checkpoint (`hparams` and `weights`), in eval mode;
    NaN or infinite weights raise CheckpointError unless `allow_nonfinite`."""
    ckpt, where = _load(path)
    _require(ckpt, ("hparams", "weights"), where)
    weights = _weights(ckpt["weights"], "weights", where)
    hparams = _mapping(ckpt["hparams"], "hparams", where)
    check_config("DiscreteVAE", hparams, len(weights), where)
    check_finite(weights, where, allow_nonfinite)
    vae = build_checked(lambda: vae_from_reference_config(hparams), "DiscreteVAE", _shapes(weights), where)
    vae.load_state_dict(weights)
    return vae.eval()


def load_dalle_pytorch(path: Union[PathOrStr, Mapping[str, Any]], *, allow_nonfinite: bool = False, **overrides):
    """A `DALLE` (with its `DiscreteVAE`) from a DALLE-pytorch train_dalle.py checkpoint, in eval mode; `overrides`
    replace hparams; NaN or infinite weights raise CheckpointError unless `allow_nonfinite`."""
    from .models.dalle import DALLE

    ckpt, where = _load(path)
    _require(ckpt, ("hparams", "vae_params", "weights"), where)
    vae_class = ckpt.get("vae_class_name", "DiscreteVAE")
    if vae_class != "DiscreteVAE" or ckpt["vae_params"] is None:
        raise CheckpointError(f"{where}: only checkpoints with a trained DiscreteVAE are supported, this one uses "
                              f"{vae_class!r}")
    weights = _convert(convert_dalle_state_dict, _weights(ckpt["weights"], "weights", where), where)
    vae_params = _mapping(ckpt["vae_params"], "vae_params", where)
    hparams = {**_mapping(ckpt["hparams"], "hparams", where), **overrides}
    n_vae = sum(k.startswith("vae.") for k in weights)
    check_config("DiscreteVAE", vae_params, n_vae, where)
    check_config("DALLE", hparams, len(weights) - n_vae, where)
    check_finite(weights, where, allow_nonfinite)
    dalle = build_checked(lambda: DALLE(vae=vae_from_reference_config(vae_params), **hparams), "DALLE",
                          _shapes(weights), where)
    dalle.load_state_dict(weights)
    return dalle.eval()  # like from_pretrained: ready to sample; call .train() to fine-tune


def load_dalle_pytorch_clip(path_or_state_dict: Union[PathOrStr, Mapping[str, Tensor]], *,
                            allow_nonfinite: bool = False, **clip_kwargs):
    """A `CLIP` built with `clip_kwargs` (the reference's keywords) from a saved DALLE-pytorch CLIP state dict, in
    eval mode; NaN or infinite weights raise CheckpointError unless `allow_nonfinite`."""
    from .models.clip import CLIP

    state, where = _load(path_or_state_dict)
    if "weights" in state and isinstance(state["weights"], Mapping):
        state = state["weights"]
    state = _convert(convert_transformer_state_dict, _weights(state, "weights", where), where)
    check_config("CLIP", clip_kwargs, len(state), where)
    check_finite(state, where, allow_nonfinite)
    clip = build_checked(lambda: CLIP(**clip_kwargs), "CLIP", _shapes(state), where)
    clip.load_state_dict(state)
    return clip.eval()
