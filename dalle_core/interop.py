"""Loading DALLE-pytorch (lucidrains, 1.6.x) weights and checkpoints into dalle_core models.

Every file is read with `torch.load(weights_only=True)`: a checkpoint is data, and nothing in it is run. Its
hyper-parameters are checked against its weights (types, layer counts, then names and shapes of a model built
on the meta device) before the model is built, and NaN or infinite weights are refused unless
`allow_nonfinite=True`; every failure is a `CheckpointError` naming the file.
"""
from __future__ import annotations

import functools
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

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


def load_dalle_pytorch(path: Union[PathOrStr, Mapping[str, Any]], *, allow_nonfinite: bool = False,
                       openai_vae_dir: Optional[PathOrStr] = None, vqgan_model_path: Optional[PathOrStr] = None,
                       vqgan_config_path: Optional[PathOrStr] = None, vae_image_size: int = 256, **overrides):
    """A `DALLE` with its image tokenizer from a DALLE-pytorch train_dalle.py checkpoint, in eval mode.

    The tokenizer is the one its `vae_class_name` names: a trained `DiscreteVAE` (from `vae_params`), OpenAI's
    dVAE (`OpenAIDiscreteVAE`: its weights are read from the checkpoint, which holds them; `openai_vae_dir`,
    a folder with encoder.pkl and decoder.pkl, or the cache folder when it does not), or a taming VQGAN
    (`VQGanVAE`: needs `vqgan_config_path`, the model's YAML; its weights come from the checkpoint, or from
    `vqgan_model_path` when it lacks them). A pretrained tokenizer works on `vae_image_size` images (DALLE-pytorch
    fixes 256). `overrides` replace hparams; NaN or infinite weights raise CheckpointError unless
    `allow_nonfinite`.
    """
    from .models.dalle import DALLE

    ckpt, where = _load(path)
    _require(ckpt, ("hparams", "vae_params", "weights"), where)
    vae_class = ckpt.get("vae_class_name") or ("DiscreteVAE" if ckpt["vae_params"] is not None else None)
    weights = _convert(convert_dalle_state_dict, _weights(ckpt["weights"], "weights", where), where)
    hparams = {**_mapping(ckpt["hparams"], "hparams", where), **overrides}
    vae_weights = {k[len("vae."):]: v for k, v in weights.items() if k.startswith("vae.")}
    if vae_class == "DiscreteVAE":
        if ckpt["vae_params"] is None:
            raise CheckpointError(f"{where}: vae_class_name is 'DiscreteVAE' but vae_params is None")
        vae_params = _mapping(ckpt["vae_params"], "vae_params", where)
        check_config("DiscreteVAE", vae_params, len(vae_weights), where)
        build_vae = functools.partial(vae_from_reference_config, vae_params)
    elif vae_class == "OpenAIDiscreteVAE":
        build_vae = _openai_vae(vae_weights, openai_vae_dir, vae_image_size, where)
    elif vae_class == "VQGanVAE":
        build_vae = _vqgan_vae(vae_weights, vqgan_model_path, vqgan_config_path, vae_image_size, where)
    else:
        raise CheckpointError(f"{where}: vae_class_name {vae_class!r} is not one DALLE-pytorch 1.6 writes "
                              "(DiscreteVAE, OpenAIDiscreteVAE or VQGanVAE)")
    if not vae_weights:  # a checkpoint without the pretrained tokenizer's weights: they come from its own files
        vae_weights = build_vae().state_dict()
    # the tokenizer's weights under our names (the builders above renamed them in place)
    weights = {**{k: v for k, v in weights.items() if not k.startswith("vae.")},
               **{f"vae.{k}": v for k, v in vae_weights.items()}}
    check_config("DALLE", hparams, len(weights) - len(vae_weights), where)
    check_finite(weights, where, allow_nonfinite)
    dalle = build_checked(lambda: DALLE(vae=build_vae(), **hparams), "DALLE", _shapes(weights), where)
    dalle.load_state_dict(weights)
    return dalle.eval()  # like from_pretrained: ready to sample; call .train() to fine-tune


def _openai_vae(vae_weights: Dict[str, Tensor], folder: Optional[PathOrStr], image_size: int,
                where: str) -> Callable[[], Any]:
    """How to build the OpenAIDiscreteVAE of a DALLE-pytorch checkpoint (`vae_weights`: its `vae.*`, renamed
    in place to ours): from the sizes its weights have, or from OpenAI's files when it holds none."""
    from .models.openai_dvae import OpenAIDiscreteVAE, architecture_of, rename_dall_e_keys

    rename_dall_e_keys(None, vae_weights)
    if vae_weights:
        architecture = architecture_of(vae_weights, where)
        return lambda: OpenAIDiscreteVAE(image_size=image_size, architecture=architecture)
    if folder is not None:
        return lambda: OpenAIDiscreteVAE(Path(folder) / "encoder.pkl", Path(folder) / "decoder.pkl", image_size)
    return lambda: OpenAIDiscreteVAE(image_size=image_size)


def _vqgan_vae(vae_weights: Dict[str, Tensor], model_path: Optional[PathOrStr], config_path: Optional[PathOrStr],
               image_size: int, where: str) -> Callable[[], Any]:
    """How to build the VQGanVAE of a DALLE-pytorch checkpoint (`vae_weights`: its `vae.*`; the VQGAN's training
    loss, `model.loss.*` (discriminator, LPIPS), is dropped in place): its architecture from the taming YAML, its
    weights from the checkpoint, or from the .ckpt when it holds none."""
    from .models.vqgan import VQGanVAE, read_vqgan_config

    for key in [k for k in vae_weights if k.startswith("model.loss.")]:
        del vae_weights[key]
    if vae_weights:
        if config_path is None:
            raise CheckpointError(f"{where}: a DALLE over a VQGAN: pass its taming YAML config (vqgan_config_path, "
                                  "--vqgan-config-path), which the checkpoint does not hold")
        architecture = read_vqgan_config(config_path)
        return lambda: VQGanVAE(image_size=image_size, architecture=architecture)
    if model_path is None and config_path is None:
        return lambda: VQGanVAE(image_size=image_size)  # from the cache folder
    return lambda: VQGanVAE(model_path, config_path, image_size)


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
