"""The DALL-E 2 decoder: a small GLIDE-style U-Net that draws an image from its CLIP image embedding by diffusion.

The embedding conditions the U-Net twice, as in the paper: projected and added to the timestep embedding (which
scales and shifts every residual block), and projected to `num_cond_tokens` context tokens that the attention
layers read beside the pixels. `Decoder` wraps a `Unet` with the diffusion: images in [0, 1] are mapped to
[-1, 1], noised on the cosine schedule and denoised with an eps-, v- (default) or x_0-objective; for
classifier-free guidance the embedding is replaced by a learned null embedding with probability
`cond_drop_prob`; sampling is DDIM with a chosen number of steps (eta 1 with every step: DDPM).
The paper's two upsamplers (64 -> 256 -> 1024) and the decoder's text conditioning are not built: at this
library's image sizes the base decoder draws the final image.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..pretrained import PretrainedMixin
from ..sampling import classifier_free_guidance
from ..utils import check_float, check_images, check_int, eval_decorator
from .diffusion import OBJECTIVES, NoiseSchedule, timestep_embedding
from .prior import check_embeddings

__all__ = ["Unet", "Decoder"]


def _zero(module: nn.Module) -> nn.Module:
    """`module` with its weights and bias set to zero (residual branches start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the timestep (+ embedding) vector scales and shifts the middle (FiLM)."""

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, dim_in), nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.to_scale_shift = nn.Linear(time_dim, dim_out * 2)
        self.norm2, self.dropout = nn.GroupNorm(groups, dim_out), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(dim_out, dim_out, 3, padding=1))
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: Tensor, time: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.to_scale_shift(F.silu(time))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class ContextAttention(nn.Module):
    """Self-attention over the pixels whose keys and values also hold the context tokens (GLIDE)."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int, groups: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.GroupNorm(groups, dim)
        self.to_qkv = nn.Conv2d(dim, inner * 3, 1, bias=False)
        self.context_to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = _zero(nn.Conv2d(inner, dim, 1))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.to_qkv(self.norm(x)), "b (qkv h d) x y -> qkv b h (x y) d", qkv=3, h=self.heads)
        ck, cv = rearrange(self.context_to_kv(context), "b m (kv h d) -> kv b h m d", kv=2, h=self.heads)
        out = F.scaled_dot_product_attention(q, torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2))
        return x + self.to_out(rearrange(out, "b h (x y) d -> b (h d) x y", x=h, y=w))


class Level(nn.Module):
    """The residual blocks (and attention) of one resolution."""

    def __init__(self, dims: Sequence[int], time_dim: int, context_dim: int, attend: bool, heads: int,
                 dim_head: int, groups: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(a, b, time_dim, groups, dropout) for a, b in zip(dims[:-1], dims[1:]))
        self.attn = ContextAttention(dims[-1], context_dim, heads, dim_head, groups) if attend else None

    def forward(self, x: Tensor, time: Tensor, context: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(torch.cat([x, skip], dim=1) if i == 0 and skip is not None else x, time)
        return x if self.attn is None else self.attn(x, context)


class Unet(PretrainedMixin, nn.Module, register=True):
    """A U-Net denoiser conditioned on a CLIP image embedding (DALL-E 2's decoder, GLIDE-style).

    Args:
        dim: channels of the first level.
        dim_mults: channel multiplier of each level (one level per entry; each after the first halves the size).
        channels: image channels.
        cond_dim: the conditioning embedding size (CLIP's dim_latent).
        num_cond_tokens: context tokens made from the embedding for the attention layers (the paper: 4).
        num_resnet_blocks: residual blocks per level.
        attn_levels: how many of the lowest-resolution levels have attention (the middle always has).
        attn_heads: attention heads.
        attn_dim_head: width of each attention head.
        groups: GroupNorm groups (must divide dim times every multiplier).
        dropout: dropout inside the residual blocks.
    """

    def __init__(self, *, dim: int = 64, dim_mults: Sequence[int] = (1, 2, 4), channels: int = 3,
                 cond_dim: int = 512, num_cond_tokens: int = 4, num_resnet_blocks: int = 1, attn_levels: int = 1,
                 attn_heads: int = 4, attn_dim_head: int = 32, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        for name, value in (("dim", dim), ("channels", channels), ("cond_dim", cond_dim),
                            ("num_cond_tokens", num_cond_tokens), ("num_resnet_blocks", num_resnet_blocks),
                            ("attn_heads", attn_heads), ("attn_dim_head", attn_dim_head), ("groups", groups)):
            check_int(name, value)
        check_int("attn_levels", attn_levels, minimum=0)
        check_float("dropout", dropout, low=0.0, high=1.0)
        if not isinstance(dim_mults, (tuple, list)) or not dim_mults:
            raise ValueError(f"dim_mults must be a non-empty sequence of ints, got {dim_mults!r}")
        dims = [dim * check_int("dim_mults[i]", m) for m in dim_mults]
        if any(d % groups for d in dims):
            raise ValueError(f"groups={groups} must divide every level's channels {dims}")
        self.channels, self.cond_dim, self.num_levels = channels, cond_dim, len(dims)
        self.dim = dim
        time_dim, context_dim = dim * 4, dims[-1]
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.cond_to_time = nn.Linear(cond_dim, time_dim)
        self.cond_to_tokens = nn.Linear(cond_dim, num_cond_tokens * context_dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.num_cond_tokens = num_cond_tokens
        self.init_conv = nn.Conv2d(channels, dim, 3, padding=1)
        level = dict(time_dim=time_dim, context_dim=context_dim, heads=attn_heads, dim_head=attn_dim_head,
                     groups=groups, dropout=dropout)
        attends = [i >= len(dims) - attn_levels for i in range(len(dims))]
        self.downs, self.downsamples = nn.ModuleList(), nn.ModuleList()
        previous = dim
        for i, d in enumerate(dims):
            self.downs.append(Level([previous] + [d] * num_resnet_blocks, attend=attends[i], **level))
            self.downsamples.append(nn.Conv2d(d, d, 3, stride=2, padding=1) if i < len(dims) - 1 else nn.Identity())
            previous = d
        self.mid = nn.ModuleList([Level([previous, previous], attend=True, **level),
                                  Level([previous, previous], attend=False, **level)])
        self.ups, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(dims))):
            d = dims[i]
            self.ups.append(Level([previous + d] + [d] * num_resnet_blocks, attend=attends[i], **level))
            self.upsamples.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                nn.Conv2d(d, d, 3, padding=1)) if i > 0 else nn.Identity())
            previous = d
        self.out = nn.Sequential(nn.GroupNorm(groups, dims[0]), nn.SiLU(), _zero(nn.Conv2d(dims[0], channels, 3,
                                                                                            padding=1)))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The denoiser's output (B, C, H, W) for noised images x (B, C, H, W), timesteps t (B,) and embeddings
        cond (B, cond_dim); H and W divisible by 2 ** (levels - 1)."""
        if x.shape[-1] % 2 ** (self.num_levels - 1) or x.shape[-2] % 2 ** (self.num_levels - 1):
            raise ValueError(f"image sides must be divisible by {2 ** (self.num_levels - 1)} (one halving per level "
                             f"after the first), got {tuple(x.shape[-2:])}")
        cond = cond.to(x.dtype)
        time = self.time_mlp(timestep_embedding(t, self.dim).to(x.dtype)) + self.cond_to_time(cond)
        context = self.context_norm(self.cond_to_tokens(cond).view(len(x), self.num_cond_tokens, -1))
        h = self.init_conv(x)
        skips = []
        for level, down in zip(self.downs, self.downsamples):
            h = level(h, time, context)
            skips.append(h)
            h = down(h)
        for level in self.mid:
            h = level(h, time, context)
        for level, up in zip(self.ups, self.upsamples):
            h = up(level(h, time, context, skip=skips.pop()))
        return self.out(h)


class Decoder(PretrainedMixin, nn.Module, register=True):
    """Diffusion over a `Unet`: images in [0, 1] from CLIP image embeddings (DALL-E 2's decoder).

    Args:
        unet: the denoiser.
        image_size: image side in pixels.
        timesteps: diffusion noise levels in training.
        objective: what the U-Net predicts: "v" (default), "eps" (the noise) or "x0".
        cond_drop_prob: probability of replacing the embedding by the learned null embedding in training.
        sample_steps: DDIM steps at sampling (default for `sample`).
    """

    MODULE_ARGS = ("unet",)

    def __init__(self, unet: Unet, *, image_size: int = 64, timesteps: int = 1000, objective: str = "v",
                 cond_drop_prob: float = 0.1, sample_steps: int = 50):
        super().__init__()
        if not isinstance(unet, Unet):
            raise TypeError(f"unet must be a dalle_core.dalle2.Unet, got {type(unet).__name__}")
        check_int("image_size", image_size)
        check_int("sample_steps", sample_steps)
        check_float("cond_drop_prob", cond_drop_prob, low=0.0, high=1.0)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if image_size % 2 ** (unet.num_levels - 1):
            raise ValueError(f"image_size={image_size} must be divisible by {2 ** (unet.num_levels - 1)} for a U-Net "
                             f"of {unet.num_levels} levels")
        self.schedule = NoiseSchedule(timesteps)
        if sample_steps > timesteps:
            raise ValueError(f"sample_steps ({sample_steps}) must be at most timesteps ({timesteps})")
        self.unet, self.image_size, self.channels = unet, image_size, unet.channels
        self.objective, self.cond_drop_prob, self.sample_steps = objective, cond_drop_prob, sample_steps
        self.null_embed = nn.Parameter(torch.randn(unet.cond_dim) * 0.02)

    def _cond(self, image_embed: Tensor, keep: Optional[Tensor]) -> Tensor:
        if keep is None:
            return image_embed
        return torch.where(keep[:, None], image_embed, self.null_embed.to(image_embed.dtype))

    def forward(self, images: Tensor, image_embed: Tensor) -> Tensor:
        """The training loss (MSE against the objective's target) for images (B, C, S, S) in [0, 1] and their
        CLIP image embeddings (B, cond_dim), at a random timestep per image, the embedding dropped with
        probability `cond_drop_prob`."""
        images = check_images("images", images, channels=self.channels, image_size=self.image_size)
        check_embeddings("image_embed", image_embed, self.unet.cond_dim)
        if len(images) != len(image_embed):
            raise ValueError(f"batch sizes must match: images has {len(images)}, image_embed has {len(image_embed)}")
        x0 = images.to(self.null_embed.dtype) * 2 - 1
        t = torch.randint(0, self.schedule.timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        keep = torch.rand(len(x0), device=x0.device) >= self.cond_drop_prob
        out = self.unet(self.schedule.q_sample(x0, t, noise), t, self._cond(image_embed.to(x0.dtype), keep))
        return F.mse_loss(out.float(), self.schedule.target(self.objective, x0, t, noise).float())

    def guided_output(self, x: Tensor, t: Tensor, image_embed: Tensor, cond_scale: float) -> Tensor:
        """The U-Net's output under classifier-free guidance: null + cond_scale * (cond - null); at scale 1 the
        conditional output alone (one pass)."""
        if cond_scale == 1:
            return self.unet(x, t, image_embed)
        keep = torch.cat([torch.ones(len(x), dtype=torch.bool), torch.zeros(len(x), dtype=torch.bool)]).to(x.device)
        cond, null = self.unet(x.repeat(2, 1, 1, 1), t.repeat(2), self._cond(image_embed.repeat(2, 1), keep)).chunk(2)
        return classifier_free_guidance(cond, null, cond_scale)

    @torch.no_grad()
    @eval_decorator
    def sample(self, image_embed: Tensor, *, cond_scale: float = 1.0, steps: Optional[int] = None, eta: float = 0.0,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Images (B, C, S, S) in [0, 1] for CLIP image embeddings (B, cond_dim): DDIM with `steps` (default
        `sample_steps`), eta 0 deterministic, 1 DDPM-like; cond_scale: classifier-free guidance (1: none)."""
        check_embeddings("image_embed", image_embed, self.unet.cond_dim)
        check_float("cond_scale", cond_scale)
        embed = image_embed.to(self.null_embed.dtype)
        shape = (len(embed), self.channels, self.image_size, self.image_size)
        x0 = self.schedule.sample(lambda x, t: self.guided_output(x, t, embed, cond_scale), shape,
                                  objective=self.objective, steps=steps or self.sample_steps, eta=eta, clip_x0=1.0,
                                  generator=generator, device=embed.device, dtype=embed.dtype)
        return ((x0 + 1) / 2).clamp(0, 1)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, objective={self.objective!r}, timesteps={self.schedule.timesteps}"
