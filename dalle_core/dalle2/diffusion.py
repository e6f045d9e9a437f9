"""Gaussian diffusion, shared by the prior and the decoder: the cosine noise schedule, q(x_t | x_0), the
conversions between epsilon-, v- and x_0-predictions, DDPM's posterior q(x_{t-1} | x_t, x_0) and DDIM's step.

Indices t = 0 .. T-1 (`timesteps` = T) name the noise levels from least to most noisy: x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps, where abar_t (`alphas_cumprod[t]`) is Nichol & Dhariwal's cosine schedule,
abar = f(t + 1) / f(0) with f(s) = cos((s / T + 0.008) / 1.008 * pi / 2)^2, and each step's beta clipped at 0.999.
DDIM (Song et al., 2020) runs any decreasing subsequence of the indices; with eta = 1 and every index its step
is DDPM's ancestral step (tested in tests/test_dalle2.py).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..utils import check_float, check_int

__all__ = ["OBJECTIVES", "NoiseSchedule", "cosine_alphas_cumprod", "timestep_embedding"]

MAX_TIMESTEPS = 100_000  # a config asking for more (tables of that many entries) is refused, not built
OBJECTIVES = ("eps", "v", "x0")  # what a denoiser predicts: the noise, v = sqrt(abar) eps - sqrt(1 - abar) x_0, or x_0


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """abar_t for t = 0 .. timesteps - 1 (float64): the cosine schedule, with each step's beta clipped at max_beta."""
    check_int("timesteps", timesteps)
    x = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos((x / timesteps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features (B, dim) of integer or real timesteps t (B,), as in the Transformer and DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


class NoiseSchedule(nn.Module):
    """The schedule's tables (non-persistent buffers, rebuilt from `timesteps`) and the closed forms over them."""

    def __init__(self, timesteps: int = 1000):
        super().__init__()
        self.timesteps = check_int("timesteps", timesteps)
        if timesteps > MAX_TIMESTEPS:
            raise ValueError(f"timesteps must be at most {MAX_TIMESTEPS}, got {timesteps}")
        abar = cosine_alphas_cumprod(timesteps)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = 1 - abar / abar_prev
        tables = {
            "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev, "betas": betas,
            "posterior_variance": betas * (1 - abar_prev) / (1 - abar),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_mean_coef2": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.float(), persistent=False)

    def _at(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """table[t] (B,) shaped to broadcast against `like` (B, ...)."""
        return table.to(like.dtype)[t].reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def target(self, objective: str, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What a denoiser with this objective should output for (x_0, t, noise)."""
        if objective == "eps":
            return noise
        if objective == "x0":
            return x0
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v

    def predict_start(self, objective: str, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """x_0 implied by a denoiser's output `out` at (x_t, t)."""
        if objective == "x0":
            return out
        abar = self._at(self.alphas_cumprod, t, x_t)
        if objective == "eps":
            return (x_t - (1 - abar).sqrt() * out) / abar.sqrt()
        return abar.sqrt() * x_t - (1 - abar).sqrt() * out  # v

    def predict_noise(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The noise that takes x_0 to x_t at t."""
        abar = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple:
        """DDPM's q(x_{t-1} | x_t, x_0): (mean, variance)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t)

    def ddim_step(self, x_t: Tensor, t: Tensor, t_prev: Tensor, x0: Tensor, eta: float,
                  noise: Optional[Tensor]) -> Tensor:
        """x at index t_prev (< t; -1 means the clean image) from x_t and the predicted x_0 (Song et al., eq. 12)."""
        abar = self._at(self.alphas_cumprod, t, x_t)
        prev = torch.where(t_prev >= 0, self.alphas_cumprod[t_prev.clamp(min=0)], torch.ones_like(t_prev,
                           dtype=self.alphas_cumprod.dtype)).to(x_t.dtype).reshape_as(abar)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        sigma = eta * ((1 - prev) / (1 - abar) * (1 - abar / prev)).clamp(min=0).sqrt()
        out = prev.sqrt() * x0 + (1 - prev - sigma**2).clamp(min=0).sqrt() * eps
        return out if noise is None or eta == 0 else out + sigma * noise

    def sample_indices(self, steps: Optional[int]) -> Sequence[int]:
        """`steps` indices spread evenly from T - 1 down to 0 (every index when None or T)."""
        steps = self.timesteps if steps is None else check_int("steps", steps)
        if steps > self.timesteps:
            raise ValueError(f"steps must be at most timesteps={self.timesteps}, got {steps}")
        return sorted({round(i) for i in torch.linspace(self.timesteps - 1, 0, steps).tolist()}, reverse=True)

    @torch.no_grad()
    def sample(self, denoise: Callable[[Tensor, Tensor], Tensor], shape: Sequence[int], *, objective: str,
               steps: Optional[int] = None, eta: float = 0.0, clip_x0: Optional[float] = None,
               generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32) -> Tensor:
        """Draw x_0 of `shape` by DDIM from pure noise; `denoise(x_t, t)` returns the model's output.

        eta = 0: deterministic DDIM; eta = 1 with every step: DDPM's ancestral sampling. `clip_x0` clamps the
        predicted x_0 to [-clip_x0, clip_x0] at each step (images in [-1, 1]), the noise re-derived from it.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        check_float("eta", eta, low=0.0)
        x = torch.randn(*shape, generator=generator, device=device, dtype=dtype)
        indices = self.sample_indices(steps)
        x0 = x
        for i, index in enumerate(indices):
            t = torch.full((shape[0],), index, device=x.device, dtype=torch.long)
            x0 = self.predict_start(objective, x, t, denoise(x, t))
            if clip_x0 is not None:
                x0 = x0.clamp(-clip_x0, clip_x0)
            prev = indices[i + 1] if i + 1 < len(indices) else -1
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) \
                if eta > 0 and prev >= 0 else None
            x = self.ddim_step(x, t, torch.full_like(t, prev), x0, eta, noise)
        return x
