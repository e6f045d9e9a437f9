"""taming-transformers' VQGAN configs: the architecture a taming YAML describes (`read_vqgan_config`), checked
(`check_architecture`), and a small one for training here (`vqgan_architecture`).

An architecture is VQGanVAE's `architecture` keyword: {"kind": "vq" | "gumbel", "embed_dim", "n_embed",
"ddconfig": {...}}, taming's `model.params` with the model class as `kind`. Every field is checked (type, range,
and sizes that would build an absurdly large model) with a ValueError naming the file (or "VQGanVAE
architecture") and the key.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ...files import read_text
from ...utils import check_float, check_int, optional_import
from .modules import GROUPS, VQModel

__all__ = ["VQGAN_TARGETS", "MAX_YAML_BYTES", "MAX_CHANNELS", "MAX_LEVELS", "MAX_RES_BLOCKS", "MAX_CODES",
           "MAX_RESOLUTION", "MAX_PARAMETERS", "DDCONFIG_INTS", "read_vqgan_config", "check_architecture",
           "vqgan_architecture"]

VQGAN_TARGETS = {"taming.models.vqgan.VQModel": "vq", "taming.models.vqgan.GumbelVQ": "gumbel"}

# bounds on what a config may ask for: the published models use at most 512 channels, 5 levels, 2 blocks per
# level, 16384 codes of 256 dims and ~100M parameters
MAX_YAML_BYTES = 2**20
MAX_CHANNELS = 8192
MAX_LEVELS = 10
MAX_RES_BLOCKS = 64
MAX_CODES = 2**20
MAX_RESOLUTION = 2**14
MAX_PARAMETERS = 2**30  # 4 GiB of float32 weights
DDCONFIG_INTS = ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks")


def _fail(where: str, key: str, message: str) -> ValueError:
    return ValueError(f"{where}: {key} {message}")


def _int(where: str, mapping: Mapping[str, Any], key: str, prefix: str, low: int, high: int) -> int:
    if key not in mapping:
        raise _fail(where, prefix + key, "is missing")
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, prefix + key, f"must be an integer, got {type(value).__name__} {value!r:.60}")
    if not low <= value <= high:
        raise _fail(where, prefix + key, f"must be in [{low}, {high}], got {value}")
    return int(value)


def _int_list(where: str, mapping: Mapping[str, Any], key: str, prefix: str, low: int, high: int,
              min_len: int, max_len: int) -> List[int]:
    if key not in mapping:
        raise _fail(where, prefix + key, "is missing")
    value = mapping[key]
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= max_len:
        raise _fail(where, prefix + key, f"must be a list of {min_len} to {max_len} integers, got {value!r:.60}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise _fail(where, prefix + key, f"must hold integers in [{low}, {high}], got {v!r:.60}")
    return [int(v) for v in value]


def _bool(where: str, mapping: Mapping[str, Any], key: str, prefix: str, default: Optional[bool]) -> bool:
    if key not in mapping and default is not None:
        return default
    if key not in mapping:
        raise _fail(where, prefix + key, "is missing")
    if not isinstance(mapping[key], bool):
        raise _fail(where, prefix + key, f"must be true or false, got {mapping[key]!r:.60}")
    return mapping[key]


def _number(where: str, mapping: Mapping[str, Any], key: str, prefix: str, low: float, high: float) -> float:
    value = mapping[key]
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not low <= number <= high:  # NaN fails too
        raise _fail(where, prefix + key, f"must be a number in [{low}, {high}], got {value!r:.60}")
    return number


def _mapping(where: str, mapping: Mapping[str, Any], key: str, prefix: str) -> Mapping[str, Any]:
    if key not in mapping:
        raise _fail(where, prefix + key, "is missing")
    value = mapping[key]
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(where, prefix + key, f"must be a mapping with string keys, got {type(value).__name__}")
    return value


def check_architecture(arch: Any, where: str, prefix: str = "") -> Dict[str, Any]:
    """`arch` ({"kind", "embed_dim", "n_embed", "ddconfig": {...}}) checked and normalised, or a ValueError naming
    `where` and the key; a model it describes that would hold over MAX_PARAMETERS weights is refused."""
    if not isinstance(arch, Mapping) or not all(isinstance(k, str) for k in arch):
        raise ValueError(f"{where}: the architecture must be a mapping with string keys, got {type(arch).__name__}")
    kind = arch.get("kind")
    if kind not in ("vq", "gumbel"):
        raise _fail(where, prefix + "kind", f"must be 'vq' (taming's VQModel) or 'gumbel' (GumbelVQ), got {kind!r:.60}")
    embed_dim = _int(where, arch, "embed_dim", prefix, 1, MAX_CHANNELS)
    n_embed = _int(where, arch, "n_embed", prefix, 1, MAX_CODES)
    src = _mapping(where, arch, "ddconfig", prefix)
    dp = prefix + "ddconfig."
    dd: Dict[str, Any] = {
        "double_z": _bool(where, src, "double_z", dp, False),
        "z_channels": _int(where, src, "z_channels", dp, 1, MAX_CHANNELS),
        "resolution": _int(where, src, "resolution", dp, 1, MAX_RESOLUTION),
        "in_channels": _int(where, src, "in_channels", dp, 1, MAX_CHANNELS),
        "out_ch": _int(where, src, "out_ch", dp, 1, MAX_CHANNELS),
        "ch": _int(where, src, "ch", dp, 1, MAX_CHANNELS),
        "ch_mult": _int_list(where, src, "ch_mult", dp, 1, MAX_CHANNELS, 1, MAX_LEVELS),
        "num_res_blocks": _int(where, src, "num_res_blocks", dp, 0, MAX_RES_BLOCKS),
        "attn_resolutions": _int_list(where, src, "attn_resolutions", dp, 0, MAX_RESOLUTION, 0, 64),
        "dropout": _number(where, src, "dropout", dp, 0.0, 1.0) if "dropout" in src else 0.0,
        "resamp_with_conv": _bool(where, src, "resamp_with_conv", dp, True),
    }
    if dd["double_z"]:
        raise _fail(where, dp + "double_z", "must be false: taming's VQModel feeds the encoder's output to "
                    "quant_conv (z_channels inputs), which a doubled output does not fit")
    if src.get("give_pre_end", False) is not False:
        raise _fail(where, dp + "give_pre_end", "must be false (a decoder that stops before its output layers "
                    "does not produce images)")
    for key in ("in_channels", "out_ch"):
        if dd[key] != 3:
            raise _fail(where, dp + key, f"must be 3 (RGB images), got {dd[key]}")
    widths = [dd["ch"] * m for m in dd["ch_mult"]] + [dd["ch"]]
    if max(widths) > MAX_CHANNELS:
        raise _fail(where, dp + "ch_mult", f"asks for {max(widths)} channels (ch * ch_mult); at most {MAX_CHANNELS} "
                    "allowed")
    if any(w % GROUPS for w in widths):
        raise _fail(where, dp + "ch", f"and ch_mult must give channel counts divisible by {GROUPS} (taming's "
                    f"GroupNorm has {GROUPS} groups), got {sorted(set(widths))}")
    if kind == "gumbel" and embed_dim != dd["z_channels"]:
        raise _fail(where, prefix + "embed_dim", f"must equal ddconfig.z_channels ({dd['z_channels']}) in a GumbelVQ: "
                    f"taming applies quantize.proj (z_channels inputs) to quant_conv's embed_dim outputs, got "
                    f"{embed_dim}")
    checked = {"kind": kind, "embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": dd}
    # a lower bound first (each resnet block's second 3x3 conv), so that absurd sizes are refused at once; then
    # the exact count, from a model built on the meta device (shapes only, nothing allocated)
    count = sum(9 * (dd["ch"] * m) ** 2 for m in dd["ch_mult"]) * (2 * dd["num_res_blocks"] + 1) + n_embed * embed_dim
    if count <= MAX_PARAMETERS:
        with torch.device("meta"):
            count = sum(p.numel() for p in VQModel(checked).parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{where}: the VQGAN its sizes describe would hold about {count / 1e9:.1f}G weights; at most "
                         f"{MAX_PARAMETERS / 1e9:.1f}G allowed (check {dp}ch, ch_mult, num_res_blocks and "
                         f"{prefix}n_embed)")
    return checked


def read_vqgan_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The architecture a taming-transformers YAML config (`model.target`, `model.params.{embed_dim, n_embed,
    ddconfig}`) describes, as VQGanVAE's `architecture` keywords; ValueError naming the file and key otherwise.

    Read with `yaml.safe_load` (no tags that construct objects) from a regular file of at most MAX_YAML_BYTES.
    """
    yaml = optional_import("yaml", "VQGanVAE (reading taming's YAML configs)", "pip install pyyaml", "PyYAML")
    where = str(path)
    text = read_text(path, MAX_YAML_BYTES, what="VQGAN config (taming YAML)")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: not a YAML config that can be read safely: {err}") from None
    except RecursionError:
        raise ValueError(f"{where}: YAML nested too deeply") from None
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected a taming-transformers config (a YAML mapping with a 'model' entry), "
                         f"got {type(doc).__name__}")
    model = _mapping(where, doc, "model", "")
    target = model.get("target")
    if not isinstance(target, str) or target not in VQGAN_TARGETS:
        raise _fail(where, "model.target", f"must be one of {', '.join(VQGAN_TARGETS)}, got {target!r:.80}")
    params = _mapping(where, model, "params", "model.")
    if params.get("remap") is not None:
        raise _fail(where, "model.params.remap", "is not supported (codes remapped to a subset of the codebook)")
    for key, high in (("kl_weight", 1e6), ("temperature_init", 1e6)):
        if key in params:
            _number(where, params, key, "model.params.", 0.0, high)
    return check_architecture({**params, "kind": VQGAN_TARGETS[target]}, where, "model.params.")


def vqgan_architecture(*, image_size: int = 32, num_layers: int = 2, num_tokens: int = 128, codebook_dim: int = 32,
                       hidden_dim: int = 32, num_resnet_blocks: int = 1, attention: bool = True,
                       channel_mult: Optional[Sequence[int]] = None, dropout: float = 0.0) -> Dict[str, Any]:
    """The architecture (VQGanVAE's `architecture`, kind "vq": taming's VQModel) of a VQGAN to train, sized with
    DiscreteVAE's keywords; the defaults make a small one that trains on a CPU (32x32 images, an 8x8 grid of
    codes from a codebook of 128).

    Args:
        image_size: side of the images (taming's `resolution`: it places the attention blocks), a multiple of
            2**num_layers.
        num_layers: downsamplings: the code grid is image_size / 2**num_layers a side (num_layers + 1 levels).
        num_tokens: codebook size (`n_embed`).
        codebook_dim: size of the codes' vectors and of the encoder's output (`embed_dim` = `z_channels`).
        hidden_dim: channels of every level (`ch`; `channel_mult` widens deeper ones), a multiple of 32
            (taming's GroupNorm has 32 groups).
        num_resnet_blocks: resnet blocks per level (`num_res_blocks`; the decoder has one more), at least 1.
        attention: self-attention blocks in the levels at the code grid's resolution (the middle blocks always
            have one, as in taming's model).
        channel_mult: channels of each level as multiples of hidden_dim (`ch_mult`, num_layers + 1 of them);
            by default all 1 (hidden_dim channels everywhere, like DiscreteVAE; taming's own models widen
            deeper levels, e.g. (1, 1, 2, 2, 4), at a cost: (1, 2, 2) here takes about twice the time a step).
        dropout: dropout in the resnet blocks.
    """
    check_int("image_size", image_size)
    check_int("num_layers", num_layers)
    check_int("num_tokens", num_tokens)
    check_int("codebook_dim", codebook_dim)
    check_int("hidden_dim", hidden_dim)
    check_int("num_resnet_blocks", num_resnet_blocks)
    check_float("dropout", dropout, low=0, high=1, high_open=True)
    if not isinstance(attention, bool):
        raise TypeError(f"attention must be True or False, got {type(attention).__name__} {attention!r}")
    if image_size % 2 ** num_layers:
        raise ValueError(f"image_size must be a multiple of 2**num_layers = {2 ** num_layers}, got {image_size}")
    if hidden_dim % GROUPS:
        raise ValueError(f"hidden_dim must be a multiple of {GROUPS} (taming's GroupNorm has {GROUPS} groups), "
                         f"got {hidden_dim}")
    if channel_mult is None:
        mult = [1] * (num_layers + 1)
    else:
        if isinstance(channel_mult, (str, bytes)) or not isinstance(channel_mult, Sequence):
            raise TypeError(f"channel_mult must be a sequence of ints, got {type(channel_mult).__name__}")
        mult = [check_int("channel_mult entries", m) for m in channel_mult]
        if len(mult) != num_layers + 1:
            raise ValueError(f"channel_mult needs num_layers + 1 = {num_layers + 1} entries (one per level), got "
                             f"{len(mult)}")
    fmap = image_size // 2 ** num_layers
    arch = {"kind": "vq", "embed_dim": codebook_dim, "n_embed": num_tokens, "ddconfig": {
        "double_z": False, "z_channels": codebook_dim, "resolution": image_size, "in_channels": 3, "out_ch": 3,
        "ch": hidden_dim, "ch_mult": mult, "num_res_blocks": num_resnet_blocks,
        "attn_resolutions": [fmap] if attention else [], "dropout": float(dropout)}}
    return check_architecture(arch, "vqgan_architecture", "")
