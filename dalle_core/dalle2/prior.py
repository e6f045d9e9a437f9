"""The DALL-E 2 prior: from a caption and its CLIP text embedding to a CLIP image embedding, by diffusion.

A causal transformer (this library's `Transformer`) reads [caption tokens ; CLIP text embedding ; timestep ;
noised image embedding ; a learned query] and predicts, at the query, the clean image embedding (the paper's
choice over predicting the noise), trained with MSE. Embeddings are L2-normalised CLIP latents; the diffusion
runs on them scaled by sqrt(dim_embed), so that each coordinate has about unit variance like the noise. For
classifier-free guidance the caption (its tokens and its text embedding) is replaced by learned null ones with
probability `cond_drop_prob`. At sampling, `candidates` embeddings are drawn per caption and the one with the
highest dot product with the text embedding is kept (the paper draws two).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.transformer import Transformer
from ..pretrained import PretrainedMixin
from ..sampling import classifier_free_guidance
from ..utils import check_float, check_int, check_real_batch, check_same_batch, check_token_ids, eval_decorator
from .diffusion import NoiseSchedule, timestep_embedding

__all__ = ["DiffusionPrior"]


def check_embeddings(name: str, embed: Any, dim: int) -> Tensor:
    """A (B, dim) float tensor of finite values, else a clear error."""
    if not isinstance(embed, Tensor) or not embed.is_floating_point() or embed.ndim != 2 or embed.shape[1] != dim:
        got = f"{tuple(embed.shape)} {embed.dtype}" if isinstance(embed, Tensor) else type(embed).__name__
        raise ValueError(f"{name} must be a float tensor (batch, {dim}) of CLIP embeddings, got {got}")
    check_real_batch(name, embed)
    if not bool(torch.isfinite(embed).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return embed


class DiffusionPrior(PretrainedMixin, nn.Module, register=True):
    """Maps (caption ids, CLIP text embedding) to a CLIP image embedding by diffusion (DALL-E 2's prior).

    Args:
        dim_embed: the CLIP embedding size (CLIP's dim_latent).
        num_text_tokens: caption vocabulary size (the tokenizer's vocab_size).
        text_seq_len: caption tokens (id 0 pads, as everywhere in dalle_core).
        dim: transformer width.
        depth: transformer layers.
        heads: attention heads.
        dim_head: width of each head.
        timesteps: diffusion noise levels in training.
        sample_steps: DDIM steps at sampling (default for `sample`).
        cond_drop_prob: probability of replacing the caption by the learned null caption in training.
        attn_dropout: attention dropout.
        ff_dropout: feed-forward dropout.
    """

    def __init__(self, *, dim_embed: int = 512, num_text_tokens: int = 10000, text_seq_len: int = 256,
                 dim: int = 512, depth: int = 6, heads: int = 8, dim_head: int = 64, timesteps: int = 1000,
                 sample_steps: int = 64, cond_drop_prob: float = 0.1, attn_dropout: float = 0.0,
                 ff_dropout: float = 0.0):
        super().__init__()
        for name, value in (("dim_embed", dim_embed), ("num_text_tokens", num_text_tokens),
                            ("text_seq_len", text_seq_len), ("dim", dim), ("timesteps", timesteps),
                            ("sample_steps", sample_steps)):
            check_int(name, value)
        check_float("cond_drop_prob", cond_drop_prob, low=0.0, high=1.0)
        if sample_steps > timesteps:
            raise ValueError(f"sample_steps ({sample_steps}) must be at most timesteps ({timesteps})")
        self.dim_embed, self.num_text_tokens, self.text_seq_len = dim_embed, num_text_tokens, text_seq_len
        self.sample_steps, self.cond_drop_prob = sample_steps, cond_drop_prob
        self.embed_scale = dim_embed**0.5
        self.schedule = NoiseSchedule(timesteps)

        self.text_emb = nn.Embedding(num_text_tokens, dim)
        self.null_text_tokens = nn.Parameter(torch.randn(text_seq_len, dim) * 0.02)
        self.text_embed_in = nn.Linear(dim_embed, dim)
        self.null_text_embed = nn.Parameter(torch.randn(dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.image_embed_in = nn.Linear(dim_embed, dim)
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        seq_len = text_seq_len + 4  # caption, text embedding, timestep, noised image embedding, query
        self.pos_emb = nn.Embedding(seq_len, dim)
        self.transformer = Transformer(dim=dim, depth=depth, seq_len=seq_len, causal=True, heads=heads,
                                       dim_head=dim_head, rotary_emb=False, attn_dropout=attn_dropout,
                                       ff_dropout=ff_dropout)
        self.norm = nn.LayerNorm(dim)
        self.to_embed = nn.Linear(dim, dim_embed)

    # --- inputs ---------------------------------------------------------------------------------------------

    def _check(self, text: Any, text_embed: Any, image_embed: Any = None) -> Tensor:
        check_real_batch("text", text)
        text = check_token_ids("text", text, vocab_size=self.num_text_tokens)
        if text.shape[1] != self.text_seq_len:
            raise ValueError(f"text must be padded to text_seq_len={self.text_seq_len} tokens, got {text.shape[1]}")
        check_embeddings("text_embed", text_embed, self.dim_embed)
        if image_embed is not None:
            check_embeddings("image_embed", image_embed, self.dim_embed)
        check_same_batch(text=text, text_embed=text_embed, image_embed=image_embed)
        return text

    # --- the denoiser ---------------------------------------------------------------------------------------

    def denoise(self, text: Tensor, text_embed: Tensor, noised: Tensor, t: Tensor,
                keep_text: Optional[Tensor] = None) -> Tensor:
        """The predicted clean (scaled) image embedding (B, dim_embed) for the noised one at timesteps t (B,).
        keep_text (B,) bool: False replaces that row's caption and text embedding by the learned null ones."""
        tokens = self.text_emb(text)  # (B, n, dim)
        cond = self.text_embed_in(text_embed.to(tokens.dtype))
        if keep_text is not None:
            tokens = torch.where(keep_text[:, None, None], tokens, self.null_text_tokens.to(tokens.dtype))
            cond = torch.where(keep_text[:, None], cond, self.null_text_embed.to(cond.dtype))
        time = self.time_mlp(timestep_embedding(t, tokens.shape[-1]).to(tokens.dtype))
        x = torch.cat([tokens, cond[:, None], time[:, None], self.image_embed_in(noised.to(tokens.dtype))[:, None],
                       self.query.to(tokens.dtype).expand(len(text), 1, -1)], dim=1)
        x = x + self.pos_emb(torch.arange(x.shape[1], device=x.device))
        return self.to_embed(self.norm(self.transformer(x)[:, -1]))

    def forward(self, text: Tensor, text_embed: Tensor, image_embed: Tensor) -> Tensor:
        """The training loss: MSE between the predicted and the true clean image embedding (scaled), at a random
        timestep per row, the caption dropped with probability `cond_drop_prob`."""
        text = self._check(text, text_embed, image_embed)
        x0 = image_embed * self.embed_scale
        t = torch.randint(0, self.schedule.timesteps, (len(text),), device=text.device)
        noise = torch.randn_like(x0)
        keep = torch.rand(len(text), device=text.device) >= self.cond_drop_prob
        pred = self.denoise(text, text_embed, self.schedule.q_sample(x0, t, noise), t, keep)
        return F.mse_loss(pred.float(), x0.float())

    # --- sampling -------------------------------------------------------------------------------------------

    @torch.no_grad()
    @eval_decorator
    def sample(self, text: Tensor, text_embed: Tensor, *, cond_scale: float = 1.0, candidates: int = 2,
               steps: Optional[int] = None, eta: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
        """L2-normalised image embeddings (B, dim_embed): of `candidates` drawn per caption, the one with the
        highest dot product with its text embedding. cond_scale: classifier-free guidance (1: none);
        steps: DDIM steps (default `sample_steps`); eta: 0 deterministic DDIM, 1 DDPM-like."""
        text = self._check(text, text_embed)
        check_float("cond_scale", cond_scale)
        check_int("candidates", candidates)
        text = text.repeat_interleave(candidates, 0)
        text_embed = text_embed.repeat_interleave(candidates, 0)
        keep = torch.cat([torch.ones(len(text), dtype=torch.bool), torch.zeros(len(text), dtype=torch.bool)]
                         ).to(text.device)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            if cond_scale == 1:
                return self.denoise(text, text_embed, x, t)
            both = self.denoise(text.repeat(2, 1), text_embed.repeat(2, 1), x.repeat(2, 1), t.repeat(2), keep)
            cond, null = both.chunk(2)
            return classifier_free_guidance(cond, null, cond_scale)

        x0 = self.schedule.sample(denoise, (len(text), self.dim_embed), objective="x0",
                                  steps=steps or self.sample_steps, eta=eta, generator=generator, device=text.device)
        embeds = F.normalize(x0.float(), dim=-1).view(-1, candidates, self.dim_embed)
        return self.best_of(embeds, text_embed.view(-1, candidates, self.dim_embed)[:, 0])

    @staticmethod
    def best_of(candidates: Tensor, text_embed: Tensor) -> Tensor:
        """Per caption, the candidate (B, N, d) with the highest dot product with the text embedding (B, d)."""
        best = torch.einsum("bnd,bd->bn", candidates, text_embed.to(candidates.dtype)).argmax(dim=1)
        return candidates[torch.arange(len(candidates), device=candidates.device), best]
