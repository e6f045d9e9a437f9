"""`OpenAIDiscreteVAE`: OpenAI's dVAE (the `dall-e` 0.1 package) as an image tokenizer, loaded without unpickling code.

The architecture (Ramesh et al. 2021, appendix A; `dall_e.Encoder` / `dall_e.Decoder`): the encoder is a 7x7
input convolution, four groups of bottleneck residual blocks (widths 1, 2, 4, 8 x `n_hid`; each block scales its
residual branch by 1 / (4 * n_blk_per_group)**2), 2x max-pooling after the first three groups, and ReLU + a 1x1
convolution to `vocab_size` logits: codes are their argmax. The decoder is a 1x1 convolution from the one-hot
codes to `n_init` channels, the groups in reverse with 2x nearest upsampling, and a 1x1 convolution to 2 x channels
logit-Laplace statistics: the image is `unmap_pixels(sigmoid(mu))`. Pixels are mapped into [0.1, 0.9] before
encoding (`map_pixels`). Official sizes (`OFFICIAL_ARCHITECTURE`): n_hid 256, 2 blocks a group, 8192 codes,
n_init 128; 256-px images give a 32x32 grid.

OpenAI publishes the weights as `encoder.pkl` / `decoder.pkl`, whole pickled `dall_e` modules. They are read with
`dalle_core.pickles.read_pickled`: only tensors and the modules' size attributes are taken, nothing in the files is
imported or run, and the tensors' names and shapes are checked against the sizes before any model is built.
Decoding looks the codes up in the input convolution's weight (the same sums as the one-hot convolution, without
its 8192-channel input).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..errors import CheckpointError
from ..files import cache_dir
from ..pickles import Pickled, UnsafePickleError, attribute, module_tensors, read_pickled
from ..pretrained import PretrainedMixin
from ..utils import check_images, check_int, check_token_ids, eval_decorator
from ..validation import check_finite, compare_state
from .vae import (CodebookUsage, check_codes, check_latents, clamp_with_grad, codebook_usage, nearest_codes,
                  straight_through)

__all__ = ["OpenAIDiscreteVAE", "map_pixels", "unmap_pixels", "LOGIT_LAPLACE_EPS", "OFFICIAL_ARCHITECTURE",
           "OPENAI_FILES", "architecture_of", "rename_dall_e_keys"]

PathOrStr = Union[str, "Path"]
LOGIT_LAPLACE_EPS = 0.1
GROUPS = 4  # dall_e's group_count: fixed
OFFICIAL_ARCHITECTURE = {
    "encoder": {"n_hid": 256, "n_blk_per_group": 2, "input_channels": 3, "vocab_size": 8192},
    "decoder": {"n_init": 128, "n_hid": 256, "n_blk_per_group": 2, "output_channels": 3, "vocab_size": 8192},
}
OPENAI_FILES = {"encoder.pkl": "https://cdn.openai.com/dall-e/encoder.pkl",
                "decoder.pkl": "https://cdn.openai.com/dall-e/decoder.pkl"}
_LIMITS = {"n_hid": 4096, "n_blk_per_group": 64, "input_channels": 16, "output_channels": 16, "vocab_size": 2**20,
           "n_init": 4096}  # far above the official sizes: a file claiming more is refused before anything is built


def map_pixels(x: Tensor) -> Tensor:
    """[0, 1] -> [eps, 1 - eps], the range the dVAE's logit-Laplace likelihood is defined on."""
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: Tensor) -> Tensor:
    """The inverse of `map_pixels`, clamped to [0, 1]."""
    return ((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)).clamp(0, 1)


def _conv(n_in: int, n_out: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel, padding=(kernel - 1) // 2)


class _Block(nn.Module):
    """A bottleneck residual block: id_path (1x1 when the width changes) + post_gain * four ReLU-convolutions."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: Tuple[int, int, int, int]) -> None:
        super().__init__()
        hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [(n_in, hid), (hid, hid), (hid, hid), (hid, n_out)]
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        for i, ((a, b), k) in enumerate(zip(widths, kernels), start=1):
            layers[f"relu_{i}"] = nn.ReLU()
            layers[f"conv_{i}"] = _conv(a, b, k)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


def _groups(widths: Tuple[int, ...], first_in: int, blocks: int, kernels: Tuple[int, int, int, int],
            resample: Optional[nn.Module]) -> "OrderedDict[str, nn.Module]":
    """The four groups: group g has `blocks` blocks of width widths[g]; all but the last end with `resample`."""
    n_layers, groups, n_in = GROUPS * blocks, OrderedDict(), first_in
    for g, width in enumerate(widths):
        group: "OrderedDict[str, nn.Module]" = OrderedDict()
        for i in range(blocks):
            group[f"block_{i + 1}"] = _Block(n_in, width, n_layers, kernels)
            n_in = width
        if g < len(widths) - 1 and resample is not None:
            group["upsample" if isinstance(resample, nn.Upsample) else "pool"] = resample
        groups[f"group_{g + 1}"] = nn.Sequential(group)
    return groups


class _Encoder(nn.Module):
    def __init__(self, n_hid: int, n_blk_per_group: int, input_channels: int, vocab_size: int) -> None:
        super().__init__()
        widths = tuple(m * n_hid for m in (1, 2, 4, 8))
        layers = OrderedDict([("input", _conv(input_channels, n_hid, 7))])
        layers.update(_groups(widths, n_hid, n_blk_per_group, (3, 3, 3, 1), nn.MaxPool2d(2)))
        layers["output"] = nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", _conv(widths[-1], vocab_size, 1))]))
        self.blocks = nn.Sequential(layers)


class _Decoder(nn.Module):
    def __init__(self, n_init: int, n_hid: int, n_blk_per_group: int, output_channels: int, vocab_size: int) -> None:
        super().__init__()
        widths = tuple(m * n_hid for m in (8, 4, 2, 1))
        layers = OrderedDict([("input", _conv(vocab_size, n_init, 1))])
        layers.update(_groups(widths, n_init, n_blk_per_group, (1, 3, 3, 3), nn.Upsample(scale_factor=2, mode="nearest")))
        layers["output"] = nn.Sequential(OrderedDict([("relu", nn.ReLU()),
                                                      ("conv", _conv(widths[-1], 2 * output_channels, 1))]))
        self.blocks = nn.Sequential(layers)


def _check_architecture(architecture: Any, where: str) -> Dict[str, Dict[str, int]]:
    """`architecture` as {"encoder": {...}, "decoder": {...}} of bounded positive ints that fit together."""
    if not isinstance(architecture, Mapping) or set(architecture) != {"encoder", "decoder"}:
        raise ValueError(f"{where}: architecture must be {{'encoder': {{...}}, 'decoder': {{...}}}} with the keys of "
                         f"OFFICIAL_ARCHITECTURE, got {architecture!r:.100}")
    out: Dict[str, Dict[str, int]] = {}
    for part, official in OFFICIAL_ARCHITECTURE.items():
        sizes = architecture[part]
        if not isinstance(sizes, Mapping) or set(sizes) != set(official):
            raise ValueError(f"{where}: architecture[{part!r}] must have the keys {sorted(official)}, got "
                             f"{sorted(sizes) if isinstance(sizes, Mapping) else sizes!r:.80}")
        for key, value in sizes.items():
            check_int(f"{where}: {part} {key}", value)
            if value > _LIMITS[key]:
                raise ValueError(f"{where}: {part} {key}={value} is beyond any dVAE (at most {_LIMITS[key]})")
        out[part] = dict(sizes)
    if out["encoder"]["vocab_size"] != out["decoder"]["vocab_size"]:
        raise ValueError(f"{where}: the encoder has {out['encoder']['vocab_size']} codes, the decoder "
                         f"{out['decoder']['vocab_size']}: they are not a pair")
    for part in ("encoder", "decoder"):
        if out[part]["n_hid"] % 4:
            raise ValueError(f"{where}: {part} n_hid must be a multiple of 4 (the blocks' bottleneck), got "
                             f"{out[part]['n_hid']}")
    return out


def _read_official(path: Path, cls_name: str, keys: Tuple[str, ...]) -> Tuple[Dict[str, int], Dict[str, Tensor]]:
    """Sizes and weights of a pickled `dall_e` module file, read as data; weights renamed w/b -> weight/bias."""
    what = f"OpenAI dVAE {path.name} (a pickled {cls_name})"
    try:
        record = read_pickled(path, what=what)
        if not isinstance(record, Pickled) or record.name != cls_name:
            raise UnsafePickleError(f"{path}: expected a pickled {cls_name} (OpenAI's {path.name}), got "
                                    f"{getattr(record, 'name', type(record).__name__)}")
        sizes = {k: attribute(record, k, int, str(path)) for k in keys}
        tensors = module_tensors(record, str(path))
    except UnsafePickleError as err:
        raise CheckpointError(str(err)) from None
    renamed = {}
    for name, tensor in tensors.items():
        head, _, leaf = name.rpartition(".")
        if leaf not in ("w", "b"):
            raise CheckpointError(f"{path}: unexpected tensor {name!r}; dall_e convolutions hold only w and b")
        renamed[f"{head}.{'weight' if leaf == 'w' else 'bias'}"] = tensor
    return sizes, renamed


def architecture_of(weights: Mapping[str, Tensor], where: str = "weights") -> Dict[str, Dict[str, int]]:
    """The sizes of the dVAE whose state dict (our names, `encoder.*` and `decoder.*`) is `weights`, read from the
    tensors' shapes; CheckpointError when they do not describe one."""
    try:
        enc_in, enc_out = weights["encoder.blocks.input.weight"], weights["encoder.blocks.output.conv.weight"]
        dec_in, dec_out = weights["decoder.blocks.input.weight"], weights["decoder.blocks.output.conv.weight"]
    except KeyError as err:
        raise CheckpointError(f"{where}: no OpenAI dVAE weights ({err.args[0]} missing)") from None
    if any(t.ndim != 4 for t in (enc_in, enc_out, dec_in, dec_out)):
        raise CheckpointError(f"{where}: OpenAI dVAE convolution weights must be 4-D")

    def blocks(part: str) -> int:
        return len({k.split(".")[3] for k in weights if k.startswith(f"{part}.blocks.group_1.block_")})

    return {"encoder": {"n_hid": enc_in.shape[0], "n_blk_per_group": blocks("encoder"),
                        "input_channels": enc_in.shape[1], "vocab_size": enc_out.shape[0]},
            "decoder": {"n_init": dec_in.shape[0], "n_hid": dec_out.shape[1], "n_blk_per_group": blocks("decoder"),
                        "output_channels": dec_out.shape[0] // 2, "vocab_size": dec_in.shape[1]}}


def rename_dall_e_keys(module: Any, state_dict: Dict[str, Any], prefix: str = "", *args: Any) -> None:
    """DALLE-pytorch's names for an OpenAI dVAE's tensors (`enc.blocks...w`, `dec.blocks...b`, as its
    OpenAIDiscreteVAE holds dall_e's modules) renamed in place to ours (`encoder.blocks...weight`); a
    load_state_dict pre-hook, so a DALLE-pytorch DALLE's weights load into a DALLE over an OpenAIDiscreteVAE."""
    for key in [k for k in state_dict if k.startswith((prefix + "enc.", prefix + "dec."))]:
        head, _, leaf = key[len(prefix):].rpartition(".")
        part, _, rest = head.partition(".")
        if leaf in ("w", "b"):
            new = f"{prefix}{'encoder' if part == 'enc' else 'decoder'}.{rest}.{'weight' if leaf == 'w' else 'bias'}"
            state_dict[new] = state_dict.pop(key)


class OpenAIDiscreteVAE(PretrainedMixin, nn.Module, register=True):
    """OpenAI's pretrained dVAE as DALLE's image tokenizer: 8192 codes, 256-px images to a 32x32 grid.

    `OpenAIDiscreteVAE(encoder_path, decoder_path, image_size=256)` reads OpenAI's `encoder.pkl` and
    `decoder.pkl` (as data: see the module docstring). Without paths it reads them from
    `dalle_core.files.cache_dir("openai_dvae")` (`$DALLE_CORE_CACHE/openai_dvae`, by default
    `~/.cache/dalle_core/openai_dvae`); nothing is downloaded, and when they are missing the error names the
    files and their addresses. `architecture=` (sizes as in `OFFICIAL_ARCHITECTURE`) builds that architecture with
    random weights and reads no file: `from_pretrained` and tests use it. `save_pretrained` writes config.json +
    safetensors like every dalle_core model. Images are in [0, 1]; codes are the encoder logits' argmax (no noise).
    Its weights are frozen (`requires_grad` False), as a pretrained tokenizer's.
    """

    RECORDS_OWN_CONFIG = True
    num_layers = 3  # three 2x poolings

    def __init__(self, encoder_path: Optional[PathOrStr] = None, decoder_path: Optional[PathOrStr] = None,
                 image_size: int = 256, *, architecture: Optional[Mapping[str, Mapping[str, int]]] = None) -> None:
        super().__init__()
        self.register_load_state_dict_pre_hook(rename_dall_e_keys)
        check_int("image_size", image_size, 8)
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x poolings), got {image_size}")
        weights: Optional[Dict[str, Tensor]] = None
        if architecture is None:
            architecture, weights, where = self._read_files(encoder_path, decoder_path)
        elif encoder_path is not None or decoder_path is not None:
            raise ValueError("give the paths of OpenAI's files or an architecture to build with random weights, "
                             "not both")
        else:
            where = "OpenAIDiscreteVAE"
        architecture = _check_architecture(architecture, where)
        if weights is None:
            pair = _Pair(architecture)
        else:  # checked on the meta device, then the files' weights fill it (no random init to overwrite)
            check_finite(weights, where)
            with torch.device("meta"):
                pair = _Pair(architecture)
            compare_state(pair, {k: (tuple(t.shape), t.is_floating_point()) for k, t in weights.items()}, where)
            pair = pair.to_empty(device="cpu")
            pair.load_state_dict(weights)
        self.encoder, self.decoder = pair.encoder, pair.decoder
        self.requires_grad_(False)
        self.image_size, self.channels = image_size, architecture["encoder"]["input_channels"]
        self.num_tokens = architecture["encoder"]["vocab_size"]
        self.fmap_size = image_size // 2**self.num_layers
        self.config = {"image_size": image_size, "architecture": architecture}

    @staticmethod
    def _read_files(encoder_path: Optional[PathOrStr], decoder_path: Optional[PathOrStr]
                    ) -> Tuple[Dict[str, Dict[str, int]], Dict[str, Tensor], str]:
        if (encoder_path is None) != (decoder_path is None):
            raise ValueError("give both encoder_path and decoder_path (OpenAI's encoder.pkl and decoder.pkl), or "
                             "neither to read them from the cache folder")
        if encoder_path is None:
            folder = cache_dir("openai_dvae")
            encoder_path, decoder_path = folder / "encoder.pkl", folder / "decoder.pkl"
            missing = [p.name for p in (Path(encoder_path), Path(decoder_path)) if not p.is_file()]
            if missing:
                sources = ", ".join(f"{name} from {OPENAI_FILES[name]}" for name in missing)
                raise FileNotFoundError(f"OpenAIDiscreteVAE() reads OpenAI's encoder.pkl and decoder.pkl from "
                                        f"{folder} (set DALLE_CORE_CACHE to move it), and {', '.join(missing)} "
                                        f"{'is' if len(missing) == 1 else 'are'} not there. dalle_core downloads "
                                        f"nothing: get {sources} into that folder, or pass their paths")
        enc_sizes, enc = _read_official(Path(encoder_path), "dall_e.encoder.Encoder",
                                        ("n_hid", "n_blk_per_group", "input_channels", "vocab_size"))
        dec_sizes, dec = _read_official(Path(decoder_path), "dall_e.decoder.Decoder",
                                        ("n_init", "n_hid", "n_blk_per_group", "output_channels", "vocab_size"))
        weights = {**{f"encoder.{k}": v for k, v in enc.items()}, **{f"decoder.{k}": v for k, v in dec.items()}}
        where = f"{encoder_path} + {decoder_path}"
        try:
            return _check_architecture({"encoder": enc_sizes, "decoder": dec_sizes}, where), weights, where
        except ValueError as err:
            raise CheckpointError(str(err)) from None

    # --- the image-tokenizer protocol ---------------------------------------------------------------------------

    @torch.no_grad()
    @eval_decorator
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Codes of images in [0, 1] (batch, channels, image_size, image_size): (batch, fmap_size**2), argmax."""
        images = check_images("images", images, channels=self.channels, image_size=self.image_size)
        return self.encoder.blocks(map_pixels(images.float())).argmax(dim=1).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Images in [0, 1] from codes (batch, fmap_size**2)."""
        img_seq = check_token_ids("img_seq", img_seq, vocab_size=self.num_tokens, ndim=2)
        if img_seq.shape[1] != self.fmap_size**2:
            raise ValueError(f"img_seq must have {self.fmap_size ** 2} codes per image ({self.fmap_size}x"
                             f"{self.fmap_size}), got {img_seq.shape[1]}")
        blocks = self.decoder.blocks
        first = blocks.input  # a 1x1 convolution of one-hot codes: a lookup of its weight's columns
        x = F.embedding(img_seq, first.weight[:, :, 0, 0].t()) + first.bias  # (b, n, n_init)
        x = rearrange(x, "b (h w) c -> b c h w", h=self.fmap_size)
        for name, layer in blocks.named_children():
            if name != "input":
                x = layer(x)
        return unmap_pixels(torch.sigmoid(x[:, : self.channels].float()))

    # --- continuous latents (the protocol `dalle_core.refine.clip_refine` optimises) -------------------------------
    # The decoder's input convolution takes a one-hot code: it adds one column of its weight (n_init values) to its
    # bias. Those columns are the codebook whose vectors the latents are, quantised to the nearest.

    def _codebook(self) -> Tensor:
        return self.decoder.blocks.input.weight[:, :, 0, 0].t()  # (num_tokens, n_init)

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """The continuous latents (batch, n_init, fmap_size, fmap_size) behind codes (batch, fmap_size**2): the
        decoder input convolution's weight column of each code, which `latents_to_codes` maps back to the code."""
        codes = check_codes(codes, num_tokens=self.num_tokens, fmap_size=self.fmap_size)
        codebook = self._codebook()
        return rearrange(F.embedding(codes.to(codebook.device), codebook), "b (h w) c -> b c h w", h=self.fmap_size)

    def latents_to_codes(self, latents: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of latents (batch, n_init, fmap_size, fmap_size): at each position the code
        whose weight column is nearest."""
        codebook = self._codebook()
        return nearest_codes(check_latents(latents, channels=codebook.shape[1], fmap_size=self.fmap_size), codebook)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Images in [0, 1] of latents (batch, n_init, fmap_size, fmap_size) quantised to the nearest weight columns:
        `decode(latents_to_codes(latents))`, with straight-through gradients to `latents`."""
        blocks = self.decoder.blocks
        quantized = self.codes_to_latents(self.latents_to_codes(latents))
        x = straight_through(latents, quantized).to(blocks.input.weight.dtype) + blocks.input.bias[:, None, None]
        for name, layer in blocks.named_children():
            if name != "input":
                x = layer(x)
        pixels = (torch.sigmoid(x[:, : self.channels].float()) - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)
        return clamp_with_grad(pixels, 0.0, 1.0)  # unmap_pixels, with gradients past its clamp

    def forward(self, images: Tensor) -> Tensor:
        """Reconstructions of `images` through the codes (encode, then decode)."""
        return self.decode(self.get_codebook_indices(images))

    @torch.no_grad()
    def codebook_usage(self, images: Tensor) -> CodebookUsage:
        """Codebook usage and perplexity of the codes of `images`."""
        return codebook_usage(self.get_codebook_indices(images), self.num_tokens)


class _Pair(nn.Module):
    """Encoder and decoder of one architecture (what the files' tensors are checked against)."""

    def __init__(self, architecture: Mapping[str, Mapping[str, int]]) -> None:
        super().__init__()
        self.encoder = _Encoder(**architecture["encoder"])
        self.decoder = _Decoder(**architecture["decoder"])
