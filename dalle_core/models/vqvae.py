"""`VQVAE`: the dVAE's convolutional encoder and decoder around a vector quantiser from `vector-quantize-pytorch`.

Three quantisers, chosen with `quantizer=`:

* ``"vq"``: a learned codebook updated by exponential moving averages of the vectors assigned to each code (van
  den Oord et al. 2017, appendix; Razavi et al. 2019), a commitment loss, k-means initialisation from the first
  batch it sees (vector-quantize-pytorch initialises in eval mode too: train before tokenizing) and dead-code
  replacement in training (a code used less than `dead_code_threshold` times in the moving average is re-seeded
  from a vector of the batch).
* ``"fsq"``: finite scalar quantisation (Mentzer et al. 2023, arXiv 2309.15505): the latent is projected to a few
  dimensions, each bounded and rounded to one of `levels[i]` values; the codebook is the product grid, so every
  code is reachable and no loss is needed. `fsq_levels` defaults to a factorisation of `num_tokens`.
* ``"lfq"``: lookup-free quantisation (Yu et al. 2023, arXiv 2310.05737): log2(num_tokens) dimensions each
  quantised to -1 or +1, with the entropy penalty that keeps codes confident and the batch spread over the codebook,
  and a commitment loss that keeps the latents near +-1 (without it the codebook collapses: docs/measurements.md).

Images go in and come out in [0, 1] (the networks work in [-1, 1]). Codes are (batch, fmap_size**2) in raster
order, so a `VQVAE` is a drop-in image tokenizer for `DALLE(vae=...)`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..pretrained import PretrainedMixin
from ..utils import check_float, check_int, check_token_ids, eval_decorator, images_for
from .vae import (CodebookUsage, check_codes, check_conv_sizes, check_latents, clamp_with_grad, codebook_usage,
                  conv_autoencoder, nearest_codes, straight_through)

__all__ = ["VQVAE", "QUANTIZERS", "fsq_levels"]

QUANTIZERS = ("vq", "fsq", "lfq")
MAX_FSQ_LEVEL = 16  # the largest number of values per FSQ dimension `fsq_levels` picks by itself


def _factor(n: int) -> list:
    """Prime factors of n, smallest first."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def fsq_levels(num_tokens: int) -> Tuple[int, ...]:
    """FSQ levels whose product is exactly `num_tokens`: as few dimensions as possible with at most 8 values each
    (16 when a prime factor needs it), as even as possible, largest first (512 -> (8, 8, 8); 128 -> (8, 4, 4);
    1000 -> (8, 5, 5, 5), the FSQ paper's levels for about 2**10). ValueError when `num_tokens` has a prime factor above 16: give `fsq_levels` by hand."""
    check_int("num_tokens", num_tokens, minimum=2)
    primes = _factor(num_tokens)
    if primes[-1] > MAX_FSQ_LEVEL:
        raise ValueError(f"FSQ needs levels whose product is num_tokens, but num_tokens={num_tokens} has the prime "
                         f"factor {primes[-1]} (more than {MAX_FSQ_LEVEL} values in one dimension); choose a "
                         f"num_tokens made of small factors (e.g. {2 ** round(math.log2(num_tokens))}) or pass "
                         "fsq_levels")
    cap = 8 if primes[-1] <= 8 else MAX_FSQ_LEVEL
    levels0 = tuple(sorted(primes, reverse=True))  # every prime its own level: always valid, rarely best
    best = ((len(levels0), levels0[0] - levels0[-1]), levels0)
    # every way of grouping the prime factors into levels <= cap (few factors: a plain search is instant)

    def search(rest: list, levels: list) -> None:
        nonlocal best
        if not rest:
            key = (len(levels), max(levels) - min(levels))
            if key < best[0]:
                best = (key, tuple(sorted(levels, reverse=True)))
            return
        p, tail = rest[0], rest[1:]
        seen = set()
        for i, level in enumerate(levels):  # multiply an existing level by p
            if level * p <= cap and level not in seen:
                seen.add(level)
                search(tail, levels[:i] + [level * p] + levels[i + 1:])
        search(tail, levels + [p])  # or start a new one

    search(primes, [])
    return best[1]


class VQVAE(PretrainedMixin, nn.Module, register=True):
    """Convolutional VQ-VAE image tokenizer with a VQ (EMA codebook), FSQ or LFQ bottleneck (images in [0, 1]).

    The encoder and decoder are `DiscreteVAE`'s (same keywords); the encoder ends in `codebook_dim` channels that
    the quantiser turns into one of `num_tokens` codes per position. `vae(images, return_loss=True)` is the
    reconstruction loss plus the quantiser's own loss (VQ: commitment; LFQ: entropy; FSQ: none). The quantiser is
    `vector-quantize-pytorch`'s (`VectorQuantize`, `FSQ`, `LFQ`).

    Args:
        image_size: image side in pixels (a power of 2).
        num_tokens: codebook size (FSQ: the product of its levels; LFQ: a power of 2).
        codebook_dim: channels of the encoder's output, the vectors that are quantised (FSQ and LFQ project them to
            their few dimensions and back).
        num_layers: downsamplings: the code grid is image_size / 2**num_layers a side.
        num_resnet_blocks: residual blocks in the encoder and in the decoder.
        hidden_dim: convolution channels.
        channels: image channels: 3 (RGB) or 4 (RGBA).
        quantizer: "vq" (EMA codebook), "fsq" (finite scalar) or "lfq" (lookup-free).
        smooth_l1_loss: smooth L1 instead of MSE reconstruction loss.
        commitment_weight: VQ: weight of the commitment loss ||z - sg(q)||^2.
        codebook_decay: VQ: decay of the codebook's moving averages.
        kmeans_init: VQ: initialise the codebook by k-means on the first training batch.
        dead_code_threshold: VQ: a code whose moving-average use falls below this is re-seeded from the batch
            (0: never).
        fsq_levels: FSQ: values per dimension (their product must be num_tokens); None: chosen by `fsq_levels`.
        lfq_entropy_weight: LFQ: weight of the entropy penalty (per-position entropy minus
            `lfq_diversity_gamma` times the batch's code entropy).
        lfq_diversity_gamma: LFQ: weight of the batch's code entropy in that penalty.
        lfq_temperature: LFQ: temperature of the softmax over codes (of minus the squared distances) whose
            entropies make the penalty.
        lfq_commitment_weight: LFQ: weight of the commitment loss ||z - sg(sign(z))||^2 (MAGVIT-v2's 0.25).
            Without it the encoder shrinks z towards 0, where every code is equally likely, and the codebook
            collapses (docs/measurements.md).
    """

    def __init__(
        self,
        *,
        image_size: int = 256,
        num_tokens: int = 512,
        codebook_dim: int = 64,
        num_layers: int = 3,
        num_resnet_blocks: int = 0,
        hidden_dim: int = 64,
        channels: int = 3,
        quantizer: str = "vq",
        smooth_l1_loss: bool = False,
        commitment_weight: float = 0.25,
        codebook_decay: float = 0.8,
        kmeans_init: bool = True,
        dead_code_threshold: float = 2.0,
        fsq_levels: Optional[Sequence[int]] = None,
        lfq_entropy_weight: float = 0.3,
        lfq_diversity_gamma: float = 1.0,
        lfq_temperature: float = 0.1,
        lfq_commitment_weight: float = 0.25,
    ):
        super().__init__()
        import vector_quantize_pytorch as vqp  # imported here: `import dalle_core` does not pay for it

        levels = self.check_keywords(image_size=image_size, num_tokens=num_tokens, codebook_dim=codebook_dim,
                                     num_layers=num_layers, num_resnet_blocks=num_resnet_blocks,
                                     hidden_dim=hidden_dim, channels=channels, quantizer=quantizer,
                                     commitment_weight=commitment_weight, codebook_decay=codebook_decay,
                                     dead_code_threshold=dead_code_threshold, fsq_levels=fsq_levels,
                                     lfq_entropy_weight=lfq_entropy_weight, lfq_diversity_gamma=lfq_diversity_gamma,
                                     lfq_temperature=lfq_temperature, lfq_commitment_weight=lfq_commitment_weight)

        self.image_size, self.num_tokens, self.num_layers, self.channels = image_size, num_tokens, num_layers, channels
        self.fmap_size = image_size // 2 ** num_layers
        self.quantizer_kind = quantizer
        self.lfq_temperature = float(lfq_temperature)
        self.loss_fn = F.smooth_l1_loss if smooth_l1_loss else F.mse_loss
        self.encoder, self.decoder = conv_autoencoder(channels=channels, hidden_dim=hidden_dim, num_layers=num_layers,
                                                      num_resnet_blocks=num_resnet_blocks, latent_out=codebook_dim,
                                                      latent_in=codebook_dim)
        # FSQ and LFQ read their buffers' values while being built, which the meta device (where checkpoints are
        # first built to check their shapes) cannot give: their few small tensors are built on the CPU then
        on_meta = torch.empty(0).is_meta
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            self.quantizer = self._quantizer(vqp, codebook_dim, levels, quantizer=quantizer, num_tokens=num_tokens,
                                             commitment_weight=commitment_weight, codebook_decay=codebook_decay,
                                             kmeans_init=kmeans_init, dead_code_threshold=dead_code_threshold,
                                             lfq_entropy_weight=lfq_entropy_weight,
                                             lfq_diversity_gamma=lfq_diversity_gamma,
                                             lfq_commitment_weight=lfq_commitment_weight)

    @staticmethod
    def _quantizer(vqp: Any, codebook_dim: int, levels: Optional[Tuple[int, ...]], *, quantizer: str,
                   num_tokens: int, commitment_weight: float, codebook_decay: float, kmeans_init: bool,
                   dead_code_threshold: float, lfq_entropy_weight: float, lfq_diversity_gamma: float,
                   lfq_commitment_weight: float) -> nn.Module:
        if quantizer == "vq":
            return vqp.VectorQuantize(
                dim=codebook_dim, codebook_size=num_tokens, decay=codebook_decay, commitment_weight=commitment_weight,
                kmeans_init=kmeans_init, threshold_ema_dead_code=dead_code_threshold)
        if quantizer == "fsq":
            return vqp.FSQ(levels=list(levels), dim=codebook_dim)
        return vqp.LFQ(dim=codebook_dim, codebook_size=num_tokens, entropy_loss_weight=lfq_entropy_weight,
                       diversity_gamma=lfq_diversity_gamma, commitment_loss_weight=lfq_commitment_weight)

    @classmethod
    def check_keywords(cls, *, image_size: int, num_tokens: int, codebook_dim: int, num_layers: int,
                       num_resnet_blocks: int, hidden_dim: int, channels: int, quantizer: str,
                       commitment_weight: float, codebook_decay: float, dead_code_threshold: float,
                       fsq_levels: Optional[Sequence[int]], lfq_entropy_weight: float,
                       lfq_diversity_gamma: float, lfq_temperature: float, lfq_commitment_weight: float,
                       **_: object) -> Optional[Tuple[int, ...]]:
        """Raise ValueError / TypeError for keywords that cannot build a VQVAE (without building one); returns
        the FSQ levels (None for the other quantisers)."""
        check_conv_sizes(image_size=image_size, num_tokens=num_tokens, codebook_dim=codebook_dim, num_layers=num_layers,
                         num_resnet_blocks=num_resnet_blocks, hidden_dim=hidden_dim, channels=channels, min_tokens=2)
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        check_float("commitment_weight", commitment_weight, low=0)
        check_float("codebook_decay", codebook_decay, low=0, high=1, high_open=True)
        check_float("dead_code_threshold", dead_code_threshold, low=0)
        check_float("lfq_entropy_weight", lfq_entropy_weight, low=0)
        check_float("lfq_diversity_gamma", lfq_diversity_gamma, low=0)
        check_float("lfq_temperature", lfq_temperature, low=0, low_open=True)
        check_float("lfq_commitment_weight", lfq_commitment_weight, low=0)

        if quantizer == "lfq" and num_tokens & (num_tokens - 1):
            raise ValueError(f"LFQ's codebook is every sign pattern of log2(num_tokens) bits: num_tokens must be a "
                             f"power of 2, got {num_tokens}")
        return cls._check_levels(fsq_levels, num_tokens) if quantizer == "fsq" else None

    @staticmethod
    def _check_levels(levels: Optional[Sequence[int]], num_tokens: int) -> Tuple[int, ...]:
        if levels is None:
            return fsq_levels(num_tokens)
        if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
            raise TypeError(f"fsq_levels must be a sequence of ints, got {levels!r}")
        levels = tuple(check_int("fsq_levels entries", v, minimum=2) for v in levels)
        if not levels or math.prod(levels) != num_tokens:
            raise ValueError(f"fsq_levels {list(levels)} multiply to {math.prod(levels) if levels else 0}, but "
                             f"num_tokens is {num_tokens}: their product must equal num_tokens")
        return levels

    # --- the pieces ------------------------------------------------------------------------------------------

    def _weights(self) -> Tensor:
        return self.decoder[-1].weight

    def _encode(self, images: Tensor) -> Tensor:
        """(b, c, s, s) images in [0, 1] -> (b, fmap**2, codebook_dim) latents, in the weights' dtype."""
        images = images_for("images", images, self._weights(), channels=self.channels, image_size=self.image_size,
                            model="VQVAE")
        return rearrange(self.encoder(images * 2 - 1), "b d h w -> b (h w) d")

    def _quantize(self, latents: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(quantised latents, codes (b, n), quantiser loss) of (b, n, d) latents, computed in float32."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = latents.float()
            if self.quantizer_kind == "fsq":
                quantized, codes = self.quantizer(latents)
                loss = latents.new_zeros(())
            elif self.quantizer_kind == "lfq":
                quantized, codes, loss = self.quantizer(latents, inv_temperature=1 / self.lfq_temperature)
            else:
                quantized, codes, loss = self.quantizer(latents)
        return quantized, codes.long(), loss.sum()

    def _decode_latents(self, quantized: Tensor) -> Tensor:
        """(b, n, d) quantised latents -> decoder output in [-1, 1] space, (b, c, s, s)."""
        z = rearrange(quantized, "b (h w) d -> b d h w", h=self.fmap_size).to(self._weights().dtype)
        return self.decoder(z)

    # --- the tokenizer protocol ------------------------------------------------------------------------------

    @torch.no_grad()
    @eval_decorator
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of images (batch, channels, image_size, image_size) in [0, 1]."""
        return self._quantize(self._encode(images))[1]

    def decode(self, img_seq: Tensor) -> Tensor:
        """Images in [0, 1] from codes of shape (batch, fmap_size**2)."""
        img_seq = check_token_ids("img_seq", img_seq, vocab_size=self.num_tokens, ndim=2)
        if img_seq.shape[1] != self.fmap_size ** 2:
            raise ValueError(f"img_seq must have {self.fmap_size ** 2} codes per image "
                             f"({self.fmap_size}x{self.fmap_size}), got {img_seq.shape[1]}")
        img_seq = img_seq.to(self._weights().device)
        if self.quantizer_kind == "vq":
            quantized = self.quantizer.get_output_from_indices(img_seq)
        else:
            quantized = self.quantizer.indices_to_codes(img_seq)
        return ((self._decode_latents(quantized) + 1) * 0.5).clamp(0.0, 1.0)

    # --- continuous latents (the protocol `dalle_core.refine.clip_refine` optimises) -------------------------------
    # vq: codebook vectors (codebook_dim channels), quantised to the nearest; fsq: each dimension's level index in
    # [0, levels[i]) (len(levels) channels), rounded; lfq: one value per bit (log2(num_tokens) channels), quantised
    # to its sign (+-1). All in float32, the space the quantiser works in, before its projection out.

    def _latent_channels(self) -> int:
        if self.quantizer_kind == "vq":
            return self.quantizer.codebook.shape[-1]
        return int(self.quantizer.mask.numel() if self.quantizer_kind == "lfq" else self.quantizer._levels.numel())

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """The continuous latents (batch, channels, fmap_size, fmap_size) behind codes (batch, fmap_size**2), which
        `latents_to_codes` maps back to the same codes: VQ's codebook vectors, FSQ's level indices, LFQ's +-1 bits."""
        codes = check_codes(codes, num_tokens=self.num_tokens, fmap_size=self.fmap_size).to(self._weights().device)
        q = self.quantizer
        if self.quantizer_kind == "vq":
            latents = q.codebook[codes].float()  # (b, n, d)
        elif self.quantizer_kind == "fsq":
            latents = q.indices_to_level_indices(codes).float()  # (b, n, len(levels))
        else:
            bits = (codes[..., None] & q.mask) != 0  # (b, n, log2(num_tokens)), most significant bit first
            latents = torch.where(bits, 1.0, -1.0) * q.codebook_scale
        return rearrange(latents, "b (h w) d -> b d h w", h=self.fmap_size)

    def _quantize_latents(self, latents: Tensor) -> Tuple[Tensor, Tensor]:
        """(quantised latents (b, d, h, w), codes (b, h*w)) of latents (b, d, h, w), without gradients."""
        latents = check_latents(latents, channels=self._latent_channels(), fmap_size=self.fmap_size).detach().float()
        q = self.quantizer
        if self.quantizer_kind == "vq":
            codes = nearest_codes(latents, q.codebook.float())
            return self.codes_to_latents(codes), codes
        if self.quantizer_kind == "fsq":
            levels = q._levels.view(1, -1, 1, 1).to(latents.device)
            quantized = torch.minimum(latents.round().clamp(min=0), levels - 1)
            codes = (quantized.long() * q._basis.view(1, -1, 1, 1).to(latents.device)).sum(dim=1).flatten(1)
            return quantized, codes
        codes = ((latents > 0).long() * q.mask.view(1, -1, 1, 1)).sum(dim=1).flatten(1)
        return torch.where(latents > 0, 1.0, -1.0) * q.codebook_scale, codes

    def latents_to_codes(self, latents: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of latents (batch, channels, fmap_size, fmap_size) (see `codes_to_latents`):
        VQ's nearest codebook vector, FSQ's rounded levels, LFQ's signs."""
        return self._quantize_latents(latents)[1]

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Images in [0, 1] of latents (batch, channels, fmap_size, fmap_size) quantised as `latents_to_codes` does:
        `decode(latents_to_codes(latents))`, with straight-through gradients to `latents`."""
        quantized, _ = self._quantize_latents(latents)
        z = rearrange(straight_through(latents.float(), quantized), "b d h w -> b (h w) d")
        if self.quantizer_kind == "fsq":
            half_width = (self.quantizer._levels // 2).to(z.device)
            z = (z - half_width) / half_width  # FSQ's codes in [-1, 1]
        out = self._decode_latents(self.quantizer.project_out(z))
        return clamp_with_grad((out + 1) * 0.5, 0.0, 1.0)

    @torch.no_grad()
    def codebook_usage(self, images: Tensor) -> CodebookUsage:
        """Codebook usage and perplexity of the codes of `images`."""
        return codebook_usage(self.get_codebook_indices(images), self.num_tokens)

    def forward(self, img: Tensor, return_loss: bool = False,
                return_recons: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Reconstruction in [0, 1] (straight-through quantisation); or the loss (and the reconstruction)."""
        latents = self._encode(img)
        quantized, _, quant_loss = self._quantize(latents)
        out = self._decode_latents(quantized)
        recons = ((out + 1) * 0.5).clamp(0.0, 1.0)
        if not return_loss:
            return recons
        target = img.to(out.dtype) * 2 - 1
        loss = self.loss_fn(out, target) + quant_loss
        return (loss, recons) if return_recons else loss
