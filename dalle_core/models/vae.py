"""The discrete VAE (dVAE) that turns images into a grid of codebook tokens and back.

Same layers, parameter names and defaults as DALLE-pytorch 1.6.6's `DiscreteVAE`, so its state dicts load
with `strict=True`. Differences from the reference, on purpose:

* Images go in and come out in [0, 1]. Inside, images are normalised with `(x - mean) / std` exactly like the
  reference and the decoder works in that space; returned images are mapped back (`* std + mean`) and
  clamped to [0, 1]. The reference's `decode` and `forward` return the normalised space instead.
* The loss adds entropy terms by default (see `DiscreteVAE`); `interop.vae_from_reference_config` turns them off.
* The KL term is KL(q || uniform) summed over codes, then averaged over batch and latent positions. The
  reference divides the total by 1 (`batchmean` on a batch-1 tensor), so its KL grows with batch size and
  grid size; ours equals the reference's divided by `batch * fmap_size**2`.
* User input is validated with ValueError / TypeError instead of asserts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..utils import check_float, check_int, check_token_ids, default, eval_decorator, images_for
from ..pretrained import PretrainedMixin

__all__ = ["DiscreteVAE", "ResBlock", "CodebookUsage", "codebook_usage", "conv_autoencoder",
           "check_conv_sizes", "check_codes", "check_latents", "nearest_codes", "straight_through", "clamp_with_grad"]

DEFAULT_NORMALIZATION = ((0.5, 0.5, 0.5, 0.0), (0.5, 0.5, 0.5, 1.0))  # (means, stds); sliced to `channels`


class ResBlock(nn.Module):
    """Residual block: conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv1x1, plus the input."""

    def __init__(self, chan: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(chan, chan, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(chan, chan, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(chan, chan, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        return self.net(x) + x


@dataclass
class CodebookUsage:
    """How much of a codebook a set of codes uses."""

    usage: float  # fraction of the codebook seen at least once
    perplexity: float  # exp(entropy of the code histogram): num_tokens when uniform, 1 when collapsed
    counts: Tensor  # (num_tokens,) how often each code occurs


def check_conv_sizes(*, image_size: int, num_tokens: int, codebook_dim: int, num_layers: int, num_resnet_blocks: int,
                     hidden_dim: int, channels: int, min_tokens: int = 1) -> None:
    """ValueError / TypeError unless the sizes build a `conv_autoencoder` over images of `image_size` pixels (a
    power of 2, at least 2**num_layers) with a codebook of at least `min_tokens` codes."""
    for name, value, minimum in [("image_size", image_size, 1), ("num_tokens", num_tokens, min_tokens),
                                 ("codebook_dim", codebook_dim, 1), ("num_layers", num_layers, 1),
                                 ("num_resnet_blocks", num_resnet_blocks, 0), ("hidden_dim", hidden_dim, 1),
                                 ("channels", channels, 1)]:
        check_int(name, value, minimum)
    if image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of 2, got {image_size}")
    if image_size < 2 ** num_layers:
        raise ValueError(f"image_size must be at least 2**num_layers = {2 ** num_layers}, got {image_size}")


def conv_autoencoder(*, channels: int, hidden_dim: int, num_layers: int, num_resnet_blocks: int, latent_out: int,
                     latent_in: int) -> Tuple[nn.Sequential, nn.Sequential]:
    """DALLE-pytorch's dVAE encoder and decoder: `num_layers` stride-2 4x4 convolutions (ReLU) down and up,
    `num_resnet_blocks` residual blocks at the bottom of each, and 1x1 convolutions to `latent_out` channels (the
    encoder's output) and from `latent_in` channels (the decoder's input). Layer order, and the order in which the
    layers are built (so the initial weights a seed gives), are the reference's; `VQVAE` uses the same stacks."""
    has_resblocks = num_resnet_blocks > 0
    enc_layers: list = []
    dec_layers: list = []
    enc_in, dec_in = channels, (hidden_dim if has_resblocks else latent_in)
    for _ in range(num_layers):
        enc_layers.append(nn.Sequential(nn.Conv2d(enc_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()))
        dec_layers.append(nn.Sequential(nn.ConvTranspose2d(dec_in, hidden_dim, 4, stride=2, padding=1), nn.ReLU()))
        enc_in = dec_in = hidden_dim
    for _ in range(num_resnet_blocks):  # built in the reference's order: one seed, its initial weights
        dec_layers.insert(0, ResBlock(hidden_dim))
        enc_layers.append(ResBlock(hidden_dim))
    if has_resblocks:
        dec_layers.insert(0, nn.Conv2d(latent_in, hidden_dim, 1))
    enc_layers.append(nn.Conv2d(hidden_dim, latent_out, 1))
    dec_layers.append(nn.Conv2d(hidden_dim, channels, 1))
    return nn.Sequential(*enc_layers), nn.Sequential(*dec_layers)


def codebook_usage(codes: Tensor, num_tokens: int) -> CodebookUsage:
    """Usage fraction, perplexity and histogram of integer `codes` (any shape) over a codebook of `num_tokens`."""
    codes = check_token_ids("codes", codes, vocab_size=num_tokens, ndim=getattr(codes, "ndim", 1))
    if codes.numel() == 0:
        raise ValueError("codes must contain at least one code, got an empty tensor")
    counts = torch.bincount(codes.flatten(), minlength=num_tokens)
    probs = counts.double() / counts.sum()
    entropy = -torch.special.xlogy(probs, probs).sum()  # 0 * log 0 = 0
    return CodebookUsage(
        usage=float((counts > 0).sum()) / num_tokens,
        perplexity=float(entropy.exp()),
        counts=counts,
    )


# --- continuous latents: what `dalle_core.refine.clip_refine` optimises, shared by every image tokenizer -----------

def check_codes(codes: Any, *, num_tokens: int, fmap_size: int) -> Tensor:
    """`codes` as a long tensor, or ValueError / TypeError unless it is (batch, fmap_size**2) ids in [0, num_tokens)."""
    codes = check_token_ids("codes", codes, vocab_size=num_tokens, ndim=2)
    if codes.shape[1] != fmap_size ** 2:
        raise ValueError(f"codes must have {fmap_size ** 2} codes per image ({fmap_size}x{fmap_size}), got "
                         f"{codes.shape[1]}")
    return codes


def check_latents(latents: Any, *, channels: int, fmap_size: int) -> Tensor:
    """ValueError / TypeError unless `latents` is a finite float tensor (batch, channels, fmap_size, fmap_size)."""
    if not isinstance(latents, Tensor) or not latents.is_floating_point():
        got = latents.dtype if isinstance(latents, Tensor) else type(latents).__name__
        raise TypeError(f"latents must be a floating-point tensor (batch, {channels}, {fmap_size}, {fmap_size}), "
                        f"got {got}")
    if latents.ndim != 4 or tuple(latents.shape[1:]) != (channels, fmap_size, fmap_size) or latents.shape[0] == 0:
        raise ValueError(f"latents must have shape (batch >= 1, {channels}, {fmap_size}, {fmap_size}), got "
                         f"{tuple(latents.shape)}")
    if not bool(torch.isfinite(latents.detach()).all()):
        raise ValueError("latents contain NaN or infinite values")
    return latents


def nearest_codes(latents: Tensor, codebook: Tensor) -> Tensor:
    """Index (batch, h*w) of the codebook row (codebook: (num_codes, d)) nearest to each latent vector of `latents`
    (batch, d, h, w), in raster order; squared Euclidean distances as taming's VectorQuantizer2 sums them."""
    b, d, h, w = latents.shape
    z = rearrange(latents.detach(), "b d h w -> (b h w) d").to(codebook.dtype)
    e = codebook.detach()
    e2 = (e ** 2).sum(dim=1)
    rows = max(1, 2 ** 24 // e.shape[0])  # at most this many (vector, code) distances at a time
    codes = [((part ** 2).sum(dim=1, keepdim=True) + e2 - 2 * (part @ e.t())).argmin(dim=1) for part in z.split(rows)]
    return torch.cat(codes).view(b, h * w)


def straight_through(latents: Tensor, quantized: Tensor) -> Tensor:
    """`quantized` in the forward pass; in the backward pass its gradient goes to `latents` unchanged."""
    return latents + (quantized.to(latents.dtype) - latents).detach()


class _ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, low: float, high: float) -> Tensor:
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


def clamp_with_grad(x: Tensor, low: float, high: float) -> Tensor:
    """`x.clamp(low, high)` whose gradient still passes where a descent step would move `x` back into range
    (VQGAN-CLIP's ClampWithGrad): a decoder output saturated at white can still be pulled darker."""
    return _ClampWithGrad.apply(x, low, high)


def _check_normalization(normalization: Any, channels: int) -> Optional[Tuple[Tuple[float, ...], ...]]:
    """Validate (means, stds) and slice each to `channels` entries, like the reference."""
    if normalization is None:
        return None
    try:
        means, stds = (tuple(float(v) for v in t) for t in normalization)
    except (TypeError, ValueError) as err:
        raise TypeError(f"normalization must be a pair (means, stds) of number sequences, got {normalization!r}") from err
    means, stds = means[:channels], stds[:channels]
    if len(means) != channels or len(stds) != channels:
        raise ValueError(f"normalization needs {channels} means and stds (one per channel), got {len(means)} and {len(stds)}")
    if any(s == 0 for s in stds):
        raise ValueError(f"normalization stds must be non-zero, got {stds}")
    return means, stds


class DiscreteVAE(PretrainedMixin, nn.Module, register=True):
    """Convolutional dVAE with a Gumbel-softmax bottleneck over a learned codebook (images in [0, 1]).

    The reference's constructor and defaults, plus two loss terms on by default (`entropy_loss_weight=0.001`,
    `diversity_gamma=3`; see `entropy_loss`): each position's code is pushed to be confident, and the batch's
    codes to spread over the codebook. Without them (the reference: no KL, no entropy terms) a plain Adam loop
    collapses the codebook to a few codes. A KL(q || uniform) weight (`kl_div_loss_weight`, 0 by default, the
    reference's) also keeps codes in use, but by flattening every position's posterior, so that the argmax
    codes a DALLE learns from are close to coin tosses (docs/measurements.md has the numbers and commands).

    Args:
        image_size: image side in pixels (a power of 2).
        num_tokens: codebook size.
        codebook_dim: codebook vector size.
        num_layers: downsamplings: the code grid is image_size / 2**num_layers a side.
        num_resnet_blocks: residual blocks in the encoder and in the decoder.
        hidden_dim: convolution channels.
        channels: image channels: 3 (RGB) or 4 (RGBA).
        smooth_l1_loss: smooth L1 instead of MSE reconstruction loss.
        temperature: Gumbel-softmax temperature (a trainer anneals from it; the paper ends at 1/16).
        straight_through: hard one-hot samples with straight-through gradients.
        reinmax: ReinMax gradients (with straight_through).
        kl_div_loss_weight: weight of KL(q || uniform) per latent position; it flattens every position's
            posterior, so codes turn noisy (the entropy terms are the default).
        entropy_loss_weight: weight of the entropy terms: confident codes at each position, spread over the
            codebook across the batch.
        diversity_gamma: how much the batch's code entropy counts against the per-position entropy.
        normalization: (means, stds) per channel of the space the encoder and decoder work in, or None.
    """

    # what a config saved before a keyword existed meant: the entropy terms were added after configs were written
    # without them, and those models trained without them (read by `from_pretrained`)
    LEGACY_CONFIG: ClassVar[Dict[str, Any]] = {"entropy_loss_weight": 0.0}

    def __init__(
        self,
        *,
        image_size: int = 256,
        num_tokens: int = 512,
        codebook_dim: int = 512,
        num_layers: int = 3,
        num_resnet_blocks: int = 0,
        hidden_dim: int = 64,
        channels: int = 3,
        smooth_l1_loss: bool = False,
        temperature: float = 0.9,
        straight_through: bool = False,
        reinmax: bool = False,  # only used with straight_through, as in the reference
        kl_div_loss_weight: float = 0.0,
        entropy_loss_weight: float = 0.001,
        diversity_gamma: float = 3.0,
        normalization: Optional[Sequence[Sequence[float]]] = DEFAULT_NORMALIZATION,
    ):
        super().__init__()
        check_conv_sizes(image_size=image_size, num_tokens=num_tokens, codebook_dim=codebook_dim, num_layers=num_layers,
                         num_resnet_blocks=num_resnet_blocks, hidden_dim=hidden_dim, channels=channels)
        check_float("temperature", temperature, low=0, low_open=True)
        check_float("kl_div_loss_weight", kl_div_loss_weight, low=0)
        check_float("entropy_loss_weight", entropy_loss_weight, low=0)
        check_float("diversity_gamma", diversity_gamma, low=0)
        self.normalization = _check_normalization(normalization, channels)

        self.image_size = image_size
        self.num_tokens = num_tokens
        self.num_layers = num_layers
        self.channels = channels
        self.fmap_size = image_size // 2 ** num_layers
        self.temperature = float(temperature)
        self.straight_through = bool(straight_through)
        self.reinmax = bool(reinmax)
        self.kl_div_loss_weight = float(kl_div_loss_weight)
        self.entropy_loss_weight = float(entropy_loss_weight)
        self.diversity_gamma = float(diversity_gamma)
        self.loss_fn = F.smooth_l1_loss if smooth_l1_loss else F.mse_loss

        self.codebook = nn.Embedding(num_tokens, codebook_dim)

        # Layer order (and so state-dict indices) and creation order follow the reference exactly.
        self.encoder, self.decoder = conv_autoencoder(channels=channels, hidden_dim=hidden_dim, num_layers=num_layers,
                                                      num_resnet_blocks=num_resnet_blocks, latent_out=num_tokens,
                                                      latent_in=codebook_dim)

    # --- pixel space <-> normalised space ------------------------------------------------------------------

    def _mean_std(self, like: Tensor) -> Tuple[Tensor, Tensor]:
        means, stds = (like.new_tensor(t).view(1, -1, 1, 1) for t in self.normalization)  # (1, c, 1, 1)
        return means, stds

    def norm(self, images: Tensor) -> Tensor:
        """Map [0, 1] images to the normalised space the encoder and decoder work in."""
        if self.normalization is None:
            return images
        means, stds = self._mean_std(images)
        return (images - means) / stds

    def denorm(self, images: Tensor) -> Tensor:
        """Map decoder output back to pixel space, clamped to [0, 1]."""
        if self.normalization is not None:
            means, stds = self._mean_std(images)
            images = images * stds + means
        return images.clamp(0.0, 1.0)

    # --- tokens ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    @eval_decorator
    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Image tokens: argmax of the encoder logits, shape (batch, fmap_size**2), no noise."""
        logits = self(images, return_logits=True)  # (b, n, h, w)
        return logits.argmax(dim=1).flatten(1)

    def decode(self, img_seq: Tensor) -> Tensor:
        """Images in [0, 1] from token ids of shape (batch, fmap_size**2)."""
        img_seq = check_token_ids("img_seq", img_seq, vocab_size=self.num_tokens, ndim=2)
        if img_seq.shape[1] != self.fmap_size ** 2:
            raise ValueError(f"img_seq must have {self.fmap_size ** 2} tokens per image "
                             f"({self.fmap_size}x{self.fmap_size}), got {img_seq.shape[1]}")
        embeds = rearrange(self.codebook(img_seq), "b (h w) d -> b d h w", h=self.fmap_size)
        return self.denorm(self.decoder(embeds))

    # --- continuous latents (the protocol `dalle_core.refine.clip_refine` optimises) -------------------------------

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """The continuous latents (batch, codebook_dim, fmap_size, fmap_size) behind codes (batch, fmap_size**2):
        their codebook vectors, which `latents_to_codes` maps back to the same codes."""
        codes = check_codes(codes, num_tokens=self.num_tokens, fmap_size=self.fmap_size)
        codes = codes.to(self.codebook.weight.device)
        return rearrange(self.codebook(codes), "b (h w) d -> b d h w", h=self.fmap_size)

    def latents_to_codes(self, latents: Tensor) -> Tensor:
        """Codes (batch, fmap_size**2) of latents (batch, codebook_dim, fmap_size, fmap_size): at each position,
        the nearest codebook vector."""
        latents = check_latents(latents, channels=self.codebook.embedding_dim, fmap_size=self.fmap_size)
        return nearest_codes(latents, self.codebook.weight)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Images in [0, 1] of latents (batch, codebook_dim, fmap_size, fmap_size) quantised to their nearest codebook
        vectors: `decode(latents_to_codes(latents))`, with straight-through gradients to `latents` (the clamp to
        [0, 1] lets through gradients that pull a saturated pixel back, see `clamp_with_grad`)."""
        quantized = self.codes_to_latents(self.latents_to_codes(latents))
        out = self.decoder(straight_through(latents, quantized).to(self.codebook.weight.dtype))
        if self.normalization is not None:
            means, stds = self._mean_std(out)
            out = out * stds + means
        return clamp_with_grad(out, 0.0, 1.0)

    @torch.no_grad()
    def codebook_usage(self, images: Tensor) -> CodebookUsage:
        """Codebook usage and perplexity of the tokens of `images`."""
        return codebook_usage(self.get_codebook_indices(images), self.num_tokens)

    # --- training --------------------------------------------------------------------------------------------

    def kl_divergence(self, logits: Tensor) -> Tensor:
        """KL(q || uniform) per latent position (summed over codes), averaged over batch and positions."""
        log_q = F.log_softmax(logits.float(), dim=1)  # (b, n, h, w)
        kl = (log_q.exp() * (log_q + math.log(self.num_tokens))).sum(dim=1)  # (b, h, w)
        return kl.mean()

    def entropy_loss(self, logits: Tensor) -> Tensor:
        """Mean per-position entropy of q minus `diversity_gamma` times the entropy of the batch's mean q.

        Lookup-free quantisation's entropy penalty (Yu et al. 2023, arXiv 2310.05737): the first term makes
        each position's code confident, the second spreads the batch over the codebook.
        """
        log_q = F.log_softmax(logits.float(), dim=1)  # (b, n, h, w)
        q = log_q.exp()
        per_position = -(q * log_q).sum(dim=1).mean()
        mean_q = q.mean(dim=(0, 2, 3))  # (n,)
        codebook = -torch.special.xlogy(mean_q, mean_q).sum()
        return per_position - self.diversity_gamma * codebook

    def _relaxed_one_hot(self, logits: Tensor, temp: float) -> Tensor:
        one_hot = F.gumbel_softmax(logits, tau=temp, dim=1, hard=self.straight_through)  # (b, n, h, w)
        if self.straight_through and self.reinmax:
            # ReinMax (arXiv 2304.08612, algorithm 2): hard sample forward, second-order gradient backward
            one_hot = one_hot.detach()
            pi0 = logits.softmax(dim=1)
            pi1 = (one_hot + (logits / temp).softmax(dim=1)) / 2
            pi1 = ((pi1.clamp(min=1e-20).log() - logits).detach() + logits).softmax(dim=1)
            pi2 = 2 * pi1 - 0.5 * pi0
            one_hot = pi2 - pi2.detach() + one_hot
        return one_hot

    def forward(
        self,
        img: Tensor,
        return_loss: bool = False,
        return_recons: bool = False,
        return_logits: bool = False,
        temp: Optional[float] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Reconstruction in [0, 1]; or encoder logits; or the loss (and the reconstruction)."""
        img = self.norm(images_for("img", img, self.codebook.weight, channels=self.channels,
                                   image_size=self.image_size, model="dVAE"))
        logits = self.encoder(img)  # (b, num_tokens, fmap, fmap)
        if return_logits:
            return logits

        temp = check_float("temp", default(temp, self.temperature), low=0, low_open=True)
        one_hot = self._relaxed_one_hot(logits, temp)
        sampled = torch.einsum("b n h w, n d -> b d h w", one_hot, self.codebook.weight)
        out = self.decoder(sampled)  # (b, c, image_size, image_size), normalised space
        if not return_loss:
            return self.denorm(out)

        recon_loss = self.loss_fn(img, out.to(img.dtype))
        loss = recon_loss
        if self.kl_div_loss_weight:
            loss = loss + self.kl_divergence(logits) * self.kl_div_loss_weight
        if self.entropy_loss_weight:
            loss = loss + self.entropy_loss(logits) * self.entropy_loss_weight
        return (loss, self.denorm(out)) if return_recons else loss
