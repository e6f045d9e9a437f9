"""taming-transformers' VQGAN as an image tokenizer: `VQGanVAE`, read safely from a Lightning checkpoint.

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
* Its weights are frozen (`requires_grad` False), as a pretrained tokenizer's.
* The gumbel variant's codes are the argmax of its logits. The reference's `GumbelQuantize` adds Gumbel noise
  even in eval mode, so its codes for one image change from call to call.
* Encoding and decoding run with autocast off, in the weights' dtype (float32 unless the model was converted):
  taming's VQGAN breaks in half precision, and a DALLE trained under bf16 autocast still gets float32 images.
* Decoding looks codes up with an embedding (not a one-hot matrix product), and attention runs through
  `scaled_dot_product_attention`; results equal the reference's within float rounding.
* Nothing is downloaded: with no paths, the files are looked for in `dalle_core.files.cache_dir("vqgan")`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError
from ..files import cache_dir, read_text
from ..pickles import read_pickled
from ..pretrained import PretrainedMixin
from ..utils import check_images, check_int, check_token_ids, eval_decorator, optional_import
from ..validation import check_finite
from .vae import CodebookUsage, codebook_usage

__all__ = ["VQGanVAE", "read_vqgan_config", "VQGAN_TARGETS", "DEFAULT_MODEL_NAME", "DEFAULT_CONFIG_NAME",
           "DEFAULT_MODEL_URL", "DEFAULT_CONFIG_URL"]

# DALLE-pytorch's names and sources for the default model, taming's imagenet f16 VQGAN with 1024 codes
DEFAULT_MODEL_NAME, DEFAULT_CONFIG_NAME = "vqgan.1024.model.ckpt", "vqgan.1024.config.yml"
DEFAULT_MODEL_URL = "https://heibox.uni-heidelberg.de/f/140747ba53464f49b476/?dl=1"
DEFAULT_CONFIG_URL = "https://heibox.uni-heidelberg.de/f/6ecf2af6c658432c8298/?dl=1"
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
GROUPS = 32  # taming's GroupNorm: 32 groups, eps 1e-6
DDCONFIG_INTS = ("z_channels", "resolution", "in_channels", "out_ch", "ch", "num_res_blocks")


# --- taming's encoder and decoder (same module names, so their state dicts load unchanged) --------------------


def _swish(x: Tensor) -> Tensor:
    """x * sigmoid(x), written as taming writes it (F.silu rounds differently, by up to a few 1e-7)."""
    return x * torch.sigmoid(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6, affine=True)


class _ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3, plus the input (through a 1x1
    conv `nin_shortcut` when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        shortcut = getattr(self, "nin_shortcut", None)
        return (x if shortcut is None else shortcut(x)) + h


class _AttnBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map (1x1 convs q, k, v, proj_out), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (conv(h).reshape(b, c, hh * ww) for conv in (self.q, self.k, self.v))
        # taming's own sequence of operations (not a fused kernel), so that the sums round as the reference's do
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c**-0.5, dim=2)  # (b, query, key)
        out = torch.bmm(v, weights.transpose(1, 2))  # (b, c, query)
        return x + self.proj_out(out.reshape(b, c, hh, ww))


class _Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        conv = getattr(self, "conv", None)
        if conv is None:
            return F.avg_pool2d(x, 2, stride=2)
        return conv(F.pad(x, (0, 1, 0, 1)))  # taming pads right and bottom only


class _Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        conv = getattr(self, "conv", None)
        return x if conv is None else conv(x)


def _level(blocks: List[nn.Module], attns: List[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _middle(channels: int, dropout: float) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = _ResnetBlock(channels, channels, dropout)
    mid.attn_1 = _AttnBlock(channels)
    mid.block_2 = _ResnetBlock(channels, channels, dropout)
    return mid


def _run_level(level: nn.Module, h: Tensor) -> Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class _Encoder(nn.Module):
    """taming's Encoder: conv_in, `len(ch_mult)` levels of resnet blocks (attention where the nominal resolution is
    in attn_resolutions) with a stride-2 downsample between levels, middle blocks, GroupNorm, swish, conv_out."""

    def __init__(self, dd: Mapping[str, Any]):
        super().__init__()
        ch, mult, dropout = dd["ch"], (1, *dd["ch_mult"]), dd["dropout"]
        self.conv_in = nn.Conv2d(dd["in_channels"], ch, 3, padding=1)
        res, self.down = dd["resolution"], nn.ModuleList()
        for i in range(len(dd["ch_mult"])):
            blocks, attns, c_in, c_out = [], [], ch * mult[i], ch * mult[i + 1]
            for _ in range(dd["num_res_blocks"]):
                blocks.append(_ResnetBlock(c_in, c_out, dropout))
                c_in = c_out
                if res in dd["attn_resolutions"]:
                    attns.append(_AttnBlock(c_in))
            level = _level(blocks, attns)
            if i != len(dd["ch_mult"]) - 1:
                level.downsample = _Downsample(c_in, dd["resamp_with_conv"])
                res //= 2
            self.down.append(level)
        self.mid = _middle(c_in, dropout)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, dd["z_channels"], 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(_swish(self.norm_out(h)))


class _Decoder(nn.Module):
    """taming's Decoder: conv_in, middle blocks, then `len(ch_mult)` levels (deepest first; num_res_blocks + 1
    blocks each) with nearest-neighbour 2x upsampling and a conv between levels, GroupNorm, swish, conv_out."""

    def __init__(self, dd: Mapping[str, Any]):
        super().__init__()
        ch, mult, dropout, levels = dd["ch"], dd["ch_mult"], dd["dropout"], len(dd["ch_mult"])
        c_in, res = ch * mult[-1], dd["resolution"] // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(dd["z_channels"], c_in, 3, padding=1)
        self.mid = _middle(c_in, dropout)
        ups: List[nn.Module] = []
        for i in reversed(range(levels)):
            blocks, attns = [], []
            for _ in range(dd["num_res_blocks"] + 1):
                blocks.append(_ResnetBlock(c_in, ch * mult[i], dropout))
                c_in = ch * mult[i]
                if res in dd["attn_resolutions"]:
                    attns.append(_AttnBlock(c_in))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = _Upsample(c_in, dd["resamp_with_conv"])
                res *= 2
            ups.insert(0, level)  # indexed by level, shallowest first, as taming's
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, dd["out_ch"], 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class _VectorQuantizer(nn.Module):
    """taming's VectorQuantizer2 for inference: the nearest codebook entry (`embedding`) of each vector."""

    CHUNK = 2**24  # distances computed for at most this many (vector, code) pairs at a time

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> nn.Embedding:
        return self.embedding

    def codes(self, h: Tensor) -> Tensor:
        """(b, d, hh, ww) -> (b, hh, ww) nearest codes."""
        b, d, hh, ww = h.shape
        z = h.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        e2 = (e ** 2).sum(dim=1)
        rows = max(1, self.CHUNK // e.shape[0])
        out = []
        for part in z.split(rows):
            # the reference's formula, term by term, so that the argmin (not only its mathematical value) agrees:
            # |z|^2 does not change which code is nearest but does change how the sum rounds
            d = (part ** 2).sum(dim=1, keepdim=True) + e2 - 2 * (part @ e.t())
            out.append(d.argmin(dim=1))
        return torch.cat(out).view(b, hh, ww)


class _GumbelQuantizer(nn.Module):
    """taming's GumbelQuantize for inference: codes are the argmax of `proj`'s logits, embedded with `embed`."""

    def __init__(self, z_channels: int, n_embed: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(z_channels, n_embed, 1)
        self.embed = nn.Embedding(n_embed, embed_dim)

    @property
    def codebook(self) -> nn.Embedding:
        return self.embed

    def codes(self, h: Tensor) -> Tensor:
        return self.proj(h).argmax(dim=1)


class _VQModel(nn.Module):
    """taming's VQModel / GumbelVQ without the loss: encoder, quant_conv, quantize, post_quant_conv, decoder."""

    def __init__(self, arch: Mapping[str, Any]):
        super().__init__()
        dd = arch["ddconfig"]
        self.encoder = _Encoder(dd)
        self.decoder = _Decoder(dd)
        if arch["kind"] == "vq":
            self.quantize: nn.Module = _VectorQuantizer(arch["n_embed"], arch["embed_dim"])
        else:
            self.quantize = _GumbelQuantizer(dd["z_channels"], arch["n_embed"], arch["embed_dim"])
        self.quant_conv = nn.Conv2d(dd["z_channels"], arch["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(arch["embed_dim"], dd["z_channels"], 1)


# --- configs ----------------------------------------------------------------------------------------------------


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


def _check_architecture(arch: Any, where: str, prefix: str = "") -> Dict[str, Any]:
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
            count = sum(p.numel() for p in _VQModel(checked).parameters())
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
    return _check_architecture({**params, "kind": VQGAN_TARGETS[target]}, where, "model.params.")


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


# --- the tokenizer ----------------------------------------------------------------------------------------------


class VQGanVAE(PretrainedMixin, nn.Module, register=True):
    """taming-transformers' VQGAN (VQModel or GumbelVQ) as DALLE's image tokenizer (images in [0, 1]).

    `VQGanVAE(model_path, config_path)` reads a taming Lightning checkpoint (.ckpt: only its state_dict, read as
    data) and its YAML config; with no paths, `vqgan.1024.model.ckpt` and `vqgan.1024.config.yml` (DALLE-pytorch's
    names for taming's imagenet f16 model with 1024 codes) in `dalle_core.files.cache_dir("vqgan")`, which must be
    fetched by hand (nothing is downloaded). `VQGanVAE(architecture=...)` builds random weights of those sizes and
    reads no file (`from_pretrained` and `build_like` build it so; `config` records it).

    Args:
        vqgan_model_path: the Lightning checkpoint (every weight of the model must be in its state_dict; other
            entries, such as the loss's discriminator and LPIPS weights, are ignored).
        vqgan_config_path: its taming YAML config (model.target VQModel or GumbelVQ; model.params.embed_dim,
            n_embed, ddconfig).
        image_size: side of the images it tokenizes (DALLE-pytorch's is always 256); a multiple of the
            downsampling factor 2**num_layers.
        architecture: {"kind": "vq" | "gumbel", "embed_dim", "n_embed", "ddconfig": {...}} instead of the files.

    Attributes: image_size, channels (3), num_layers (log2 of the downsampling factor), fmap_size
    (image_size / 2**num_layers), num_tokens (codebook size), is_gumbel, model (taming's module names:
    model.encoder, model.quantize, ...).
    """

    RECORDS_OWN_CONFIG = True

    def __init__(self, vqgan_model_path: Optional[str] = None, vqgan_config_path: Optional[str] = None,
                 image_size: int = 256, *, architecture: Optional[Mapping[str, Any]] = None):
        super().__init__()
        check_int("image_size", image_size)
        state: Optional[Dict[str, Tensor]] = None
        if architecture is not None:
            if vqgan_model_path is not None or vqgan_config_path is not None:
                raise ValueError("give either architecture (random weights) or the model and config paths, not both")
            arch = _check_architecture(architecture, "VQGanVAE architecture", "architecture.")
        else:
            if (vqgan_model_path is None) != (vqgan_config_path is None):
                raise ValueError("give both vqgan_model_path and vqgan_config_path (or neither, for the default "
                                 "model in the cache folder)")
            if vqgan_model_path is None:
                vqgan_model_path, vqgan_config_path = _default_paths()
            arch = read_vqgan_config(vqgan_config_path)
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
        self.config: Dict[str, Any] = {"image_size": image_size, "architecture": arch}

        if state is None:
            self.model = _VQModel(arch)
        else:
            with torch.device("meta"):  # no random init of weights that the checkpoint replaces
                model = _VQModel(arch)
            _check_state(model, state, vqgan_model_path, arch["kind"])
            model = model.to_empty(device="cpu")
            model.load_state_dict({k: state[k] for k in model.state_dict()})
            self.model = model
        self.requires_grad_(False)  # a pretrained tokenizer: nothing here trains it
        self.eval()

    # --- tokens ---------------------------------------------------------------------------------------------------

    def _weights(self) -> Tensor:
        return self.model.quant_conv.weight

    @torch.no_grad()
    @eval_decorator
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of images (batch, 3, image_size, image_size) in [0, 1], rows in raster
        order (gumbel: the argmax of the logits, no noise)."""
        images = check_images("images", images, channels=self.channels, image_size=self.image_size)
        weight = self._weights()
        if images.device != weight.device:
            raise ValueError(f"images are on {images.device} but the VQGAN's weights are on {weight.device}; "
                             "move one of them")
        with torch.autocast(device_type=weight.device.type, enabled=False):
            x = images.to(weight.dtype) * 2 - 1
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

    def forward(self, images: Tensor) -> Tensor:
        """Reconstructions of images in [0, 1]: decode(get_codebook_indices(images))."""
        return self.decode(self.get_codebook_indices(images))

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
    expected = model.state_dict()
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
